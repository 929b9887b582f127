"""Training throughput of SMR next to torchvision's own DenseNet-121 training step.

For each image size, both models take the same batch of the same images and run the same number
of optimiser steps (Adam):

* SMR: normalisation, SMRNet (DenseNet-121 features + 256-D embedding head), the SMR criterion
  (triplet margin loss with its miner + the SMR term on the current curves), backward, step;
* torchvision: ``densenet121(num_classes=C)``, cross-entropy, backward, step.

It prints images/s for both and their ratio (SMR / torchvision), plus the augmentation pipeline's
images/s on one CPU thread (the data loader's share of the work). Run on an otherwise idle machine:

    python benchmarks/train_throughput.py --sizes 64 224 --batch-size 16 --steps 5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
from torchvision.models import densenet121

from smr.core.lineages import PAPER_SPEC
from smr.train.dataset import BatchAugment, normalize
from smr.train.engine import fit_lineage_curves
from smr.train.losses import build_criterion
from smr.train.model import IMAGENET_MEAN, IMAGENET_STD, smr_net


def _batch(size: int, batch_size: int, num_classes: int, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (batch_size, 3, size, size), dtype=np.uint8))
    classes = rng.choice(num_classes, size=batch_size // per_class, replace=False)
    labels = torch.from_numpy(np.repeat(classes, per_class)).long()
    return images, labels


def _time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def smr_step(size: int, batch_size: int, args: argparse.Namespace):
    spec = PAPER_SPEC
    images, labels = _batch(size, batch_size, len(spec.classes), args.samples_per_class)
    model = smr_net(embedding_dim=256, dropout=0.05).train()
    criterion = build_criterion(args.loss, embedding_dim=256)
    if criterion.needs_curves:  # curves fitted on random unit embeddings of every class
        rng = np.random.default_rng(1)
        emb = rng.normal(size=(len(spec.classes) * 4, 256))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        y = np.repeat(np.arange(len(spec.classes)), 4)
        features = criterion.curve_features(torch.from_numpy(emb).float()).numpy()
        criterion.set_curves(fit_lineage_curves(features, y, spec, curve=args.curve, targets="uniform"), spec)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(criterion.parameters()), lr=1e-4)

    def step() -> None:
        x = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
        loss, _ = criterion(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def torchvision_step(size: int, batch_size: int, args: argparse.Namespace):
    images, labels = _batch(size, batch_size, len(PAPER_SPEC.classes), args.samples_per_class)
    model = densenet121(weights=None, num_classes=len(PAPER_SPEC.classes)).train()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        x = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
        loss = loss_fn(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def augmentation_rate(size: int, n: int = 64) -> float:
    """Images/s of the training augmentation (rotation, resized crop, flips) on one thread."""
    augment = BatchAugment(crop_scale=(0.7, 1.0), rotation=True, flips=True)
    batch = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        augment(batch)
        return n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image sizes (default: 64 224)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    p.add_argument(
        "--samples-per-class", type=int, default=4, help="images per class in a batch (default: 4)"
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps per model and size (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--loss", default="normal", help="SMR loss variant (default: normal)")
    p.add_argument("--curve", default="linear", help="SMR curve model (default: linear)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for size in args.sizes:
        row = {"size": size, "batch_size": args.batch_size, "threads": torch.get_num_threads()}
        for name, build in (("smr", smr_step), ("torchvision", torchvision_step)):
            seconds = _time_steps(build(size, args.batch_size, args), args.steps, args.warmup)
            row[f"{name}_images_per_s"] = args.batch_size * args.steps / seconds
        row["ratio"] = row["smr_images_per_s"] / row["torchvision_images_per_s"]
        row["augmentation_images_per_s"] = augmentation_rate(size)
        results.append(row)
        if not args.json:
            print(
                f"{size:>4} px  batch {args.batch_size}  SMR {row['smr_images_per_s']:7.2f} img/s  "
                f"torchvision {row['torchvision_images_per_s']:7.2f} img/s  ratio {row['ratio']:.3f}  "
                f"(augmentation {row['augmentation_images_per_s']:.0f} img/s on 1 thread)",
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
