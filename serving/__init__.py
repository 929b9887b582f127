"""SMR serving: starting a local Triton server on an exported model repository (``smr serve``),
measuring it (``smr bench``), and the Prometheus/Grafana set-up that watches its latency.

The Triton python models themselves live in ``triton_models/``; export copies them into the
repository, so the server never imports this package.
"""
