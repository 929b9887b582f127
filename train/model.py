"""The SMR embedding network: a DenseNet-121 backbone and a small embedding head.

The network maps normalised float images (N, 3, H, W) to L2-normalised embeddings (N, D). The
embedding is what the triplet loss, the curves and the SVM all see, and what export writes out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet121_Weights, densenet121

__all__ = ["SMRNet", "smr_net", "load_backbone_weights", "IMAGENET_MEAN", "IMAGENET_STD"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _EmbeddingHead(nn.Module):
    """Global average pool, dropout and a linear projection to the embedding size."""

    def __init__(self, in_features: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(in_features, embedding_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(F.relu(features), 1).flatten(1)
        return self.linear(self.dropout(pooled))


class SMRNet(nn.Module):
    """DenseNet-121 features followed by an embedding head; outputs unit-length embeddings."""

    def __init__(self, embedding_dim: int = 256, dropout: float = 0.05) -> None:
        super().__init__()
        self.features = densenet121(weights=None).features
        self.head = _EmbeddingHead(1024, embedding_dim, dropout)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


def load_backbone_weights(model: SMRNet, weights: str | Path) -> None:
    """Load DenseNet-121 weights into ``model.features``.

    ``weights`` is ``"imagenet"`` (torchvision's ImageNet weights, from its cache or online) or
    the path of a state dict: a torchvision ``densenet121`` state dict or one saved from an SMRNet.
    """
    if str(weights).lower() == "imagenet":
        state = DenseNet121_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise ValueError(f"{weights}: no DenseNet 'features.*' tensors in these weights")
    missing, unexpected = model.features.load_state_dict(features, strict=False)
    if missing:
        raise ValueError(f"{weights}: backbone weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    if unexpected:
        log.warning("%s: ignored %d unexpected tensors", weights, len(unexpected))


def smr_net(*, embedding_dim: int = 256, dropout: float = 0.05, weights: str | Path | None = None) -> SMRNet:
    """Build the SMR network.

    Args:
        embedding_dim: size of the embedding (256 in the paper).
        dropout: dropout before the embedding projection (0.05 in the paper).
        weights: backbone weights: ``None`` for random init, ``"imagenet"`` for torchvision's
            ImageNet weights, or a path to a local state dict.
    """
    model = SMRNet(embedding_dim=embedding_dim, dropout=dropout)
    if weights is None:
        log.info("backbone initialised at random (no --weights given)")
    else:
        load_backbone_weights(model, weights)
    return model
