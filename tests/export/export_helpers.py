"""Run directories for the export tests, written as ``smr train`` writes them.

``run64``: an untrained SMRNet at 64 px on real PBC patches, with curves (Bézier) and an sklearn
SVC fitted on its own PyTorch embeddings of the training split, and a spec with two lineages, so
that every output has more than one column. ``run224``: the same network at 224 px with curves and
an SVC fitted on random unit vectors (the 224 px path is about the graph, not the classifier).
Both are written with ``smr.train.rundir``'s writers, as ``smr train`` writes them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.svm import SVC

from smr.core.lineages import Lineage, LineageSpec
from smr.core.svm import svm_to_dict
from smr.data.folder import FolderDataset, load_image
from smr.train import rundir
from smr.train.config import TrainConfig
from smr.train.dataset import normalize
from smr.train.engine import fit_lineage_curves
from smr.train.model import smr_net

# the pixel size these runs declare for PBC's 360 px CellaVision patches (34 um across, as the
# synthetic generator draws them), so that their exports carry a physical scale
PBC_MICRONS_PER_PIXEL = 34.0 / 360
# two lineages over PBC's classes (the second is not biology; it gives MATURITY two columns)
TWO_LINEAGES = LineageSpec(
    lineages=(
        Lineage("granulopoiesis", ("promyelocyte", "myelocyte", "metamyelocyte", "band", "segmented")),
        Lineage("mono", ("lymphocyte", "monocyte")),
    ),
    other=("basophil", "eosinophil", "erythroblast"),
    microns_per_pixel=PBC_MICRONS_PER_PIXEL,
)
ONE_LINEAGE = LineageSpec(
    lineages=(
        Lineage("granulopoiesis", ("promyelocyte", "myelocyte", "metamyelocyte", "band", "segmented")),
    ),
    other=("basophil", "eosinophil", "erythroblast", "lymphocyte", "monocyte"),
)


@dataclass
class RunFixture:
    path: Path
    data: Path
    spec: LineageSpec
    config: TrainConfig
    svc: SVC  # the fitted scikit-learn SVM (svm.json is its svm_to_dict)
    train: list[str]
    val: list[str]
    _reference: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def images(self, rel_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) patches as training reads them, and their labels."""
        images = np.stack([load_image(self.data / p, size=self.config.image_size) for p in rel_paths])
        labels = np.array([self.classes.index(Path(p).parts[0]) for p in rel_paths])
        return images, labels

    def reference_embeddings(self, rel_paths: list[str]) -> np.ndarray:
        """PyTorch embeddings of these patches (``torch_reference_embeddings``), computed once each."""
        missing = [p for p in rel_paths if p not in self._reference]
        if missing:
            images, _ = self.images(missing)
            self._reference.update(zip(missing, torch_reference_embeddings(self, images), strict=True))
        return np.stack([self._reference[p] for p in rel_paths])


@torch.inference_mode()
def torch_reference_embeddings(run: RunFixture, images: np.ndarray) -> np.ndarray:
    """The PyTorch model as training evaluates it: smr.train.dataset.normalize, then the network."""
    model = rundir.load_run_model(run.path)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    return torch.cat([model(normalize(b, run.config.mean, run.config.std)) for b in batch.split(64)]).numpy()


def _split(data: Path, classes: list[str], n_train: int, n_val: int) -> tuple[list[str], list[str]]:
    train, val = [], []
    for name in classes:
        files = sorted(p.name for p in (data / name).iterdir())
        train += [f"{name}/{f}" for f in files[:n_train]]
        val += [f"{name}/{f}" for f in files[n_train : n_train + n_val]]
    return train, val


def make_run(
    out: Path, data: Path, *, spec: LineageSpec, image_size: int, n_train: int, n_val: int, real_svm: bool
) -> RunFixture:
    torch.manual_seed(image_size)
    config = TrainConfig(image_size=image_size, curve="bezier" if real_svm else "linear").validate()
    model = smr_net(embedding_dim=config.embedding_dim, dropout=config.dropout).eval()
    rundir.write_config(out, config, spec, FolderDataset.scan(data, spec, verify=False))
    rundir.save_model(out, model)
    train, val = _split(data, list(spec.classes), n_train, n_val)
    rundir.write_split(out, train, val, seed=0, fold=None, folds=None, data=str(data))
    run = RunFixture(out, data, spec, config, SVC(), train, val)
    labels = np.array([run.classes.index(Path(p).parts[0]) for p in train])
    if real_svm:
        features = run.reference_embeddings(train + val)[: len(train)]
    else:
        rng = np.random.default_rng(0)
        features = rng.normal(size=(len(train), config.embedding_dim)) + labels[:, None] * 0.05
        features /= np.linalg.norm(features, axis=1, keepdims=True)
    curves = fit_lineage_curves(features, labels, spec, curve=config.curve, targets=config.targets)
    rundir.write_curves(out, curves)
    svc = SVC(kernel="rbf", probability=True, C=10.0, gamma="scale", random_state=0)
    with warnings.catch_warnings():  # scikit-learn 1.9 deprecates probability=True; SMR's SVM uses it
        warnings.filterwarnings(
            "ignore", message=".*`probability` parameter was deprecated", category=FutureWarning
        )
        svc.fit(features, labels)
    rundir.write_svm(out, svm_to_dict(svc, run.classes))
    run.svc = svc
    return run


def shared_pbc_dev() -> Path:
    """The development data set (as tests/conftest.py finds it: $SMR_SHARED_DATA or ../shared/data)."""
    import os

    env = os.environ.get("SMR_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    path = root / "pbc-dev"
    if not (path / "lineages.toml").is_file():
        raise FileNotFoundError(f"development data not found at {path}; set SMR_SHARED_DATA")
    return path


def make_untrained_run(out: Path, *, image_size: int = 224, data: Path | None = None) -> Path:
    """A complete run directory of an untrained network (PBC spec, SVM and curves on random
    embeddings, split over the real PBC patches); returns ``out``. For tests of export and serving."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    make_run(
        out,
        data or shared_pbc_dev(),
        spec=ONE_LINEAGE,
        image_size=image_size,
        n_train=4,
        n_val=2,
        real_svm=False,
    )
    return out
