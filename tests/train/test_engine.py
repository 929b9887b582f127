"""The training loop, run directory, sampler and augmentation (tiny 32 px data, CPU)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from smr.core.curves import fit_curve
from smr.core.curves_json import project_all
from smr.core.review import choose_margin
from smr.core.svm import RbfSvm
from smr.core.targets import make_targets
from smr.data.folder import FolderDataset, load_image
from smr.train import engine, losses, rundir
from smr.train.config import LOSSES, MINERS, ConfigError, TrainConfig, default_alpha
from smr.train.dataset import BatchAugment, ClassBalancedBatchSampler, normalize

# ----------------------------------------------------------------------------------------------
# config


def test_config_round_trips_through_json():
    config = TrainConfig(loss="dimred", curve="bezier", svm_gamma=("scale", 0.5), folds=3, fold=2)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [("loss", "triplet", "projected+dimred"), ("curve", "spline", "bezier"), ("miner", "x", "batch_hard")],
)
def test_config_errors_name_the_valid_choices(field, value, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        TrainConfig(**{field: value}).validate()


def test_config_rejects_unknown_keys_and_bad_ranges():
    with pytest.raises(ConfigError, match="unknown config keys"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="fold=3"):
        TrainConfig(folds=3, fold=3).validate()
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=6, samples_per_class=4).validate()


def test_config_choices_agree_with_the_losses_module():
    assert LOSSES == losses.LOSSES
    assert set(MINERS) == set(losses.TRIPLET_MINERS)
    assert losses.default_alpha is default_alpha  # one definition, in the torch-free config module
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        default_alpha("nope")
    assert TrainConfig().miner in losses.TRIPLET_MINERS


# ----------------------------------------------------------------------------------------------
# sampler, augmentation, embeddings


def test_sampler_batches_hold_several_images_per_class():
    labels = np.repeat(np.arange(5), [12, 3, 7, 20, 9])
    sampler = ClassBalancedBatchSampler(labels, batch_size=12, samples_per_class=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 12
    for batch in batches:
        assert len(batch) == 12
        _, counts = np.unique(labels[batch], return_counts=True)
        assert counts.tolist() == [4, 4, 4]
    # every image is drawn about equally often within its class: class 1 (3 images) cycles through all
    drawn = [i for b in batches for i in b if labels[i] == 1]
    if len(drawn) >= 3:
        assert set(drawn[:3]) == set(np.flatnonzero(labels == 1))


def test_sampler_is_repeatable_and_splits_batches_between_processes():
    labels = np.repeat(np.arange(4), 16)
    one = ClassBalancedBatchSampler(labels, 8, 4, seed=3, num_replicas=1, rank=0, batches_per_epoch=6)
    ranks = [
        ClassBalancedBatchSampler(labels, 8, 4, seed=3, num_replicas=2, rank=r, batches_per_epoch=3)
        for r in range(2)
    ]
    full = list(one)
    assert full == list(one)  # same seed and epoch, same batches
    assert list(ranks[0]) == full[0::2] and list(ranks[1]) == full[1::2]
    one.set_epoch(1)
    assert list(one) != full


def test_augment_adds_no_empty_corners_and_keeps_size():
    flat = torch.full((4, 3, 40, 40), 200, dtype=torch.uint8)
    augment = BatchAugment(crop_scale=(0.5, 1.0), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        out = augment(flat)
        assert out.shape == flat.shape and out.dtype == torch.uint8
        assert int((out.int() - 200).abs().max()) <= 1  # reflection padding: no black corners


def test_augment_matches_a_naive_per_pixel_affine_map():
    """Each output pixel samples the input where theta sends it (nearest pixel of a smooth image)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = np.stack([xx * 4, yy * 4, (xx + yy) * 2]).astype(np.uint8)  # (3, 32, 32) ramps
    batch = torch.from_numpy(np.stack([smooth] * 3))
    augment = BatchAugment(crop_scale=(0.6, 0.9), generator=torch.Generator().manual_seed(3))
    state = augment.generator.get_state()
    theta = augment.matrices(3).numpy()
    augment.generator.set_state(state)
    out = augment(batch).numpy().astype(int)
    for n in range(3):
        for _ in range(20):
            i, j = rng.integers(8, 24, size=2)  # central pixels: no reflection involved
            u, v = (2 * j + 1) / 32 - 1, (2 * i + 1) / 32 - 1  # normalised output coordinates
            x, y = theta[n] @ np.array([u, v, 1.0])
            sx, sy = ((x + 1) * 32 - 1) / 2, ((y + 1) * 32 - 1) / 2  # input pixel coordinates
            if 0 <= sx <= 31 and 0 <= sy <= 31:
                expected = np.array([sx * 4, sy * 4, (sx + sy) * 2])
                assert np.abs(out[n, :, i, j] - expected).max() <= 1.01


def test_stain_jitter_is_a_per_image_per_channel_affine_map_of_optical_density():
    s = 0.3
    batch = np.random.default_rng(4).uniform(0, 255, (3, 3, 8, 8))
    gen = torch.Generator().manual_seed(2)
    out = BatchAugment(stain_jitter=s, generator=gen).stain(torch.from_numpy(batch)).numpy()
    gen.manual_seed(2)  # the same draws: 3 scales per image, then 3 shifts per image

    def draw(lo: float, hi: float) -> np.ndarray:
        return (torch.rand(9, generator=gen, dtype=torch.float64) * (hi - lo) + lo).numpy().reshape(3, 3)

    scale, shift = draw(1 - s, 1 + s), draw(-s / 2, s / 2)
    assert np.ptp(scale) > 0 and np.ptp(shift) > 0
    for n, c, i, j in itertools.product(range(3), range(3), range(8), range(8)):  # a naive loop
        od = -math.log((batch[n, c, i, j] + 1) / 256)
        expected = 256 * math.exp(-(scale[n, c] * od + shift[n, c])) - 1
        assert out[n, c, i, j] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # no jitter: exactly the geometric augmentation, from the same random stream
    images = torch.from_numpy(batch.round().astype(np.uint8))
    plain = BatchAugment(generator=torch.Generator().manual_seed(5))(images)
    off = BatchAugment(stain_jitter=0.0, generator=torch.Generator().manual_seed(5))(images)
    on = BatchAugment(stain_jitter=s, generator=torch.Generator().manual_seed(5))(images)
    assert torch.equal(plain, off) and not torch.equal(plain, on)


def test_blur_is_each_images_own_gaussian_as_scipy_computes_it():
    from scipy.ndimage import gaussian_filter

    b = 1.5
    batch = np.random.default_rng(7).uniform(0, 255, (4, 3, 20, 17))
    gen = torch.Generator().manual_seed(3)
    out = BatchAugment(blur=b, generator=gen).soften(torch.from_numpy(batch)).numpy()
    gen.manual_seed(3)
    sigma = (torch.rand(4, generator=gen, dtype=torch.float64) * b).numpy()
    radius = math.ceil(3 * b)
    assert np.ptp(sigma) > 0.3
    for n, c in itertools.product(range(4), range(3)):
        # the independent reference: scipy's Gaussian, the same radius, edges mirrored
        expected = gaussian_filter(batch[n, c], sigma[n], mode="mirror", truncate=radius / sigma[n])
        np.testing.assert_allclose(out[n, c], expected, rtol=1e-10, atol=1e-9)
    # off: exactly the geometric augmentation, from the same random stream; on: softer images
    images = torch.from_numpy(batch.round().astype(np.uint8))
    plain = BatchAugment(generator=torch.Generator().manual_seed(5))(images)
    off = BatchAugment(blur=0.0, generator=torch.Generator().manual_seed(5))(images)
    on = BatchAugment(blur=b, generator=torch.Generator().manual_seed(5))(images)
    assert torch.equal(plain, off) and not torch.equal(plain, on)
    assert on.float().diff(dim=-1).abs().mean() < plain.float().diff(dim=-1).abs().mean()


def test_augment_is_repeatable_from_its_generator():
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 24, 24), dtype=np.uint8))
    a = BatchAugment(generator=torch.Generator().manual_seed(5))(batch)
    b = BatchAugment(generator=torch.Generator().manual_seed(5))(batch)
    c = BatchAugment(generator=torch.Generator().manual_seed(6))(batch)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_and_compute_embeddings_match_a_plain_forward():
    images = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(5)]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    torch.manual_seed(0)
    from smr.train.model import smr_net

    model = smr_net(embedding_dim=8).eval()
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    manual = (batch.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(batch, mean, std), manual)
    with torch.no_grad():
        expected = model(manual).numpy()
    got = engine.compute_embeddings(
        model, images, mean=mean, std=std, device=torch.device("cpu"), batch_size=2
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        normalize(batch.float(), mean, std)


# ----------------------------------------------------------------------------------------------
# the shared 2-epoch run


def test_training_writes_a_complete_run_that_load_run_reads_back(trained_run):
    run_dir = trained_run.run_dir
    for name in (
        rundir.CONFIG_FILE,
        rundir.MODEL_FILE,
        rundir.CURVES_FILE,
        rundir.SVM_FILE,
        rundir.METRICS_FILE,
        rundir.SPLIT_FILE,
    ):
        assert (run_dir / name).is_file(), name
    assert rundir.is_complete(run_dir)
    run = rundir.load_run(run_dir)
    assert run.config == trained_run.config
    assert run.classes == ["early", "mid", "late", "other"]
    meta = json.loads((run_dir / rundir.CONFIG_FILE).read_text())
    assert meta["image_size"] == 32 and meta["embedding_dim"] == 16 and meta["backbone"] == "densenet121"
    assert meta["mean"] == list(trained_run.config.mean)

    # the saved model is the best epoch's: it reproduces that epoch's validation embeddings
    best = trained_run.result.best_epoch
    state = trained_run.states[best - 1]
    split = rundir.read_split(run_dir)
    data = FolderDataset.scan(trained_run.data)
    by_rel = {p.relative_to(data.root).as_posix(): i for i, p in enumerate(data.paths)}
    val_idx = [by_rel[p] for p in split["val"]]
    images = [load_image(data.paths[i], size=32) for i in val_idx]
    emb = engine.compute_embeddings(
        run.model, images, mean=run.config.mean, std=run.config.std, device=torch.device("cpu")
    )
    np.testing.assert_allclose(emb, state.val_embeddings, atol=1e-5)

    # the saved SVM (numpy, as served) reproduces the best validation macro F1
    labels = data.labels[val_idx]
    pred = np.argmax(RbfSvm.from_dict(run.svm).predict_proba(emb.astype(np.float64)), axis=1)
    f1 = f1_score(labels, pred, labels=np.arange(4), average="macro", zero_division=0)
    assert f1 == pytest.approx(trained_run.result.best_val_macro_f1)
    # the review margin is the one chosen on those validation probabilities, recorded in the result
    probs = RbfSvm.from_dict(run.svm).predict_proba(emb.astype(np.float64))
    margin = choose_margin(probs, labels)
    assert trained_run.result.review_margin == pytest.approx(margin, abs=1e-6)
    assert run.result["review_margin"] == pytest.approx(margin, abs=1e-6)

    # the saved curves are that epoch's, fitted in the embedding space
    for saved, fitted in zip(run.curves, state.curves, strict=True):
        np.testing.assert_allclose(saved.curve.control_points, fitted.curve.control_points)
        np.testing.assert_allclose(saved.targets, fitted.targets)
        assert saved.curve.control_points.shape[1] == 16

    # the split is stratified, disjoint and covers the data
    assert not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == len(data)

    rows = list(csv.DictReader((run_dir / rundir.METRICS_FILE).read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("total", "tml", "smr", "val_macro_f1", "seconds"):
        assert all(r[key] != "" for r in rows), key
    assert max(float(r["val_macro_f1"]) for r in rows) == pytest.approx(trained_run.result.best_val_macro_f1)


def test_curves_and_targets_are_refitted_every_epoch_and_used_by_the_loss(trained_run):
    states, given = trained_run.states, trained_run.loss_curves
    config = trained_run.config
    # one set_curves call before every epoch: initial curves, then those fitted after epoch 1
    assert len(given) == len(states) == 2
    data = FolderDataset.scan(trained_run.data)
    split = rundir.read_split(trained_run.run_dir)
    by_rel = {p.relative_to(data.root).as_posix(): i for i, p in enumerate(data.paths)}
    train_labels = data.labels[[by_rel[p] for p in split["train"]]]
    for state in states:
        # independent refit from the epoch's training embeddings: class means -> fit_curve
        emb = state.train_embeddings.astype(np.float64)
        idx = [0, 1, 2]
        means = np.stack([emb[train_labels == c].mean(axis=0) for c in idx])
        counts = np.array([(train_labels == c).sum() for c in idx])
        expected = fit_curve(config.curve, means, counts)
        np.testing.assert_allclose(state.curves[0].curve.control_points, expected.control_points, atol=1e-9)
        np.testing.assert_allclose(state.curves[0].targets, make_targets(config.targets, counts))
    # epoch 2 trained against the curves fitted at the end of epoch 1
    np.testing.assert_allclose(given[1][0].curve.control_points, states[0].curves[0].curve.control_points)

    # ... and they moved: the target points l(t_c) differ from the initial ones and between epochs
    def target_points(lc):
        return lc.curve.points(lc.targets)

    assert not np.allclose(target_points(given[0][0]), target_points(given[1][0]))
    assert not np.allclose(target_points(states[0].curves[0]), target_points(states[1].curves[0]))


def test_same_seed_same_run(trained_run, tmp_path):
    again = engine.train(trained_run.data, tmp_path / "again", trained_run.config, progress=False)
    assert again.best_val_macro_f1 == trained_run.result.best_val_macro_f1

    def rows(run_dir):
        out = list(csv.DictReader((run_dir / rundir.METRICS_FILE).read_text().splitlines()))
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in out]

    assert rows(tmp_path / "again") == rows(trained_run.run_dir)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "again" / rundir.MODEL_FILE))
    b = load_file(str(trained_run.run_dir / rundir.MODEL_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# early stopping, variants, bad input


def test_early_stopping_keeps_the_best_epoch(blob_data, tmp_path, monkeypatch, tiny_config):
    scripted = iter([0.5, 0.7, 0.6, 0.7, 0.9, 0.95])  # best at epoch 2; patience 2 stops after epoch 4
    real = engine.evaluate

    def fake(*args, **kwargs):
        svm, scores = real(*args, **kwargs)
        return svm, {**scores, "val_macro_f1": next(scripted)}

    monkeypatch.setattr(engine, "evaluate", fake)
    states = []
    config = tiny_config(epochs=6, patience=2, batch_size=8, smr_warmup_epochs=1)
    result = engine.train(blob_data, tmp_path / "run", config, progress=False, on_epoch_end=states.append)
    assert result.epochs == 4 and result.stopped_early
    # epoch 1 is the TML warm-up: the SMR term is logged but not in the total; then it is
    rows = [s.metrics for s in states]
    assert rows[0]["smr"] > 0 and rows[0]["total"] == pytest.approx(rows[0]["tml"], rel=1e-9)
    alpha = config.effective_alpha
    for row in rows[1:]:
        assert row["total"] == pytest.approx(alpha * row["smr"] + (1 - alpha) * row["tml"], rel=1e-6)
        assert row["total"] != pytest.approx(row["tml"], rel=1e-3)
    assert result.best_epoch == 2 and result.best_val_macro_f1 == 0.7
    assert [s.improved for s in states] == [True, True, False, False]
    saved = rundir.load_run(tmp_path / "run")
    np.testing.assert_allclose(saved.curves[0].curve.control_points, states[1].curves[0].curve.control_points)
    assert json.loads((tmp_path / "run" / rundir.CONFIG_FILE).read_text())["result"]["best_epoch"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "curve"), [("projected+dimred", "bezier"), ("tml", "fixed")])
def test_other_variants_train(blob_data, tmp_path, loss, curve, tiny_config):
    states = []
    config = tiny_config(loss=loss, curve=curve, targets="frequency", epochs=1, tsne_perplexity=3.0)
    result = engine.train(blob_data, tmp_path / "run", config, progress=False, on_epoch_end=states.append)
    run = rundir.load_run(tmp_path / "run")
    # served curves live in the embedding space, whatever space the loss used
    assert run.curves[0].curve.control_points.shape[1] == config.embedding_dim
    assert run.curves[0].curve.kind == curve
    if loss == "tml":
        assert states[0].loss_curves is None
    else:
        assert states[0].loss_curves[0].curve.control_points.shape[1] == 2  # the t-SNE map
    rho = result.val_spearman["blasts"]
    t, _ = project_all(run.curves, states[0].val_embeddings.astype(np.float64))
    assert rho is None or -1.0 <= rho <= 1.0
    assert t.shape == (len(states[0].val_embeddings), 1)


def test_bad_data_and_output_folders_fail_clearly(blob_data, tmp_path, tiny_config):
    broken = tmp_path / "broken"
    shutil.copytree(blob_data, broken)
    shutil.rmtree(broken / "mid")
    with pytest.raises(engine.TrainError, match="mid"):
        engine.train(broken, tmp_path / "out", tiny_config(), progress=False)

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(engine.TrainError, match="not empty.*--overwrite"):
        engine.train(blob_data, occupied, tiny_config(), progress=False)
    assert (occupied / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]


def test_load_run_names_missing_and_mismatched_files(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run.run_dir, copy)
    (copy / rundir.SVM_FILE).unlink()
    with pytest.raises(rundir.RunDirError, match="svm.json"):
        rundir.load_run(copy)
    shutil.copy(trained_run.run_dir / rundir.SVM_FILE, copy / rundir.SVM_FILE)
    doc = json.loads((copy / rundir.SVM_FILE).read_text())
    doc["classes"] = list(reversed(doc["classes"]))
    (copy / rundir.SVM_FILE).write_text(json.dumps(doc))
    with pytest.raises(rundir.RunDirError, match="classes"):
        rundir.load_run(copy)
    shutil.copy(trained_run.run_dir / rundir.SVM_FILE, copy / rundir.SVM_FILE)
    meta = json.loads((copy / rundir.CONFIG_FILE).read_text())
    meta["config"]["embedding_dim"] = 32
    meta["embedding_dim"] = 32
    (copy / rundir.CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(rundir.RunDirError, match="32-D|embedding"):
        rundir.load_run(copy)
