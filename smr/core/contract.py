"""The served interface of SMR, named once: models, tensors and the parameters clients read.

Docs: docs/architecture.md, "The tensor contract".

Every name a server, a client or a check spells is defined here and imported everywhere else:
``smr.export.tensors`` builds its table of data types and shapes from these names, the clients
request and read them, and the Triton python models import this module from their vendored copy
of ``smr.core`` (``smr_core.contract``). Pure Python (no numpy), so that the client's command line
can import it eagerly and any model folder can carry it.

``EMBEDDING`` is both the backbone's output and an ensemble output, yet the ensemble does not
route one tensor to both: an ensemble tensor that is an ensemble output *and* a later step's input
is dropped by Triton when the client does not request that output, and the ensemble then fails
with "unexpected deadlock, at least one output is not set". So the backbone's ``EMBEDDING`` goes to
the ensemble-internal tensor ``backbone_embedding`` (:data:`BACKBONE_EMBEDDING`), which feeds
``smr_postprocess``; the postprocess returns a copy as ``EMBEDDING_OUT``, and that is the
ensemble's ``EMBEDDING``. The same rule holds for any output a later step reads: it needs an
internal name between the steps and its own copy as the ensemble output.
"""

from __future__ import annotations

__all__ = [
    "ENSEMBLE",
    "BACKBONE",
    "POSTPROCESS",
    "MODEL_NAMES",
    "IMAGE",
    "EMBEDDING",
    "PROBABILITIES",
    "CLASS_ID",
    "MATURITY",
    "CURVE_DISTANCE",
    "STAGE",
    "BORDERLINE",
    "EMBEDDING_OUT",
    "BACKBONE_EMBEDDING",
    "CLASSIFICATION_OUTPUTS",
    "REVIEW_OUTPUTS",
    "ENSEMBLE_OUTPUTS",
    "CLASSES_PARAMETER",
    "LINEAGES_PARAMETER",
    "IMAGE_SIZE_PARAMETER",
    "EMBEDDING_DIM_PARAMETER",
    "MPP_PARAMETER",
    "FOV_PARAMETER",
    "PROVENANCE_PARAMETERS",
    "REVIEW_MARGIN_PARAMETER",
    "DEFAULT_REVIEW_MARGIN",
]

# -- models -----------------------------------------------------------------------------------
ENSEMBLE = "smr"  # what clients call
BACKBONE = "smr_backbone"  # IMAGE -> EMBEDDING (ONNX)
POSTPROCESS = "smr_postprocess"  # EMBEDDING -> everything else (python backend, numpy)
MODEL_NAMES = (ENSEMBLE, BACKBONE, POSTPROCESS)

# -- tensors ----------------------------------------------------------------------------------
IMAGE = "IMAGE"  # the ensemble's and the backbone's input: uint8 RGB patches
EMBEDDING = "EMBEDDING"  # the backbone's output, the postprocess's input, an ensemble output
PROBABILITIES = "PROBABILITIES"  # the SVM's class probabilities
CLASS_ID = "CLASS_ID"  # the argmax of PROBABILITIES
MATURITY = "MATURITY"  # the position t on each lineage's curve
CURVE_DISTANCE = "CURVE_DISTANCE"  # the distance to each lineage's curve
STAGE = "STAGE"  # the stage of MATURITY within each lineage (smr.core.review)
BORDERLINE = "BORDERLINE"  # the review flags of the cell (smr.core.review), 0 when not flagged
EMBEDDING_OUT = "EMBEDDING_OUT"  # smr_postprocess's copy of its input, the ensemble's EMBEDDING
BACKBONE_EMBEDDING = "backbone_embedding"  # ensemble-internal: smr_backbone -> smr_postprocess

#: What a client asks for to classify cells (EMBEDDING only when it wants the embeddings).
CLASSIFICATION_OUTPUTS = (PROBABILITIES, CLASS_ID, MATURITY, CURVE_DISTANCE)
#: The review outputs (exports before them lack these; clients then derive them locally).
REVIEW_OUTPUTS = (STAGE, BORDERLINE)
#: The ensemble's outputs, in the order of docs/architecture.md, "The tensor contract".
ENSEMBLE_OUTPUTS = (*CLASSIFICATION_OUTPUTS, *REVIEW_OUTPUTS, EMBEDDING)

# -- parameters -------------------------------------------------------------------------------
# The ensemble's config parameters, each a string (numbers and lists as JSON), which tell a client
# what the outputs mean (smr.clients.model_info reads them; smr.export.pbtxt writes them):
CLASSES_PARAMETER = "classes"  # the class names, in the column order of PROBABILITIES
LINEAGES_PARAMETER = "lineages"  # [{name, classes, targets, boundaries}], stages immature -> mature
IMAGE_SIZE_PARAMETER = "image_size"
EMBEDDING_DIM_PARAMETER = "embedding_dim"
# The scale the network input was trained at, in micrometres per pixel, and the field of view of a
# patch ([height, width] in micrometres); left out when unknown:
MPP_PARAMETER = "microns_per_pixel"
FOV_PARAMETER = "field_of_view_um"
# Where the model comes from (see docs/export.md, "Provenance"); left out when unknown:
PROVENANCE_PARAMETERS = (
    "manifest_sha256",  # smr.export.repository.manifest_digest of MANIFEST.json
    "run_id",  # run folder name and the first 12 hex digits of model.safetensors' sha256
    "training_data",  # the training data set's folder name
    "training_images",  # images in the training split
    "val_macro_f1",  # the best epoch's validation macro F1
    "smr_version",  # the SMR that exported the repository
)
#: The SVM probability margin below which a cell is flagged for review: a parameter of
#: ``smr_postprocess`` (which applies it) and of the ensemble (which announces it to clients).
REVIEW_MARGIN_PARAMETER = "review_margin"
#: Its default, and the clients' default ``--margin``.
DEFAULT_REVIEW_MARGIN = 0.05
