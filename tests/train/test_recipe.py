"""The recipe around the loss: image cache, learning-rate schedule, weight EMA, precision, resume."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from smr.data.folder import FolderDataset, load_image
from smr.train import engine, recipe, rundir
from smr.train.cache import cache_key, cached_images, decode_images
from smr.train.config import ConfigError, TrainConfig

# ----------------------------------------------------------------------------------------------
# cache


def test_cache_returns_the_pixels_of_a_fresh_decode_and_reuses_its_file(blob_data, tmp_path):
    paths = FolderDataset.scan(blob_data).paths[:12]
    first = cached_images(paths, 24, cache_dir=tmp_path)
    fresh = np.stack([load_image(p, size=24) for p in paths])  # the independent reference
    assert isinstance(first, np.memmap) and first.shape == (12, 24, 24, 3)
    np.testing.assert_array_equal(first, fresh)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = cached_images(paths, 24, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, fresh)
    assert files[0].stat().st_mtime_ns == stamp  # read back, not written again
    np.testing.assert_array_equal(decode_images(paths, 24), fresh)


def test_cache_key_changes_with_size_order_and_mtime(blob_data, tmp_path):
    paths = FolderDataset.scan(blob_data).paths[:4]
    key = cache_key(paths, 24)
    assert cache_key(paths, 32) != key
    assert cache_key(paths[::-1], 24) != key
    st = os.stat(paths[0])
    try:
        os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert cache_key(paths, 24) != key
    finally:
        os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache_key(paths, 24) == key


def test_unwritable_cache_decodes_into_memory(blob_data, tmp_path):
    paths = FolderDataset.scan(blob_data).paths[:3]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    images = cached_images(paths, 16, cache_dir=blocker / "cache")
    np.testing.assert_array_equal(images, decode_images(paths, 16))


# ----------------------------------------------------------------------------------------------
# schedule


def _naive_lr(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * p)) / 2


def test_warmup_cosine_schedule_matches_the_formula_step_by_step():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = recipe.build_scheduler(opt, "cosine", warmup_steps=4, total_steps=20, min_ratio=0.1)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * _naive_lr(s, 4, 20, 0.1) for s in range(20)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert seen[3] == pytest.approx(0.5) and seen[-1] < 0.06
    constant = recipe.lr_lambda("constant", warmup_steps=2, total_steps=10)
    assert [constant(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="cosine, constant"):
        recipe.lr_lambda("step", warmup_steps=0, total_steps=1)


# ----------------------------------------------------------------------------------------------
# EMA


def test_ema_matches_a_naive_loop_with_decay_warm_up():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = recipe.ema_model(net, 0.9)
    reference = {k: v.detach().clone().double() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for n in range(12):
        loss = net(torch.randn(8, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(net)
        d = 0.0 if n == 0 else min(0.9, (1 + n) / (10 + n))  # the first update copies
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                reference[k] = d * reference[k] + (1 - d) * v.detach().double()
            else:
                reference[k] = v.detach().clone().double()
    for k, v in ema.module.state_dict().items():
        np.testing.assert_allclose(v.double().numpy(), reference[k].numpy(), rtol=1e-5, atol=1e-6)
    assert int(ema.n_averaged) == 12
    with pytest.raises(ValueError, match="decay"):
        recipe.ema_model(net, 1.0)


def test_training_evaluates_and_saves_the_averaged_weights(blob_data, tmp_path, tiny_config):
    config = tiny_config(epochs=2, ema_decay=0.9, loss="tml")
    engine.train(blob_data, tmp_path / "run", config, progress=False)
    state = torch.load(tmp_path / "run" / rundir.CHECKPOINT_FILE, weights_only=True)
    steps = int(state["scheduler"]["last_epoch"])
    assert steps >= 2 and int(state["ema"]["n_averaged"]) == steps  # one EMA update per step
    saved = load_file(str(tmp_path / "run" / rundir.MODEL_FILE))
    raw = state["model"]
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    best_epoch = int(state["best"]["epoch"])
    if best_epoch == 2:  # the saved model is the average at its epoch, not the raw network
        assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert any(not torch.equal(saved[k], raw[k]) for k in saved if raw[k].is_floating_point())


# ----------------------------------------------------------------------------------------------
# precision


def test_precision_is_detected_not_assumed(monkeypatch):
    cpu = torch.device("cpu")
    assert recipe.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(recipe, "cpu_features", lambda: {"flags": ["avx2"], "model": "x"})
    assert recipe.resolve_precision("auto", cpu) == "fp32"
    assert recipe.resolve_precision("bf16", cpu) == "bf16"  # asked for: used, with a warning
    monkeypatch.setattr(recipe, "cpu_features", lambda: {"flags": ["avx2", "amx_bf16"], "model": "x"})
    assert recipe.resolve_precision("auto", cpu) == "bf16"
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        TrainConfig(precision="fp16").validate()


def test_cpu_features_reads_proc_cpuinfo():
    info = recipe.cpu_features()
    flags = set(info["flags"])
    if os.path.isfile("/proc/cpuinfo"):
        text = Path("/proc/cpuinfo").read_text().split()
        assert flags == {f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in text} | (
            flags - {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
        )
        assert ("avx2" in flags) == ("avx2" in text)


# ----------------------------------------------------------------------------------------------
# resume


def _rows(run_dir):
    rows = list(csv.DictReader((run_dir / rundir.METRICS_FILE).read_text().splitlines()))
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def test_resumed_run_equals_an_uninterrupted_one(blob_data, tmp_path, tiny_config):
    config = tiny_config(epochs=3, ema_decay=0.9, smr_warmup_epochs=1, lr_warmup_epochs=1)
    whole = engine.train(blob_data, tmp_path / "whole", config, progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_two(state):
        if state.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        engine.train(blob_data, tmp_path / "cut", config, progress=False, on_epoch_end=stop_after_two)
    assert len(_rows(tmp_path / "cut")) == 2
    resumed = engine.train(blob_data, tmp_path / "cut", config, progress=False, resume=True)

    assert resumed.best_val_macro_f1 == whole.best_val_macro_f1
    assert resumed.best_epoch == whole.best_epoch and resumed.epochs == 3
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    a = load_file(str(tmp_path / "cut" / rundir.MODEL_FILE))
    b = load_file(str(tmp_path / "whole" / rundir.MODEL_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / rundir.SVM_FILE).read_text() == (
        tmp_path / "whole" / rundir.SVM_FILE
    ).read_text()


def test_resume_refuses_other_settings_and_missing_checkpoints(blob_data, tmp_path, tiny_config):
    config = tiny_config(epochs=1)
    with pytest.raises(engine.TrainError, match="no checkpoint.pt; start the run without --resume"):
        engine.train(blob_data, tmp_path / "none", config, progress=False, resume=True)
    engine.train(blob_data, tmp_path / "run", config, progress=False)
    with pytest.raises(engine.TrainError, match=r"other settings: lr=0.001 \(now 0.002\)"):
        engine.train(blob_data, tmp_path / "run", config.replace(lr=2e-3), progress=False, resume=True)
