"""The client commands' arguments and errors (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from smr.cli import build_parser
from smr.cli import main as smr_main
from smr.serving.launcher import free_port


def test_commands_are_registered_with_help():
    parser = build_parser()
    for command in ("classify", "score-slide", "score-slides"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([command, "--help"])
        assert exc.value.code == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["score-slide", "s.svs", "--detections", "d.csv", "--out", "o", "--mpp", "0.5", "--level", "1"],
         "not allowed with argument"),
        (["score-slide", "s.svs", "--detections", "d.csv", "--out", "o", "--compression", "zip"],
         "invalid choice: 'zip' (choose from"),
        (["score-slides", "dir", "--out", "o", "--parallel", "0"], "must be >= 1"),
        (["classify", "x.png", "--margin", "0.7"], "must be in 0..0.5"),
    ],
)  # fmt: skip
def test_bad_options_name_the_valid_choices(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unusable_inputs_fail_before_contacting_a_server(tmp_path, capsys):
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "d.csv").write_text("id,a,b\n1,2,3\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "s.png")
    rc = smr_main(["score-slide", str(tmp_path / "s.png"), "--detections", str(tmp_path / "d.csv"),
                   "--out", str(tmp_path / "out"), "--url", url])  # fmt: skip
    assert rc == 2 and "needs columns 'x' and 'y'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert (
        smr_main(["classify", str(tmp_path / "s.png"), "--url", url, "--out", str(tmp_path / "r.txt")]) == 2
    )
    assert "valid: .csv, .json" in capsys.readouterr().err
    assert (
        smr_main(["score-slides", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--url", url]) == 2
    )
    assert "no such folder or list file" in capsys.readouterr().err


def test_no_server_gives_a_clear_error_after_the_retries(tmp_path, capsys):
    url = f"127.0.0.1:{free_port()}"
    (tmp_path / "d.csv").write_text("id,x,y\n1,20,30\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "s.png")
    rc = smr_main(["score-slide", str(tmp_path / "s.png"), "--detections", str(tmp_path / "d.csv"),
                   "--out", str(tmp_path / "out"), "--url", url, "--retries", "1",
                   "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert f"SMR server at {url} is unavailable" in err and "after 2 attempt(s)" in err
    assert "run the same command again" in err
