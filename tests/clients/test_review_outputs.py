"""The served STAGE and BORDERLINE: announced by the config, requested, read, used or derived again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from smr.clients.client import OUTPUTS, parse_outputs, requested_output_names
from smr.clients.errors import ModelConfigError, ServerRequestError
from smr.clients.model_info import ModelInfo, model_info_from_config
from smr.clients.results import BatchOutputs, cells_from_outputs, review_margin
from smr.core.contract import BORDERLINE, DEFAULT_REVIEW_MARGIN, EMBEDDING, REVIEW_OUTPUTS, STAGE
from smr.core.lineages import PAPER_SPEC
from smr.core.review import CURVE_DISAGREES, SVM_UNSURE
from smr.export.pbtxt import ServingOptions, ensemble_config
from tests.clients.helpers import lineage_docs, paper_info


def served_config(*, review: bool = True, margin: float = DEFAULT_REVIEW_MARGIN) -> dict:
    """The ensemble config ``smr export`` writes, as ``get_model_config(as_json=True)`` returns it;
    ``review=False``: as exported before STAGE and BORDERLINE (no outputs, no margin)."""
    config = ensemble_config(
        image_size=64,
        embedding_dim=256,
        classes=PAPER_SPEC.classes,
        lineages=lineage_docs(PAPER_SPEC),
        options=ServingOptions(max_batch_size=8),
        review_margin=margin,
    )
    if not review:
        kept = [t for t in config.output if t.name not in REVIEW_OUTPUTS]
        del config.output[:]
        config.output.extend(kept)
        del config.parameters["review_margin"]
    return {"config": MessageToDict(config, preserving_proto_field_name=True)}


def test_an_export_with_the_review_outputs_announces_them_and_their_margin():
    info = model_info_from_config(served_config(margin=0.1))
    assert info.serves_review and info.review_margin == 0.1
    assert "review_margin" not in info.extra
    older = model_info_from_config(served_config(review=False))
    assert not older.serves_review and older.review_margin is None
    assert not paper_info().serves_review  # a hand-written config without them


def test_a_bad_review_margin_is_refused():
    doc = served_config()
    doc["config"]["parameters"]["review_margin"]["string_value"] = "much"
    with pytest.raises(ModelConfigError, match="'review_margin' is not a probability margin"):
        model_info_from_config(doc)


def test_the_client_asks_for_the_review_outputs_where_they_are_served():
    info = model_info_from_config(served_config())
    assert requested_output_names(info, embeddings=False) == [*OUTPUTS, STAGE, BORDERLINE]
    assert requested_output_names(info, embeddings=True) == [*OUTPUTS, EMBEDDING, STAGE, BORDERLINE]
    older = model_info_from_config(served_config(review=False))
    assert requested_output_names(older, embeddings=False) == list(OUTPUTS)


class FakeResult:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


def _raw(info: ModelInfo, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, len(info.classes))) * rng.uniform(0.2, 4, size=(n, 1))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    n_lin = len(info.lineages)
    return {
        "PROBABILITIES": probs,
        "CLASS_ID": probs.argmax(axis=1).astype(np.int32)[:, None],
        "MATURITY": rng.uniform(0, 1, size=(n, n_lin)).astype(np.float32),
        "CURVE_DISTANCE": rng.uniform(0, 2, size=(n, n_lin)).astype(np.float32),
    }


def _derived(info: ModelInfo, raw: dict[str, np.ndarray], margin: float = DEFAULT_REVIEW_MARGIN):
    """The client's own reading, as with a repository exported before the review outputs."""
    older = dataclasses.replace(info, review_margin=None)
    outputs = parse_outputs(FakeResult(raw), len(raw["CLASS_ID"]), older, embeddings=False)
    return cells_from_outputs(info, outputs, margin=margin)


def _served_arrays(info: ModelInfo, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the server adds: the rule's own result (as smr_postprocess computes it)."""
    cells = _derived(info, raw)
    stage = [[lin.classes.index(p.stage) for lin, p in zip(info.lineages, c.lineages, strict=True)]
             for c in cells]  # fmt: skip
    flags = [(SVM_UNSURE if "SVM unsure" in c.borderline_reason else 0)
             | (CURVE_DISAGREES if "curve says" in c.borderline_reason else 0) for c in cells]  # fmt: skip
    return {STAGE: np.array(stage, np.int32), BORDERLINE: np.array(flags, np.uint8)[:, None]}


def test_served_values_are_read_and_used_at_the_served_margin():
    info = model_info_from_config(served_config())
    raw = _raw(info, 40)
    served = {**raw, **_served_arrays(info, raw)}
    outputs = parse_outputs(FakeResult(served), 40, info, embeddings=False)
    assert outputs.stage.shape == (40, 2) and outputs.borderline.shape == (40,)
    expected = [c.to_dict() for c in _derived(info, raw)]
    assert [c.to_dict() for c in cells_from_outputs(info, outputs)] == expected
    # the served flags are what is used: a flag the server set is reported even where the client's
    # own reading would not set it
    outputs.borderline[:] = SVM_UNSURE | CURVE_DISAGREES
    assert all(c.borderline for c in cells_from_outputs(info, outputs))


def test_another_margin_derives_the_flags_again_with_the_same_rule():
    info = model_info_from_config(served_config())
    raw = _raw(info, 40, seed=1)
    outputs = parse_outputs(FakeResult({**raw, **_served_arrays(info, raw)}), 40, info, embeddings=False)
    outputs.borderline[:] = 0  # ignored at another margin
    wide = cells_from_outputs(info, outputs, margin=0.4)
    assert [c.to_dict() for c in wide] == [c.to_dict() for c in _derived(info, raw, margin=0.4)]
    assert any(c.borderline for c in wide)


def test_a_served_review_output_of_the_wrong_shape_is_an_error():
    info = model_info_from_config(served_config())
    raw = _raw(info, 4)
    served = {**raw, **_served_arrays(info, raw)}
    served[STAGE] = served[STAGE][:, :1]
    with pytest.raises(ServerRequestError, match="output STAGE has shape"):
        parse_outputs(FakeResult(served), 4, info, embeddings=False)
    del served[STAGE]
    with pytest.raises(ServerRequestError, match="lacks output STAGE"):
        parse_outputs(FakeResult(served), 4, info, embeddings=False)


def test_batches_keep_the_review_outputs_only_where_every_part_has_them():
    info = model_info_from_config(served_config())
    raw = _raw(info, 6)
    with_review = parse_outputs(FakeResult({**raw, **_served_arrays(info, raw)}), 6, info, embeddings=False)
    joined = BatchOutputs.concatenate([with_review, with_review])
    assert joined.stage.shape == (12, 2) and joined.borderline.shape == (12,)
    without = dataclasses.replace(with_review, stage=None, borderline=None)
    mixed = BatchOutputs.concatenate([with_review, without])
    assert mixed.stage is None and mixed.borderline is None and len(mixed) == 12


def test_without_a_margin_of_its_own_the_client_flags_at_the_servers():
    info = model_info_from_config(served_config(margin=0.3))
    raw = _raw(info, 40, seed=2)
    outputs = parse_outputs(
        FakeResult(raw), 40, dataclasses.replace(info, review_margin=None), embeddings=False
    )
    assert review_margin(info) == 0.3 and review_margin(info, 0.1) == 0.1
    own = [c.to_dict() for c in cells_from_outputs(info, outputs)]
    assert own == [c.to_dict() for c in cells_from_outputs(info, outputs, margin=0.3)]
    assert own != [c.to_dict() for c in cells_from_outputs(info, outputs, margin=DEFAULT_REVIEW_MARGIN)]
    # a repository that serves no margin: the default
    older = dataclasses.replace(info, review_margin=None)
    assert review_margin(older) == DEFAULT_REVIEW_MARGIN
    assert [c.to_dict() for c in cells_from_outputs(older, outputs)] == [
        c.to_dict() for c in cells_from_outputs(older, outputs, margin=DEFAULT_REVIEW_MARGIN)
    ]
