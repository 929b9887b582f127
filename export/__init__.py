"""Run directory -> Triton model repository: ONNX backbone, postprocess model, configs, manifest."""
