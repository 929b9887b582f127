"""Torch datasets, augmentation and the class-balanced batch sampler for SMR training.

Images are read once with :func:`smr.data.folder.load_image`, resized to the network's input size
(the whole patch, as serving sees it) and kept as uint8 arrays (:mod:`smr.train.cache` keeps them
on disk between runs). Items are uint8 tensors (3, H, W); :class:`BatchAugment` augments a whole
batch at once in the training process, and :func:`normalize` turns a batch into the network's
float input on the training device, so that the same rule (``/255``, ImageNet mean/std) applies to
training, evaluation and the exported graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

__all__ = [
    "CellImages",
    "BatchAugment",
    "normalize",
    "ClassBalancedBatchSampler",
]


class BatchAugment:
    """Training augmentation of a whole uint8 batch in one resampling step.

    Each image gets its own random rotation by any angle in [0, 360) (cells have no orientation),
    a random resized crop (area fraction in ``crop_scale``, aspect ratio in [0.9, 1/0.9]) and, with
    ``flips``, random horizontal and vertical flips. The three are composed into one affine map per
    image and applied with a single bilinear ``grid_sample``; samples that fall outside the image
    are mirrored back in (``padding_mode="reflection"``), so no empty corners appear.

    Working on the batch in the training process keeps both cores on the network: the data loader
    only gathers cached uint8 arrays. ``generator`` draws every random number, so a run (and a
    resumed run, which restores its state) is repeatable.

    ``stain_jitter`` S > 0 then varies the staining per image, as slides of different days,
    batches and laboratories do: each RGB channel's optical density OD = -ln((I + 1) / 256) becomes
    a * OD + b with a ~ U(1 - S, 1 + S) and b ~ U(-S/2, S/2), drawn per image and channel.

    ``blur`` B > 0 softens each image by a Gaussian of standard deviation U(0, B) pixels (of the
    network's input), as focus and resampling do: a cell cropped from a whole slide scanned at
    0.25 µm/px and resized to the training scale is softer than a patch saved at that scale.
    """

    def __init__(
        self,
        *,
        crop_scale: tuple[float, float] = (0.7, 1.0),
        rotation: bool = True,
        flips: bool = True,
        stain_jitter: float = 0.0,
        blur: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.rotation = rotation
        self.flips = flips
        self.stain_jitter = float(stain_jitter)
        self.blur = float(blur)
        self.generator = generator

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) * (hi - lo) + lo

    def matrices(self, n: int) -> torch.Tensor:
        """The (n, 2, 3) affine maps from output to input coordinates (``affine_grid``'s ``theta``)."""
        area = self._uniform(n, *self.crop_scale)
        log_ratio = self._uniform(n, math.log(0.9), -math.log(0.9))
        w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)  # crop size, fraction of the side
        h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        cx = (torch.rand(n, generator=self.generator, dtype=torch.float64) * 2 - 1) * (1 - w)
        cy = (torch.rand(n, generator=self.generator, dtype=torch.float64) * 2 - 1) * (1 - h)
        angle = self._uniform(n, 0.0, 2 * math.pi) if self.rotation else torch.zeros(n, dtype=torch.float64)
        if self.flips:
            fx = torch.randint(0, 2, (n,), generator=self.generator).double() * 2 - 1
            fy = torch.randint(0, 2, (n,), generator=self.generator).double() * 2 - 1
        else:
            fx = fy = torch.ones(n, dtype=torch.float64)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = cos * w * fx
        theta[:, 0, 1] = -sin * h * fy
        theta[:, 1, 0] = sin * w * fx
        theta[:, 1, 1] = cos * h * fy
        theta[:, 0, 2] = cx
        theta[:, 1, 2] = cy
        return theta

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> augmented uint8 (N, 3, H, W)."""
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (N, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
        x = batch.float()
        theta = self.matrices(x.shape[0]).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.blur > 0:
            out = self.soften(out)
        if self.stain_jitter > 0:
            out = self.stain(out)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def soften(self, x: torch.Tensor) -> torch.Tensor:
        """Float (N, 3, H, W) with each image blurred by its own Gaussian (see the class).

        Separable: one grouped 1-D convolution along each axis, a kernel per image (radius
        ceil(3 B)), edges mirrored as in the resampling step.
        """
        n, c, h, w = x.shape
        sigma = self._uniform(n, 0.0, self.blur).clamp(min=1e-3)
        radius = math.ceil(3 * self.blur)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype).repeat_interleave(c, dim=0)
        planes = x.reshape(1, n * c, h, w)
        planes = F.pad(planes, (radius, radius, 0, 0), mode="reflect")
        planes = F.conv2d(planes, kernel.view(n * c, 1, 1, -1), groups=n * c)
        planes = F.pad(planes, (0, 0, radius, radius), mode="reflect")
        planes = F.conv2d(planes, kernel.view(n * c, 1, -1, 1), groups=n * c)
        return planes.view(n, c, h, w)

    def stain(self, x: torch.Tensor) -> torch.Tensor:
        """Float (N, 3, H, W) intensities in [0, 255] with each image's stain varied (see the class)."""
        n, s = x.shape[0], self.stain_jitter
        scale = self._uniform(3 * n, 1 - s, 1 + s).view(n, 3, 1, 1).to(x.dtype)
        shift = self._uniform(3 * n, -s / 2, s / 2).view(n, 3, 1, 1).to(x.dtype)
        od = -torch.log((x.clamp(0, 255) + 1) / 256)
        return 256 * torch.exp(-(od * scale + shift)) - 1


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
        # a copy: the images may be a read-only memory map (smr.train.cache), which torch warns about
        img = torch.from_numpy(np.array(self.images[i], copy=True)).permute(2, 0, 1)
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
