"""``smr``'s exit status: 2 for usage errors, 1 for failures, whatever the sub-command raised."""

from __future__ import annotations

import argparse

import pytest

from smr.cli import EXIT_FAILURE, EXIT_USAGE, CommandExit, main, run_command


class TrainLikeError(RuntimeError):
    pass


def _args(func, command="train"):
    return argparse.Namespace(command=command, func=func)


def _raise(exc):
    def func(args):
        raise exc

    return func


def test_a_systemexit_message_is_printed_once_with_status_2(capsys):
    with pytest.raises(CommandExit) as exc:
        run_command(_args(_raise(SystemExit("smr train: error: --out run is not empty"))))
    assert exc.value.code == EXIT_USAGE == 2
    assert str(exc.value) == "smr train: error: --out run is not empty"  # pytest.raises(match=) sees it
    assert capsys.readouterr().err == "smr train: error: --out run is not empty\n"


def test_a_systemexit_raised_for_a_runtime_failure_has_status_1(capsys):
    def func(args):
        try:
            raise TrainLikeError("epoch 3: the loss became nan; lower --lr")
        except TrainLikeError as err:
            raise SystemExit(f"smr train: error: {err}") from None

    with pytest.raises(CommandExit) as exc:
        run_command(_args(func))
    assert exc.value.code == EXIT_FAILURE == 1
    assert capsys.readouterr().err == "smr train: error: epoch 3: the loss became nan; lower --lr\n"


def test_a_message_without_the_prefix_gets_it(capsys):
    with pytest.raises(CommandExit):
        run_command(_args(_raise(SystemExit("no images")), command="evaluate"))
    assert capsys.readouterr().err == "smr evaluate: error: no images\n"


def test_an_unexpected_exception_is_one_line_with_status_1(capsys, monkeypatch):
    monkeypatch.delenv("SMR_DEBUG", raising=False)
    assert run_command(_args(_raise(KeyError("spec")), command="export")) == EXIT_FAILURE
    assert capsys.readouterr().err == (
        "smr export: error: KeyError: 'spec' (unexpected; run again with SMR_DEBUG=1 for the traceback)\n"
    )
    assert run_command(_args(_raise(MemoryError()), command="score-slide")) == EXIT_FAILURE
    assert capsys.readouterr().err == (
        "smr score-slide: error: out of memory; check the sizes and scales given on the command line\n"
    )
    monkeypatch.setenv("SMR_DEBUG", "1")
    with pytest.raises(KeyError):
        run_command(_args(_raise(KeyError("spec"))))


def test_returned_statuses_pass_through():
    assert run_command(_args(lambda args: None)) == 0
    assert run_command(_args(lambda args: 1)) == 1
    with pytest.raises(SystemExit) as exc:
        run_command(_args(_raise(SystemExit(3))))
    assert exc.value.code == 3


def test_usage_errors_of_real_sub_commands_have_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse
        main(["score-slide", "s.tiff", "--detections", "d.csv", "--out", "o", "--mpp", "10000"])
    assert exc.value.code == 2
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert main(["export"]) == 2
    assert main(["synth", str(tmp_path / "s"), "--n-cells", "3"]) == 2
    err = capsys.readouterr().err
    assert "smr synth: error: --n-cells must be at least 15" in err


def test_library_errors_of_smr_train_become_one_line_with_their_status(tmp_path, monkeypatch, capsys):
    """The library raises exceptions; ``smr train`` turns them into its message and status."""
    from smr.train import engine
    from smr.train.engine import TrainError

    def fail(*args, **kwargs):
        raise TrainError("epoch 3: the loss became nan; lower --lr")

    monkeypatch.setattr(engine, "train", fail)
    with pytest.raises(CommandExit) as exc:
        main(["train", str(tmp_path), "--out", str(tmp_path / "run")])
    assert exc.value.code == EXIT_FAILURE
    assert capsys.readouterr().err == "smr train: error: epoch 3: the loss became nan; lower --lr\n"

    with pytest.raises(CommandExit) as exc:  # a ConfigError of the flags: a usage error
        main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--svm-cv", "1"])
    assert exc.value.code == EXIT_USAGE
    assert capsys.readouterr().err.startswith("smr train: error: ") and "svm_cv=1" in str(exc.value)

    from smr.core.lineages import PAPER_SPEC

    (tmp_path / "lineages.toml").write_text(PAPER_SPEC.to_toml())
    missing = tmp_path / "missing.json"
    with pytest.raises(CommandExit, match=f"smr cv: error: cannot read --config {missing}") as exc:
        main(["cv", str(tmp_path), "--out", str(tmp_path / "cv"), "--config", str(missing)])
    assert exc.value.code == EXIT_USAGE
