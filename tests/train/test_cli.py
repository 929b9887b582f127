"""``smr train``, ``smr evaluate`` and ``smr cv`` from the command line (tiny data, CPU)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import pytest

from smr.cli import main
from smr.train import cv, engine, rundir
from smr.train.cli import config_from_args, get_args_parser
from smr.train.config import TrainConfig

TINY = [
    "--image-size",
    "32",
    "--embedding-dim",
    "16",
    "--batch-size",
    "8",
    "--samples-per-class",
    "4",
    "--workers",
    "0",
    "--svm-c",
    "1",
    "10",
    "--svm-gamma",
    "scale",
    "--svm-cv",
    "2",
    "--eval-batch-size",
    "64",
    "--device",
    "cpu",
    "--lr",
    "0.001",
]


def test_every_hyper_parameter_has_a_flag():
    parser = get_args_parser()
    flags = {a.dest for a in parser._actions}
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in flags]
    assert not missing


def test_flags_override_a_config_file_and_defaults_stay(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": TrainConfig(image_size=48, lr=0.3).to_dict()}))
    args = get_args_parser().parse_args(
        [
            "DATA",
            "--out",
            "RUN",
            "--config",
            str(path),
            "--lr",
            "0.01",
            "--svm-gamma",
            "scale",
            "0.5",
            "--no-flips",
        ]
    )
    config = config_from_args(args)
    assert config.image_size == 48  # from the file
    assert config.lr == 0.01  # flag beats file
    assert config.svm_gamma == ("scale", 0.5) and config.flips is False
    assert config.patience == TrainConfig().patience  # untouched default


def test_bad_values_fail_with_the_valid_choices(capsys, blob_data, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(blob_data), "--out", str(tmp_path / "r"), "--loss", "triplet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'triplet'" in err and "projected+dimred" in err
    with pytest.raises(SystemExit, match="svm_cv=1 must be >= 2"):
        main(["train", str(blob_data), "--out", str(tmp_path / "r"), "--svm-cv", "1"])
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["D", "--out", "R", "--svm-gamma", "wide"])
    assert "invalid gamma 'wide'" in capsys.readouterr().err


def test_train_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("--loss", "projected+dimred", "--curve", "bezier", "--targets", "frequency", "torchrun"):
        assert text in out


def test_train_refuses_a_non_empty_output_folder(blob_data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        main(["train", str(blob_data), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1"])
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_evaluate_reproduces_the_validation_score_and_draws_figures(trained_run, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    figures = tmp_path / "figs"
    code = main(
        [
            "evaluate",
            str(trained_run.run_dir),
            str(trained_run.data),
            "--subset",
            "val",
            "--json",
            "--out",
            str(report_path),
            "--figures",
            str(figures),
            "--compare",
            str(trained_run.run_dir),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads(report_path.read_text())
    assert printed == report
    assert report["macro_f1"] == pytest.approx(trained_run.result.best_val_macro_f1)
    assert report["images"] == len(rundir.read_split(trained_run.run_dir)["val"])
    assert sum(map(sum, report["confusion_matrix"])) == report["images"]
    assert set(report["spearman"]) == {"blasts"}  # the manifest has maturities
    assert report["spearman"]["blasts"] == pytest.approx(trained_run.result.val_spearman["blasts"])
    for name in ("curve_positions.png", "nearest_patches.png", "confusion_matrix.png"):
        assert (figures / name).stat().st_size > 1000


def test_evaluate_text_report_and_bad_run(trained_run, tmp_path, capsys):
    assert main(["evaluate", str(trained_run.run_dir), str(trained_run.data), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "macro F1" in captured.out and "confusion matrix" in captured.out and "Spearman" in captured.out
    n_train = len(rundir.read_split(trained_run.run_dir)["train"])
    assert f"warning: {n_train} of 40 images were used to train this run" in captured.err
    broken = tmp_path / "broken"
    shutil.copytree(trained_run.run_dir, broken)
    (broken / rundir.CURVES_FILE).unlink()
    with pytest.raises(SystemExit, match="curves.json"):
        main(["evaluate", str(broken), str(trained_run.data)])
    other = tmp_path / "other-copy"  # the same classes, but one validation image is missing
    shutil.copytree(trained_run.data, other)
    (other / rundir.read_split(trained_run.run_dir)["val"][0]).unlink()
    with pytest.raises(SystemExit, match="1 of the run's val images are not in"):
        main(["evaluate", str(trained_run.run_dir), str(other), "--subset", "val"])


def test_variant_grid():
    assert len(cv.expand_grid(["paper"])) == 25
    assert [v.name for v in cv.expand_grid(["tml", "*/uniform/normal", "tml"])] == [
        "tml",
        "fixed/uniform/normal",
        "linear/uniform/normal",
        "bezier/uniform/normal",
    ]
    with pytest.raises(ValueError, match="unknown curve 'spline'.*bezier"):
        cv.parse_variant("spline/uniform/normal")
    with pytest.raises(ValueError, match="CURVE/TARGETS/LOSS"):
        cv.parse_variant("linear-normal")


@pytest.mark.slow
def test_cv_writes_the_table_and_resumes(blob_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cv"
    argv = [
        "cv",
        str(blob_data),
        "--out",
        str(out),
        "--folds",
        "2",
        "--grid",
        "tml",
        "linear/uniform/normal",
        "--epochs",
        "1",
        "--no-progress",
        *TINY,
    ]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "cv_results.csv").read_text().splitlines()))
    assert [r["variant"] for r in rows] == ["tml", "linear/uniform/normal"]
    for r in rows:
        assert r["folds"] == "2"
        f1s = [
            json.loads((out / cv.parse_variant(r["variant"]).slug / f"fold{f}" / "config.json").read_text())[
                "result"
            ]["best_val_macro_f1"]
            for f in range(2)
        ]
        assert float(r["macro_f1_mean"]) == pytest.approx(sum(f1s) / 2)
        results = [
            json.loads((out / cv.parse_variant(r["variant"]).slug / f"fold{f}" / "config.json").read_text())[
                "result"
            ]
            for f in range(2)
        ]
        stages = list(results[0]["val_mean_position"]["blasts"])
        assert r["stages_blasts"].split(",") == stages and len(stages) >= 2
        for stage in stages:
            fold_f1 = [res["val_per_class_f1"][stage] for res in results]
            assert float(r[f"f1_{stage}_mean"]) == pytest.approx(sum(fold_f1) / 2)
        in_order = sum(
            all(a < b for a, b in zip(ts[:-1], ts[1:], strict=True))
            for ts in ([res["val_mean_position"]["blasts"][s] for s in stages] for res in results)
        )
        assert int(r["ordered_blasts"]) == in_order
    # both variants saw the same folds
    splits = [rundir.read_split(out / slug / "fold1") for slug in ("tml", "linear-uniform-normal")]
    assert splits[0]["val"] == splits[1]["val"]
    assert "± " in (out / "cv_results.md").read_text()
    assert (out / "cv_macro_f1.png").stat().st_size > 1000
    assert (out / "cv_spearman_blasts.png").is_file()

    # a second call trains nothing: every run is complete
    def refuse(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(engine, "train", refuse)
    capsys.readouterr()
    assert main(argv) == 0
    assert "4 complete, 0 to train" in capsys.readouterr().err
    # a cv.json written before a config field existed still resumes: the field takes its default
    doc = json.loads((out / "cv.json").read_text())
    del doc["base_config"]["stain_jitter"]
    (out / "cv.json").write_text(json.dumps(doc))
    assert main(argv) == 0

    # other settings in the same folder are refused
    with pytest.raises(SystemExit, match="different"):
        main([*argv, "--seed", "7"])


@pytest.mark.slow
def test_cv_resumes_an_interrupted_run_in_separate_processes(blob_data, tmp_path, capsys):
    out = tmp_path / "cv"
    argv = [
        "cv",
        str(blob_data),
        "--out",
        str(out),
        "--folds",
        "2",
        "--grid",
        "tml",
        "--epochs",
        "1",
        "--no-progress",
        "--jobs",
        "2",
        "--threads",
        "1",
        *TINY,
    ]
    # fold 1 was interrupted: a run folder without a result
    (out / "tml" / "fold1").mkdir(parents=True)
    (out / "tml" / "fold1" / "metrics.csv").write_text("epoch\n1\n")
    assert main(argv) == 0
    assert all(rundir.is_complete(out / "tml" / f"fold{f}") for f in range(2))
    assert (out / "logs" / "tml-fold0.log").is_file()
