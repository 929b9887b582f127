"""Training images/s of the data path before and after the image cache and batch augmentation.

Side by side in one run, on real images of a folder data set, for each image size:

* ``before``: what ``smr train`` did up to version 0.1: images decoded into memory at the start of
  every run, then per image in 2 DataLoader worker processes torchvision's reflect-pad + rotate,
  RandomResizedCrop and flips, and an fp32 network;
* ``after``: images from the on-disk cache (:mod:`smr.train.cache`), one loader in the training
  process, :class:`smr.train.dataset.BatchAugment` on the whole batch, then the network in fp32,
  bf16 autocast (where the CPU has a bf16 path) and channels-last.

Every configuration runs the same number of full optimiser steps (loader, augmentation,
normalisation, forward, SMR loss, backward, AdamW step) of class-balanced batches; the table gives
images/s and the share of a step spent outside forward/backward/step. It also times decoding the
images once against opening the cache. The CPU's flags are printed with the figures.

    python benchmarks/train_data_path.py PBC_TRAIN --sizes 96 128 --steps 6
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from smr.data.folder import FolderDataset
from smr.train.cache import cached_images, decode_images
from smr.train.config import TrainConfig
from smr.train.dataset import BatchAugment, CellImages, ClassBalancedBatchSampler, normalize
from smr.train.engine import fit_lineage_curves
from smr.train.losses import build_criterion
from smr.train.model import smr_net
from smr.train.recipe import cpu_features, has_bf16


class _OldRotation(torch.nn.Module):
    """The per-image rotation of the old pipeline: reflect-pad, rotate, centre-crop."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        pad = min(int(math.ceil(max(h, w) * (math.sqrt(2) - 1) / 2)) + 1, h - 1, w - 1)
        angle = float(torch.empty(()).uniform_(0.0, 360.0))
        padded = TF.pad(img, [pad, pad, pad, pad], padding_mode="reflect")
        return TF.center_crop(TF.rotate(padded, angle, interpolation=InterpolationMode.BILINEAR), [h, w])


def _old_transform(size: int) -> T.Compose:
    return T.Compose(
        [
            _OldRotation(),
            T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1 / 0.9), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
        ]
    )


def _run(images, labels, spec, size: int, mode: str, args) -> dict[str, float]:
    config = TrainConfig()
    torch.manual_seed(0)
    model = smr_net(embedding_dim=config.embedding_dim).train()
    channels_last = mode == "after bf16 channels-last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion("normal", embedding_dim=config.embedding_dim)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(labels), config.embedding_dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    criterion.set_curves(fit_lineage_curves(emb, labels, spec, curve="linear", targets="uniform"), spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = ClassBalancedBatchSampler(labels, args.batch_size, config.samples_per_class, seed=0)
    before = mode == "before"
    dataset = CellImages(images, labels, _old_transform(size) if before else None)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2 if before else 0)
    augment = None if before else BatchAugment(generator=torch.Generator().manual_seed(0))
    bf16 = "bf16" in mode
    outside = inside = 0.0
    done = 0
    it = iter(loader)
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        try:
            batch, y, _ = next(it)
        except StopIteration:
            it = iter(loader)
            batch, y, _ = next(it)
        if augment is not None:
            batch = augment(batch)
        x = normalize(batch, config.mean, config.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            e = model(x)
        loss, _ = criterion(e.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        if step >= args.warmup:
            outside += t1 - t0
            inside += t2 - t1
            done += len(y)
    return {"images_per_s": done / (outside + inside), "outside_share": outside / (outside + inside)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="folder data set (e.g. a PBC subset)")
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128], help="image sizes (default: 96 128)")
    p.add_argument("--images", type=int, default=640, help="images taken from the data set (default: 640)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration (default: 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    args = p.parse_args(argv)

    info = cpu_features()
    print(f"CPU: {info['model']}  flags: {' '.join(info['flags'])}  torch threads: {torch.get_num_threads()}")
    dataset = FolderDataset.scan(args.data)
    pick = np.random.default_rng(0).permutation(len(dataset.paths))[: args.images]
    paths = [dataset.paths[i] for i in pick]
    labels = dataset.labels[pick]
    modes = ["before", "after fp32"]
    if has_bf16(torch.device("cpu")):
        modes += ["after bf16", "after bf16 channels-last"]
    else:
        print("no bf16 hardware path on this CPU: bf16 rows left out")
    print("| size | data path | images/s | share outside forward/backward | vs before |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for size in args.sizes:
            t0 = time.perf_counter()
            fresh = decode_images(paths, size)
            decode_s = time.perf_counter() - t0
            cached_images(paths, size, cache_dir=cache)  # write the entry
            t0 = time.perf_counter()
            mapped = np.ascontiguousarray(cached_images(paths, size, cache_dir=cache))
            cache_s = time.perf_counter() - t0
            assert np.array_equal(mapped, fresh)
            rates: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            for _ in range(args.rounds):  # interleaved, so that load changes hit every mode alike
                for mode in modes:
                    rates[mode].append(_run(mapped, labels, dataset.spec, size, mode, args))
            base = max(r["images_per_s"] for r in rates["before"])
            for mode in modes:
                best = max(rates[mode], key=lambda r: r["images_per_s"])
                print(
                    f"| {size} | {mode} | {best['images_per_s']:.1f} | {100 * best['outside_share']:.1f} % "
                    f"| {best['images_per_s'] / base:.2f}x |",
                    flush=True,
                )
            print(
                f"  {size} px: decoding {len(paths)} images {decode_s:.2f} s "
                f"({len(paths) / decode_s:.0f} img/s); opening the cache {cache_s:.3f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
