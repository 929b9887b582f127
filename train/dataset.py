"""Torch datasets, augmentation and the class-balanced batch sampler for SMR training.

Images are read once with :func:`smr.data.folder.load_image`, resized to the network's input size
(the whole patch, as serving sees it) and kept in memory as uint8 arrays; the per-item work is then
only augmentation. Items are uint8 tensors (3, H, W); :func:`normalize` turns a batch into the
network's float input on the training device, so that the same rule (``/255``, ImageNet mean/std)
applies to training, evaluation and the exported graph.

Augmentation (training only): rotation by any angle (cells have no orientation; the image is
reflect-padded before rotating so that no artificial corners appear), a mild random resized crop
and horizontal/vertical flips.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "CellImages",
    "RandomRotation",
    "train_transform",
    "normalize",
    "ClassBalancedBatchSampler",
    "load_images",
]


def load_images(paths: Sequence[str | Path], size: int, *, progress: bool = False) -> list[np.ndarray]:
    """Read and resize every image to (size, size, 3) uint8; errors name the file."""
    from smr.data.folder import load_image

    items: Sequence[str | Path] = paths
    if progress:
        from tqdm import tqdm

        items = tqdm(paths, desc="loading images", unit="img", leave=False)
    return [load_image(p, size=size) for p in items]


class RandomRotation(torch.nn.Module):
    """Rotate by a uniform random angle in [0, 360) without introducing empty corners.

    The image is reflect-padded by the amount a 45-degree rotation needs, rotated, and cropped
    back to its size, so the corners show mirrored background instead of a fill colour.
    """

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        pad = int(math.ceil(max(h, w) * (math.sqrt(2) - 1) / 2)) + 1
        pad = min(pad, h - 1, w - 1)  # reflect padding must be smaller than the image
        angle = float(torch.empty(()).uniform_(0.0, 360.0))
        padded = TF.pad(img, [pad, pad, pad, pad], padding_mode="reflect")
        rotated = TF.rotate(padded, angle, interpolation=InterpolationMode.BILINEAR)
        return TF.center_crop(rotated, [h, w])


def train_transform(
    image_size: int, *, crop_scale: tuple[float, float], rotation: bool, flips: bool
) -> T.Compose:
    """Training augmentation of a uint8 tensor (3, H, W) -> uint8 tensor (3, image_size, image_size)."""
    steps: list[torch.nn.Module] = []
    if rotation:
        steps.append(RandomRotation())
    steps.append(
        T.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=(0.9, 1.0 / 0.9), antialias=True)
    )
    if flips:
        steps += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
    return T.Compose(steps)


def normalize(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalised network input on ``device``."""
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch (N, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
    x = batch.to(device, non_blocking=True).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class CellImages(Dataset):
    """In-memory cell patches: item ``i`` is ``(uint8 tensor (3, H, W), label, i)``."""

    def __init__(
        self, images: Sequence[np.ndarray], labels: Sequence[int], transform: torch.nn.Module | None = None
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        if self.transform is not None:
            img = self.transform(img)
        return img.contiguous(), int(self.labels[i]), i


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices with ``samples_per_class`` images of each drawn class.

    The triplet miner needs positives in every batch, so each batch draws ``batch_size //
    samples_per_class`` distinct classes (all classes, with more images each, when there are fewer)
    and cycles through each class's shuffled images, so every image is seen about equally often.
    An epoch has ``len(labels) // (batch_size * num_replicas)`` batches per process (at least 1).

    Under DDP each of ``num_replicas`` processes takes every ``num_replicas``-th batch of one
    common sequence, seeded by ``seed`` and the epoch (``set_epoch``), so the processes see
    different batches and a run is repeatable.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        samples_per_class: int,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise ValueError("labels must be a non-empty 1-D sequence")
        if samples_per_class < 1 or batch_size < samples_per_class:
            raise ValueError(f"batch_size={batch_size} must be >= samples_per_class={samples_per_class} >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must lie in [0, num_replicas={num_replicas})")
        self.classes = np.unique(self.labels)
        self.by_class = [np.flatnonzero(self.labels == c) for c in self.classes]
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.num_batches = batches_per_epoch or max(1, len(self.labels) // (batch_size * num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self.classes)
        k = self.batch_size // self.samples_per_class
        if k <= n_classes:
            classes_per_batch, per_class = k, self.samples_per_class
        else:
            classes_per_batch, per_class = n_classes, math.ceil(self.batch_size / n_classes)
        queues = [rng.permutation(idx) for idx in self.by_class]
        cursors = [0] * n_classes

        def take(c: int, n: int) -> list[int]:
            out: list[int] = []
            while len(out) < n:
                if cursors[c] >= len(queues[c]):
                    queues[c] = rng.permutation(self.by_class[c])
                    cursors[c] = 0
                step = min(n - len(out), len(queues[c]) - cursors[c])
                out += queues[c][cursors[c] : cursors[c] + step].tolist()
                cursors[c] += step
            return out

        for b in range(self.num_batches * self.num_replicas):
            chosen = rng.choice(n_classes, size=classes_per_batch, replace=False)
            batch = [i for c in chosen for i in take(int(c), per_class)][: self.batch_size]
            if b % self.num_replicas == self.rank:
                yield batch
