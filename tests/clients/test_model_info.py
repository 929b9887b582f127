"""Reading what the client needs from the served ensemble's config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smr.clients.errors import ModelConfigError
from smr.clients.model_info import model_info_from_config
from smr.core.lineages import PAPER_SPEC
from smr.core.targets import frequency_targets, stage_boundaries
from tests.clients.helpers import config_json


def test_reads_classes_lineages_size_and_batch_from_the_config():
    counts = {"granulopoiesis": [5, 40, 80, 60, 30, 200], "erythropoiesis": [10, 30, 90, 40]}
    targets = {k: frequency_targets(v) for k, v in counts.items()}
    info = model_info_from_config(config_json(image_size=96, max_batch_size=32, targets=targets))
    assert info.classes == PAPER_SPEC.classes
    assert info.image_size == 96 and info.max_batch_size == 32
    assert [lin.name for lin in info.lineages] == [lin.name for lin in PAPER_SPEC.lineages]
    for served, lin in zip(info.lineages, PAPER_SPEC.lineages, strict=True):
        assert served.classes == lin.classes
        np.testing.assert_allclose(served.targets, targets[lin.name])
        np.testing.assert_allclose(served.boundaries, stage_boundaries(targets[lin.name]))
    assert info.lineage_of("myelocyte") == 0 and info.lineage_of("lymphocyte") is None
    assert info.extra["embedding_dim"] == "256"


def test_boundaries_are_derived_from_targets_when_absent():
    doc = config_json()
    lineages = json.loads(doc["config"]["parameters"]["lineages"]["string_value"])
    for lin in lineages:
        del lin["boundaries"]
    doc["config"]["parameters"]["lineages"]["string_value"] = json.dumps(lineages)
    info = model_info_from_config(doc)
    for served, lin in zip(info.lineages, lineages, strict=True):
        np.testing.assert_allclose(served.boundaries, stage_boundaries(lin["targets"]))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["parameters"].pop("classes"), "no 'classes' parameter"),
        (lambda c: c["parameters"]["lineages"].update(string_value="[{"), "not valid JSON"),
        (lambda c: c.update(max_batch_size=0), "max_batch_size 0"),
        (
            lambda c: c["parameters"]["lineages"].update(
                string_value=json.dumps([{"name": "x", "classes": ["blast", "nonsense"]}])
            ),
            "not in 'classes'",
        ),
        (
            lambda c: c["parameters"]["lineages"].update(
                string_value=json.dumps(
                    [{"name": "x", "classes": ["blast", "band"], "boundaries": [0.5, 0.6]}]
                )
            ),
            "increasing stage boundaries",
        ),
    ],
)
def test_configs_that_are_not_smr_ensembles_are_refused_with_the_reason(mutate, message):
    doc = config_json()
    mutate(doc["config"])
    with pytest.raises(ModelConfigError, match=message):
        model_info_from_config(doc)


def _with_steps(doc: dict, intermediate: str) -> dict:
    """Add the two-step ensemble scheduling, the tensor between the steps named ``intermediate``."""
    names = ("PROBABILITIES", "CLASS_ID", "MATURITY", "CURVE_DISTANCE", "EMBEDDING")
    doc["config"]["output"] = [{"name": n} for n in names]
    doc["config"]["ensemble_scheduling"] = {
        "step": [
            {"model_name": "smr_backbone", "input_map": {"IMAGE": "IMAGE"},
             "output_map": {"EMBEDDING": intermediate}},
            {"model_name": "smr_postprocess", "input_map": {"EMBEDDING": intermediate},
             "output_map": {"PROBABILITIES": "PROBABILITIES", "EMBEDDING": "EMBEDDING"}},
        ]
    }  # fmt: skip
    return doc


def test_outputs_the_ensemble_needs_requested_are_found_from_its_steps():
    from smr.clients.client import OUTPUTS, requested_output_names

    shared = model_info_from_config(_with_steps(config_json(), "EMBEDDING"))
    assert shared.must_request == ("EMBEDDING",)  # an output that is also fed to a later step
    assert requested_output_names(shared, embeddings=False) == [*OUTPUTS, "EMBEDDING"]
    internal = model_info_from_config(_with_steps(config_json(), "embedding_internal"))
    assert internal.must_request == ()
    assert requested_output_names(internal, embeddings=False) == list(OUTPUTS)
    assert requested_output_names(internal, embeddings=True) == [*OUTPUTS, "EMBEDDING"]


def test_scale_and_provenance_are_read_and_unknown_ones_stay_unknown():
    from smr.clients.model_info import PROVENANCE_KEYS, provenance

    doc = config_json()
    params = doc["config"]["parameters"]
    for key, value in {
        "microns_per_pixel": "0.53125", "field_of_view_um": "[34.0, 34.0]", "run_id": "run-0123456789ab",
        "training_data": "synthetic", "training_images": "1350", "val_macro_f1": "0.7241",
        "smr_version": "9.9", "manifest_sha256": "ab" * 32,
    }.items():  # fmt: skip
        params[key] = {"string_value": value}
    info = model_info_from_config(doc)
    assert info.microns_per_pixel == 0.53125 and info.field_of_view_um == (34.0, 34.0)
    prov = provenance(info, "2.51.0")
    assert list(prov) == list(PROVENANCE_KEYS) == [
        "manifest_sha256", "run_id", "training_data", "training_images", "val_macro_f1", "smr_version",
        "triton_version", "model_microns_per_pixel", "notice",
    ]  # fmt: skip
    assert prov == {
        "manifest_sha256": "ab" * 32, "run_id": "run-0123456789ab", "training_data": "synthetic",
        "training_images": 1350, "val_macro_f1": 0.7241, "smr_version": "9.9", "triton_version": "2.51.0",
        "model_microns_per_pixel": 0.53125, "notice": "For research use, not for diagnosis.",
    }  # fmt: skip
    assert "microns_per_pixel" not in info.extra and "run_id" not in info.extra
    bare = model_info_from_config(config_json())
    assert bare.microns_per_pixel is None and bare.field_of_view_um is None
    assert provenance(bare, None) == {
        **dict.fromkeys(PROVENANCE_KEYS),
        "notice": "For research use, not for diagnosis.",
    }


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "0"])
def test_a_bad_scale_parameter_is_refused(value):
    doc = config_json()
    doc["config"]["parameters"]["microns_per_pixel"] = {"string_value": value}
    with pytest.raises(ModelConfigError, match="parameter 'microns_per_pixel' is not a pixel size"):
        model_info_from_config(doc)
