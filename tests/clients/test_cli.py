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
        (["classify", "x.png", "--margin", "1.5"],
         "argument --margin: 1.5 is out of range: an SVM probability margin must be >= 0 and <= 1"),
        (["score-slide", "s.svs", "--detections", "d.csv", "--out", "o", "--mpp", "10000"],
         "argument --mpp: 10000 is out of range: microns per pixel must be >= 0.01 and <= 50"),
        (["score-slide", "s.svs", "--detections", "d.csv", "--out", "o", "--slide-mpp", "nan"],
         "argument --slide-mpp: nan is not a finite number"),
        (["score-slides", "dir", "--out", "o", "--timeout", "0"],
         "argument --timeout: 0 is out of range: seconds must be > 0 and <= 86400"),
        (["classify", "x.png", "--batch-size", "100000"],
         "argument --batch-size: 100000 is out of range: a count must be >= 1 and <= 4096"),
        (["classify", "x.png", "--url", "http://127.0.0.1:8001"],
         "argument --url: give HOST:PORT without a scheme (http://), e.g. --url 127.0.0.1:8001"),
        (["classify", "x.png", "--url", "https://triton.lab:8001/v2"],
         "argument --url: give HOST:PORT without a scheme (https://), e.g. --url triton.lab:8001 and --ssl "
         "for TLS"),
        (["classify", "x.png", "--url", "localhost"],
         "argument --url: expected HOST:PORT, e.g. 127.0.0.1:8001"),
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
                   "--out", str(tmp_path / "out"), "--url", url, "--retries", "1", "--level", "0",
                   "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert f"SMR server at {url} is unavailable" in err and "after 2 attempt(s)" in err
    assert "run the same command again" in err


def test_a_slide_without_a_resolution_is_refused_before_anything_is_written(tmp_path, capsys):
    url = f"127.0.0.1:{free_port()}"  # nothing listens: the check comes before the server is asked
    (tmp_path / "d.csv").write_text("id,x,y\n1,20,30\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "s.png")  # a PNG states no µm/px
    rc = smr_main(["score-slide", str(tmp_path / "s.png"), "--detections", str(tmp_path / "d.csv"),
                   "--out", str(tmp_path / "out"), "--url", url, "--retries", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (
        f"smr score-slide: error: {tmp_path / 's.png'}: the slide does not state its resolution (microns "
        "per pixel); pass --slide-mpp UM (e.g. 0.25 for a 40x scan), or read a pyramid level as it is with "
        "--level N\n"
    )
    assert not (tmp_path / "out").exists()
    (tmp_path / "many").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "many" / f"{name}.png")
        (tmp_path / "many" / f"{name}.csv").write_text("id,x,y\n1,20,30\n")
    rc = smr_main(["score-slides", str(tmp_path / "many"), "--out", str(tmp_path / "o"), "--url", url,
                   "--retries", "0", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert err.endswith(
        "smr score-slides: error: 2 of 2 slides do not state their resolution (microns per pixel): a.png, "
        "b.png; pass --slide-mpp UM, or read a pyramid level as it is with --level N\n"
    )
    assert not (tmp_path / "o").exists()


def test_a_scale_that_needs_a_huge_region_is_refused_not_a_memory_error(tmp_path):
    from smr.clients.errors import InputError
    from smr.clients.patches import patch_geometry
    from smr.clients.slides import open_slide

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "s.png")
    with open_slide(tmp_path / "s.png") as slide, pytest.raises(InputError) as exc:
        patch_geometry(slide, 224, mpp=40.0, slide_mpp=0.25)
    assert str(exc.value) == (
        "patches at 40 µm/px from a slide at 0.25 µm/px would be resized 160x (level 0); SMR resizes at "
        "most 16x either way: check --mpp and --slide-mpp"
    )


def test_the_http_port_gets_a_hint_to_use_grpc(tmp_path, capsys):
    import http.server
    import threading

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # an HTTP/1.1 server, like Triton's port 8000, that logs nothing
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"127.0.0.1:{server.server_address[1]}"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "s.png")
    try:
        rc = smr_main(["classify", str(tmp_path / "s.png"), "--url", url, "--retries", "0"])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"smr classify: error: SMR server at {url} is unavailable (")
    assert err.endswith(
        f"; {url} answers, but not with gRPC: is it Triton's HTTP port? SMR clients speak gRPC, which "
        "Triton serves on port 8001 by default (--url 127.0.0.1:8001)\n"
    )


def test_port_8000_is_named_as_triton_s_http_port():
    from smr.clients.client import http_port_hint

    assert http_port_hint("triton.lab:8000") == (
        "; port 8000 is Triton's HTTP port, but SMR clients speak gRPC, which Triton serves on port 8001 by "
        "default (--url triton.lab:8001)"
    )
    assert http_port_hint("triton.lab:8001", "connection refused") == ""
