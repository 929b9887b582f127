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
