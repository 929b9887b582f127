"""Names, data types and shapes of the served models and tensors (DESIGN.md, "Serving contract").

One table that the config writer, the repository check and the tests all read, so that the ONNX
graph, every ``config.pbtxt`` and the ensemble maps cannot drift apart. The Triton python models
(``smr.serving.triton_models``) cannot import this module (they run without the ``smr`` package);
they read the names from their own ``config.pbtxt``, which ``smr export --check`` compares with
this table.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ENSEMBLE",
    "BACKBONE",
    "POSTPROCESS",
    "MODEL_NAMES",
    "TensorSpec",
    "IMAGE",
    "EMBEDDING",
    "PROBABILITIES",
    "CLASS_ID",
    "MATURITY",
    "CURVE_DISTANCE",
    "backbone_inputs",
    "backbone_outputs",
    "postprocess_outputs",
    "ensemble_outputs",
]

ENSEMBLE = "smr"
BACKBONE = "smr_backbone"
POSTPROCESS = "smr_postprocess"
MODEL_NAMES = (ENSEMBLE, BACKBONE, POSTPROCESS)

IMAGE = "IMAGE"
EMBEDDING = "EMBEDDING"
PROBABILITIES = "PROBABILITIES"
CLASS_ID = "CLASS_ID"
MATURITY = "MATURITY"
CURVE_DISTANCE = "CURVE_DISTANCE"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as Triton sees it: ``dims`` omit the batch dimension."""

    name: str
    data_type: str  # Triton's enum name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


def backbone_inputs(image_size: int) -> list[TensorSpec]:
    return [TensorSpec(IMAGE, "TYPE_UINT8", (image_size, image_size, 3))]


def backbone_outputs(embedding_dim: int) -> list[TensorSpec]:
    return [TensorSpec(EMBEDDING, "TYPE_FP32", (embedding_dim,))]


def postprocess_outputs(n_classes: int, n_lineages: int) -> list[TensorSpec]:
    return [
        TensorSpec(PROBABILITIES, "TYPE_FP32", (n_classes,)),
        TensorSpec(CLASS_ID, "TYPE_INT32", (1,)),
        TensorSpec(MATURITY, "TYPE_FP32", (n_lineages,)),
        TensorSpec(CURVE_DISTANCE, "TYPE_FP32", (n_lineages,)),
    ]


def ensemble_outputs(n_classes: int, n_lineages: int, embedding_dim: int) -> list[TensorSpec]:
    return postprocess_outputs(n_classes, n_lineages) + backbone_outputs(embedding_dim)
