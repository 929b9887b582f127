"""The Ray task of one slide, without Ray: --restart on a task's first attempt only, errors as outcomes.

On a real Ray cluster with real servers: test_scale_out.py."""

from __future__ import annotations

from pathlib import Path

import pytest

import smr.clients.distributed as distributed
from smr.clients.batch import SlideJob
from smr.clients.errors import ServerUnavailableError


class FakeClient:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_restart_applies_to_the_first_attempt_of_a_run_only(tmp_path, monkeypatch):
    calls: list[dict] = []

    def fake_score_slide(slide, detections, folder, client, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("the worker dies")  # as a killed worker: the task does not return
        return "scored"

    monkeypatch.setattr(distributed, "score_slide", fake_score_slide)
    job = SlideJob("case", Path("slide.tiff"), Path("detections.csv"))
    options = {"mpp": 0.5, "restart": True}
    with pytest.raises(RuntimeError):
        distributed.score_job(job, tmp_path, FakeClient, options, run="run-1")
    outcome = distributed.score_job(job, tmp_path, FakeClient, options, run="run-1")  # Ray's retry
    assert outcome.ok and outcome.score == "scored"
    assert [c["restart"] for c in calls] == [True, False]  # the retry resumes the journal
    assert all(c["progress"] is False and c["mpp"] == 0.5 for c in calls)
    assert not list((tmp_path / "case").glob(".smr-ray-attempt-*"))  # the marker goes with success
    distributed.score_job(job, tmp_path, FakeClient, options, run="run-2")  # a new command: restart
    assert calls[-1]["restart"] is True


def test_a_slide_that_fails_is_an_outcome_as_in_the_plain_loop(tmp_path, monkeypatch):
    def unavailable(*args, **kwargs):
        raise ServerUnavailableError("SMR server at a:1 is unavailable\nmore")

    monkeypatch.setattr(distributed, "score_slide", unavailable)
    job = SlideJob("case", Path("slide.tiff"), Path("detections.csv"))
    outcome = distributed.score_job(job, tmp_path, FakeClient, {}, run="r")
    assert not outcome.ok and outcome.error == "SMR server at a:1 is unavailable"
