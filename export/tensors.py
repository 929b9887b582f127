"""Data types and shapes of the served models' tensors; the names are ``smr.core.contract``'s.

Docs: docs/architecture.md, "The tensor contract".

One table that the config writer, the repository check and the tests all read, so that the ONNX
graph, every ``config.pbtxt`` and the ensemble maps cannot drift apart. The Triton python models
(``smr.serving.triton_models``) import the names from their vendored ``smr_core.contract`` and
check data types and shapes against their own ``config.pbtxt``, which ``smr export --check``
compares with this table. Why the backbone's ``EMBEDDING`` is not the ensemble's directly (the
ensemble-internal ``backbone_embedding`` and the postprocess's ``EMBEDDING_OUT``) is told in
``smr.core.contract``.
"""

from __future__ import annotations

from dataclasses import dataclass

from smr.core.contract import (
    BORDERLINE,
    CLASS_ID,
    CURVE_DISTANCE,
    EMBEDDING,
    EMBEDDING_OUT,
    IMAGE,
    MATURITY,
    PROBABILITIES,
    STAGE,
)

__all__ = [
    "TensorSpec",
    "backbone_inputs",
    "backbone_outputs",
    "postprocess_inputs",
    "postprocess_outputs",
    "ensemble_outputs",
    "ensemble_output_source",
    "unbatched",
]


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


def unbatched(specs: list[TensorSpec]) -> list[TensorSpec]:
    """The same tensors for a model that Triton does not batch (``max_batch_size: 0``): the batch is
    the variable first dimension of ``dims`` (``smr_backbone`` on Triton's openvino backend)."""
    return [TensorSpec(s.name, s.data_type, (-1, *s.dims)) for s in specs]


def postprocess_inputs(embedding_dim: int) -> list[TensorSpec]:
    return [TensorSpec(EMBEDDING, "TYPE_FP32", (embedding_dim,))]


def _computed_outputs(n_classes: int, n_lineages: int, review: bool) -> list[TensorSpec]:
    specs = [
        TensorSpec(PROBABILITIES, "TYPE_FP32", (n_classes,)),
        TensorSpec(CLASS_ID, "TYPE_INT32", (1,)),
        TensorSpec(MATURITY, "TYPE_FP32", (n_lineages,)),
        TensorSpec(CURVE_DISTANCE, "TYPE_FP32", (n_lineages,)),
    ]
    if review:
        specs += [
            TensorSpec(STAGE, "TYPE_INT32", (n_lineages,)),  # smr.core.review's stage per lineage
            TensorSpec(BORDERLINE, "TYPE_UINT8", (1,)),  # smr.core.review's flags, 0: not flagged
        ]
    return specs


def postprocess_outputs(
    n_classes: int, n_lineages: int, embedding_dim: int, *, review: bool = True
) -> list[TensorSpec]:
    """``review=False``: the outputs of a repository exported before ``STAGE`` and ``BORDERLINE``."""
    return _computed_outputs(n_classes, n_lineages, review) + [
        TensorSpec(EMBEDDING_OUT, "TYPE_FP32", (embedding_dim,))
    ]


def ensemble_outputs(
    n_classes: int, n_lineages: int, embedding_dim: int, *, review: bool = True
) -> list[TensorSpec]:
    """The ensemble outputs of docs/architecture.md, "The tensor contract", in its order
    (``review=False``: those of a repository exported before ``STAGE`` and ``BORDERLINE``)."""
    return _computed_outputs(n_classes, n_lineages, review) + [
        TensorSpec(EMBEDDING, "TYPE_FP32", (embedding_dim,))
    ]


def ensemble_output_source(name: str) -> str:
    """The ``smr_postprocess`` output that becomes ensemble output ``name`` (all of them do)."""
    return EMBEDDING_OUT if name == EMBEDDING else name
