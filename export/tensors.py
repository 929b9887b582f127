"""Names, data types and shapes of the served models and tensors.

Docs: docs/architecture.md, "The tensor contract".

One table that the config writer, the repository check and the tests all read, so that the ONNX
graph, every ``config.pbtxt`` and the ensemble maps cannot drift apart. The Triton python models
(``smr.serving.triton_models``) cannot import this module (they run without the ``smr`` package);
they read the names from their own ``config.pbtxt``, which ``smr export --check`` compares with
this table.

``EMBEDDING`` is both the backbone's output and an ensemble output, yet the ensemble does not
route one tensor to both: an ensemble tensor that is an ensemble output *and* a later step's input
is dropped by Triton when the client does not request that output, and the ensemble then fails
with "unexpected deadlock, at least one output is not set". So the backbone's ``EMBEDDING`` goes to
the ensemble-internal tensor ``backbone_embedding``, which feeds ``smr_postprocess``; the
postprocess returns a copy as ``EMBEDDING_OUT``, and that is the ensemble's ``EMBEDDING``.
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
    "EMBEDDING_OUT",
    "BACKBONE_EMBEDDING",
    "backbone_inputs",
    "backbone_outputs",
    "postprocess_inputs",
    "postprocess_outputs",
    "ensemble_outputs",
    "ensemble_output_source",
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
EMBEDDING_OUT = "EMBEDDING_OUT"  # smr_postprocess's copy of its input, the ensemble's EMBEDDING
BACKBONE_EMBEDDING = "backbone_embedding"  # ensemble-internal: smr_backbone -> smr_postprocess


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


def postprocess_inputs(embedding_dim: int) -> list[TensorSpec]:
    return [TensorSpec(EMBEDDING, "TYPE_FP32", (embedding_dim,))]


def _classification_outputs(n_classes: int, n_lineages: int) -> list[TensorSpec]:
    return [
        TensorSpec(PROBABILITIES, "TYPE_FP32", (n_classes,)),
        TensorSpec(CLASS_ID, "TYPE_INT32", (1,)),
        TensorSpec(MATURITY, "TYPE_FP32", (n_lineages,)),
        TensorSpec(CURVE_DISTANCE, "TYPE_FP32", (n_lineages,)),
    ]


def postprocess_outputs(n_classes: int, n_lineages: int, embedding_dim: int) -> list[TensorSpec]:
    return _classification_outputs(n_classes, n_lineages) + [
        TensorSpec(EMBEDDING_OUT, "TYPE_FP32", (embedding_dim,))
    ]


def ensemble_outputs(n_classes: int, n_lineages: int, embedding_dim: int) -> list[TensorSpec]:
    """The ensemble outputs of docs/architecture.md, "The tensor contract", in its order."""
    return _classification_outputs(n_classes, n_lineages) + [
        TensorSpec(EMBEDDING, "TYPE_FP32", (embedding_dim,))
    ]


def ensemble_output_source(name: str) -> str:
    """The ``smr_postprocess`` output that becomes ensemble output ``name`` (all of them do)."""
    return EMBEDDING_OUT if name == EMBEDDING else name
