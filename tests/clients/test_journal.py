"""The scoring journal: exact round trip, kill-safe appends, refusal of foreign journals."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from smr.clients.errors import InputError
from smr.clients.journal import JOURNAL_CSV, JOURNAL_META, SLIDE_HASH_CACHE, Journal, slide_sha256
from smr.clients.results import BatchOutputs
from tests.clients.helpers import paper_info

RUN = {"slide": {"name": "s.tiff", "bytes": 123}, "detections": {"sha256": "ab", "count": 10}}


def _outputs(info, n, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(info.classes)), size=n).astype(np.float32)
    return BatchOutputs(
        probs,
        probs.argmax(1),
        rng.uniform(0, 1, (n, len(info.lineages))).astype(np.float32),
        rng.uniform(0, 5, (n, len(info.lineages))).astype(np.float32),
    )


def test_outputs_round_trip_bit_exactly_across_reopen(tmp_path):
    info = paper_info()
    a, b = _outputs(info, 4, 0), _outputs(info, 3, 1)
    with Journal.open(tmp_path, info, RUN) as journal:
        journal.append(["a0", "a1", "a2", "a3"], a)
        journal.append(["b0", "b1", "b2"], b)
    reopened = Journal.open(tmp_path, info, RUN)
    assert len(reopened) == 7 and "b2" in reopened and "c0" not in reopened
    got = reopened.outputs(["b1", "a3", "a0"])
    np.testing.assert_array_equal(
        got.probabilities, np.stack([b.probabilities[1], a.probabilities[3], a.probabilities[0]])
    )
    np.testing.assert_array_equal(got.maturity, np.stack([b.maturity[1], a.maturity[3], a.maturity[0]]))
    np.testing.assert_array_equal(got.distance, np.stack([b.distance[1], a.distance[3], a.distance[0]]))
    np.testing.assert_array_equal(got.class_id, [b.class_id[1], a.class_id[3], a.class_id[0]])


def test_a_line_cut_short_by_a_kill_is_dropped_and_the_rest_kept(tmp_path):
    info = paper_info()
    with Journal.open(tmp_path, info, RUN) as journal:
        journal.append(["a0", "a1"], _outputs(info, 2, 0))
    path = tmp_path / JOURNAL_CSV
    whole = path.read_bytes()
    path.write_bytes(whole + b"a2,3,0.1,0.2")  # a write interrupted half-way
    reopened = Journal.open(tmp_path, info, RUN)
    assert len(reopened) == 2 and "a2" not in reopened
    assert path.read_bytes() == whole  # the fragment is gone, so the next append starts on a fresh line
    reopened.append(["a2"], _outputs(info, 1, 2))
    reopened.close()
    with Journal.open(tmp_path, info, RUN) as again:
        assert len(again) == 3


def test_a_journal_of_another_run_or_model_is_refused_unless_restarted(tmp_path):
    info = paper_info()
    with Journal.open(tmp_path, info, RUN) as journal:
        journal.append(["a0"], _outputs(info, 1, 0))
    other = json.loads(json.dumps(RUN))
    other["detections"]["sha256"] = "cd"
    with pytest.raises(InputError, match=r"different scoring run \(changed: run.detections.sha256\)"):
        Journal.open(tmp_path, info, other)
    with pytest.raises(InputError, match="changed: model.image_size"):
        Journal.open(tmp_path, paper_info(image_size=96), RUN)
    with Journal.open(tmp_path, info, other, restart=True) as fresh:
        assert len(fresh) == 0
    assert json.loads((tmp_path / JOURNAL_META).read_text())["run"] == other


def test_damaged_journals_say_how_to_recover(tmp_path):
    info = paper_info()
    with Journal.open(tmp_path, info, RUN) as journal:
        journal.append(["a0"], _outputs(info, 1, 0))
    path = tmp_path / JOURNAL_CSV
    path.write_text(path.read_text() + "x,1,2\n")
    with pytest.raises(InputError, match="line 3: damaged.*--restart"):
        Journal.open(tmp_path, info, RUN)
    (tmp_path / JOURNAL_META).unlink()
    with pytest.raises(InputError, match="without scoring-journal.json"):
        Journal.open(tmp_path, info, RUN)


def test_two_runs_cannot_write_one_journal(tmp_path):
    info = paper_info()
    with Journal.open(tmp_path, info, RUN):
        with pytest.raises(InputError, match="being written by another scoring run"):
            Journal.open(tmp_path, info, RUN)
    with Journal.open(tmp_path, info, RUN) as journal:  # released on close
        assert len(journal) == 0


def test_a_different_slide_under_the_same_name_and_size_is_refused(tmp_path):
    info = paper_info()
    slides = tmp_path / "slides"
    slides.mkdir()
    slide = slides / "s.tiff"
    slide.write_bytes(b"A" * 5000 + b"first")
    out = tmp_path / "out"
    out.mkdir()
    with Journal.open(out, info, RUN, slide=slide) as journal:
        journal.append(["a0"], _outputs(info, 1, 0))
    stored = json.loads((out / JOURNAL_META).read_text())["run"]["slide"]
    assert stored["sha256"] == hashlib.sha256(slide.read_bytes()).hexdigest()
    assert stored["name"] == "s.tiff"  # the name still counts too
    with Journal.open(out, info, RUN, slide=slide) as journal:  # the same slide resumes
        assert "a0" in journal
    slide.write_bytes(b"A" * 5000 + b"other")  # same name, same size, other pixels
    with pytest.raises(InputError, match=r"changed: run.slide.sha256"):
        Journal.open(out, info, RUN, slide=slide)


def test_the_slide_hash_is_streamed_once_and_cached_beside_the_journal(tmp_path):
    slide = tmp_path / "big.tiff"
    slide.write_bytes(np.random.default_rng(0).bytes(3 * 2**20 + 17))  # several chunks
    cache = tmp_path / SLIDE_HASH_CACHE
    assert slide_sha256(slide, cache) == hashlib.sha256(slide.read_bytes()).hexdigest()
    doc = json.loads(cache.read_text())
    assert doc["bytes"] == slide.stat().st_size and doc["path"] == str(slide.resolve())
    doc["sha256"] = "f" * 64  # a cached value is used while the file is unchanged ...
    cache.write_text(json.dumps(doc))
    assert slide_sha256(slide, cache) == "f" * 64
    os.utime(slide, ns=(slide.stat().st_atime_ns, slide.stat().st_mtime_ns + 10**9))
    assert slide_sha256(slide, cache) == hashlib.sha256(slide.read_bytes()).hexdigest()  # ... and no longer
    assert slide_sha256(slide) == hashlib.sha256(slide.read_bytes()).hexdigest()  # without a cache
