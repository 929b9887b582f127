"""``smr demo`` reuses a step's output only when it is complete and made with the same settings."""

from smr import demo


def test_a_step_is_reused_only_with_its_recorded_settings_and_a_complete_output(tmp_path):
    settings = {"cells": 1500, "size": 64, "seed": 0}
    # nothing recorded yet (a first demo, or one from before the records existed)
    assert not demo._reusable(tmp_path, "synth", settings, complete=True)
    demo._record(tmp_path, "synth", settings)
    assert demo._reusable(tmp_path, "synth", dict(settings), complete=True)
    # another option value, or an incomplete output (an interrupted step), means: run it again
    assert not demo._reusable(tmp_path, "synth", {**settings, "cells": 3000}, complete=True)
    assert not demo._reusable(tmp_path, "synth", settings, complete=False)
    # records are per step
    assert not demo._reusable(tmp_path, "train", settings, complete=True)
    # an unreadable record is no match
    (tmp_path / ".demo-synth.json").write_text("{not json")
    assert not demo._reusable(tmp_path, "synth", settings, complete=True)


class _FakeServer:
    grpc_url, metrics_url = "127.0.0.1:1", "http://127.0.0.1:2/metrics"

    def __init__(self, repo):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _demo_args(tmp_path):
    from smr.cli import build_parser

    return build_parser().parse_args(["demo", "--out", str(tmp_path / "demo")])


def test_the_demo_scores_the_slide_at_the_model_s_own_scale(tmp_path, monkeypatch):
    import smr.serving.launcher as launcher

    calls = []
    monkeypatch.setattr(demo, "_smr", lambda argv: calls.append([str(a) for a in argv]))
    monkeypatch.setattr(launcher, "TritonProcess", _FakeServer)
    assert demo.run(_demo_args(tmp_path)) == 0
    score = [c for c in calls if c[0] == "score-slide"]
    assert len(score) == 1 and "--mpp" not in score[0] and "--level" not in score[0]


def test_a_failed_step_ends_the_demo_with_status_1_and_names_it(tmp_path, monkeypatch, capsys):
    import smr.cli

    monkeypatch.setattr(smr.cli, "main", lambda argv: 2)
    assert demo.run(_demo_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("smr demo: error: `smr synth ")
    assert "failed with exit status 2 (its message is above)" in err


def test_outputs_of_older_demos_without_a_scale_are_not_reused(tmp_path):
    from smr.core.lineages import PAPER_SPEC

    data = tmp_path / "synthetic"
    data.mkdir()
    (data / "manifest.csv").write_text("path,class,lineage,maturity\n")
    (data / "lineages.toml").write_text(PAPER_SPEC.to_toml())  # no [imaging]: an older demo's
    assert not demo._patches_complete(data)
    (data / "lineages.toml").write_text(PAPER_SPEC.to_toml() + "\n[imaging]\nmicrons_per_pixel = 0.5\n")
    assert demo._patches_complete(data)
    assert not demo._run_complete(tmp_path / "no-run")
