"""Finding slides with their detections for ``smr score-slides``, and running jobs with a bound."""

from __future__ import annotations

import threading
import time

import pytest

from smr.clients.batch import SlideJob, find_jobs, run_jobs
from smr.clients.errors import InputError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_per_slide_and_slides_side_by_side(tmp_path):
    a = _touch(tmp_path / "case-a" / "slide.tiff")
    a_det = _touch(tmp_path / "case-a" / "detections.csv")
    _touch(tmp_path / "case-a" / "thumbnail.png")
    _touch(tmp_path / "case-a" / "slide.json")  # metadata (smr synth-slide writes it), not detections
    e = _touch(tmp_path / "case-e" / "smear.jpg")
    e_det = _touch(tmp_path / "case-e" / "detections.geojson")
    b = _touch(tmp_path / "B.svs")
    b_det = _touch(tmp_path / "B.geojson")
    c = _touch(tmp_path / "C.ndpi")
    c_det = _touch(tmp_path / "C.detections.csv")
    _touch(tmp_path / "lonely.svs")
    _touch(tmp_path / "case-d" / "slide.tiff")
    _touch(tmp_path / "notes" / "readme.txt")
    jobs, skipped = find_jobs(tmp_path)
    assert {(j.name, j.slide, j.detections) for j in jobs} == {
        ("case-a", a, a_det), ("B", b, b_det), ("C", c, c_det), ("case-e", e, e_det),
    }  # fmt: skip
    assert (
        len(skipped) == 2 and any("lonely.svs" in s for s in skipped) and any("case-d" in s for s in skipped)
    )


def test_list_files_with_header_names_and_relative_paths(tmp_path):
    s1 = _touch(tmp_path / "data" / "one.svs")
    d1 = _touch(tmp_path / "data" / "one.csv")
    listing = tmp_path / "slides.csv"
    listing.write_text(
        "slide,detections,name\ndata/one.svs,data/one.csv,first\n# comment\ndata/one.svs,data/one.csv\n"
    )
    jobs, _ = find_jobs(listing)
    assert jobs == [
        SlideJob("first", s1.resolve(), d1.resolve()),
        SlideJob("one", s1.resolve(), d1.resolve()),
    ]
    listing.write_text("data/one.svs,data/missing.csv\n")
    with pytest.raises(InputError, match="line 1: detections .*missing.csv does not exist"):
        find_jobs(listing)


def test_nothing_to_do_and_clashing_names_are_errors(tmp_path):
    with pytest.raises(InputError, match="no slide with detections"):
        find_jobs(tmp_path)
    _touch(tmp_path / "x" / "A.svs"), _touch(tmp_path / "x" / "A.csv")
    _touch(tmp_path / "x-A" / "slide.svs"), _touch(tmp_path / "x-A" / "detections.csv")
    _touch(tmp_path / "x" / "B.svs"), _touch(tmp_path / "x" / "B.csv")
    with pytest.raises(InputError, match="same output folder: x-A"):
        find_jobs(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        find_jobs(tmp_path / "nope")


def test_jobs_run_at_most_parallel_at_once_and_failures_do_not_stop_the_rest(tmp_path):
    from smr.clients.errors import ServerUnavailableError

    jobs = [SlideJob(f"s{i}", tmp_path / f"s{i}.svs", tmp_path / f"s{i}.csv") for i in range(7)]
    running, peak, lock = [0], [0], threading.Lock()

    def score(job):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if job.name == "s3":
            raise ServerUnavailableError("server went away")
        return job.name  # stands in for a SlideScore

    outcomes = run_jobs(jobs, score, parallel=3)
    assert peak[0] == 3
    assert [o.job for o in outcomes] == jobs
    assert [o.ok for o in outcomes] == [True, True, True, False, True, True, True]
    assert outcomes[3].error == "server went away"
