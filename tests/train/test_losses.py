"""SMR losses against naive per-sample loops: triplet loss, SMR term, criterion and gradient routing."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from smr.core.curves import fit_curve
from smr.core.curves_json import LineageCurve
from smr.core.lineages import PAPER_SPEC
from smr.core.targets import stage_boundaries, uniform_targets
from smr.train.losses import (
    LOSSES,
    TERM_NAMES,
    TRIPLET_MINERS,
    SMRCriterion,
    SMRRegressionLoss,
    TripletLoss,
    build_criterion,
    default_alpha,
)

N_CLASSES = len(PAPER_SPEC.classes)


# -- references -------------------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dist(a: np.ndarray, b: np.ndarray) -> float:
    return math.sqrt(float(((a - b) ** 2).sum()))


def brute_force_triplets(x: np.ndarray, y: np.ndarray, margin: float, kind: str) -> set[tuple[int, int, int]]:
    """The triplets each miner should return, by enumerating all of them."""
    x = unit(x)
    n = len(y)
    out = set()
    if kind == "batch_hard":
        for a in range(n):
            pos = [p for p in range(n) if p != a and y[p] == y[a]]
            neg = [q for q in range(n) if y[q] != y[a]]
            if pos and neg:
                p = max(pos, key=lambda j: dist(x[a], x[j]))
                q = min(neg, key=lambda j: dist(x[a], x[j]))
                out.add((a, p, q))
        return out
    for a in range(n):
        for p in range(n):
            if p == a or y[p] != y[a]:
                continue
            for q in range(n):
                if y[q] == y[a]:
                    continue
                m = dist(x[a], x[q]) - dist(x[a], x[p])
                keep = m <= margin
                if kind == "hard":
                    keep &= m <= 0
                elif kind == "semihard":
                    keep &= m > 0
                if keep:
                    out.add((a, p, q))
    return out


def naive_triplet_loss(x: np.ndarray, triplets, margin: float) -> float:
    """max(d_ap - d_an + margin, 0) per triplet, averaged over the positive ones."""
    x = unit(x)
    values = [max(dist(x[a], x[p]) - dist(x[a], x[q]) + margin, 0.0) for a, p, q in triplets]
    positive = [v for v in values if v > 0]
    return sum(positive) / len(positive) if positive else 0.0


def paper_curves(dim: int, kind: str, rng: np.random.Generator) -> list[LineageCurve]:
    """Curves fitted by the core on random class means, one per lineage of the paper's spec."""
    out = []
    for li, lin in enumerate(PAPER_SPEC.lineages):
        n = len(lin.classes)
        means = rng.normal(size=(n, dim)) + np.linspace(0, 3, n)[:, None]
        counts = rng.integers(5, 50, size=n)
        curve = fit_curve(kind, means, counts, lineage_index=li, fixed_length=2.0)
        targets = uniform_targets(n)
        out.append(
            LineageCurve(
                name=lin.name,
                classes=lin.classes,
                targets=targets,
                boundaries=stage_boundaries(targets),
                curve=curve,
            )
        )
    return out


def naive_smr(x: np.ndarray, y: np.ndarray, curves: list[LineageCurve], mode: str) -> np.ndarray:
    """Per-sample SMR term by a loop over the batch (0 for other classes)."""
    out = np.zeros(len(y))
    for i, label in enumerate(y):
        stage = PAPER_SPEC.stage_of(PAPER_SPEC.classes[label])
        if stage is None:
            continue
        lc = curves[stage[0]]
        target = lc.targets[stage[1]]
        if mode == "normal":
            point = lc.curve.points(np.array([target]))[0]
            out[i] = sum(abs(x[i, d] - point[d]) for d in range(x.shape[1]))
        else:
            if lc.curve.kind == "bezier":
                t = lc.curve.project(x[i : i + 1])[0][0]
            else:  # the unclamped line position
                a, b = lc.curve.control_points[0], lc.curve.control_points[-1]
                t = float(np.dot(x[i] - a, b - a) / np.dot(b - a, b - a))
            out[i] = abs(t - target)
    return out


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: one thread avoids oversubscription when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(3)


# -- triplet loss -----------------------------------------------------------------------------
@pytest.mark.parametrize("miner", TRIPLET_MINERS)
def test_miner_matches_brute_force(rng, miner):
    x = rng.normal(size=(24, 6))
    y = rng.integers(0, 4, size=24)
    tml = TripletLoss(margin=0.2, miner=miner)
    mined = tml.mine(torch.from_numpy(x), torch.from_numpy(y))
    got = set(zip(*(m.tolist() for m in mined), strict=True))
    assert got == brute_force_triplets(x, y, 0.2, miner)


@pytest.mark.parametrize("miner", TRIPLET_MINERS)
@pytest.mark.parametrize("margin", [0.05, 0.2, 0.5])
def test_triplet_loss_matches_loop_over_mined_triplets(rng, miner, margin):
    x = rng.normal(size=(20, 5))
    y = rng.integers(0, 3, size=20)
    tml = TripletLoss(margin=margin, miner=miner)
    got = tml(torch.from_numpy(x), torch.from_numpy(y)).item()
    expected = naive_triplet_loss(x, brute_force_triplets(x, y, margin, miner), margin)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_triplet_loss_rejects_unknown_miner():
    with pytest.raises(ValueError, match="all, semihard, hard, batch_hard"):
        TripletLoss(miner="easy")


# -- SMR term ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fixed", "linear", "bezier"])
@pytest.mark.parametrize("mode", ["normal", "projected"])
def test_smr_term_matches_naive_loop(rng, kind, mode):
    dim = 6
    curves = paper_curves(dim, kind, rng)
    x = rng.normal(size=(40, dim)) * 2.0
    y = rng.integers(0, N_CLASSES, size=40)
    term = SMRRegressionLoss(mode)
    term.set_curves(curves, PAPER_SPEC)
    expected = naive_smr(x, y, curves, mode)
    got = term(torch.from_numpy(x), torch.from_numpy(y))
    # the paper's alpha/|B| * sum: the mean over the WHOLE batch, zeros for other classes
    assert got.item() == pytest.approx(expected.sum() / len(y), rel=1e-9)
    term.reduction = "none"
    np.testing.assert_allclose(term(torch.from_numpy(x), torch.from_numpy(y)).numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "bezier"])
@pytest.mark.parametrize("mode", ["normal", "projected"])
def test_smr_term_gradient_matches_finite_differences(rng, kind, mode):
    dim = 4
    curves = paper_curves(dim, kind, rng)
    y = torch.arange(N_CLASSES)
    # embeddings near their class's stage, so that Bézier projections fall inside the curve
    term = SMRRegressionLoss(mode)
    term.set_curves(curves, PAPER_SPEC)
    x0 = term.class_point[y] + torch.from_numpy(rng.normal(size=(N_CLASSES, dim))) * 0.05
    x = x0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: term(e, y), (x,))


@pytest.mark.parametrize("mode", ["normal", "projected"])
def test_other_classes_get_no_smr_gradient(rng, mode):
    term = SMRRegressionLoss(mode)
    term.set_curves(paper_curves(5, "bezier", rng), PAPER_SPEC)
    y = torch.arange(N_CLASSES).repeat(2)
    x = torch.from_numpy(rng.normal(size=(len(y), 5))).requires_grad_(True)
    term(x, y).backward()
    other = torch.tensor([PAPER_SPEC.stage_of(PAPER_SPEC.classes[c]) is None for c in y.tolist()])
    assert torch.all(x.grad[other] == 0)
    assert torch.all(x.grad[~other].abs().sum(dim=1) > 0)


def test_set_curves_replaces_the_previous_curves(rng):
    y = torch.from_numpy(rng.integers(0, N_CLASSES, size=30))
    x = torch.from_numpy(rng.normal(size=(30, 4)))
    term = SMRRegressionLoss("normal")
    first, second = paper_curves(4, "linear", rng), paper_curves(4, "bezier", rng)
    term.set_curves(first, PAPER_SPEC)
    term.set_curves(second, PAPER_SPEC)
    expected = naive_smr(x.numpy(), y.numpy(), second, "normal").mean()
    assert term(x, y).item() == pytest.approx(expected, rel=1e-9)
    assert term.state_dict() == {}  # curves are refitted every epoch, not model state


def test_class_to_stage_may_be_a_sequence(rng):
    curves = paper_curves(3, "linear", rng)
    stages = [PAPER_SPEC.stage_of(c) for c in PAPER_SPEC.classes]
    x, y = torch.from_numpy(rng.normal(size=(20, 3))), torch.from_numpy(rng.integers(0, N_CLASSES, size=20))
    by_spec, by_seq = SMRRegressionLoss("projected"), SMRRegressionLoss("projected")
    by_spec.set_curves(curves, PAPER_SPEC)
    by_seq.set_curves(curves, stages)
    assert by_spec(x, y).item() == by_seq(x, y).item()


def test_smr_term_reports_bad_input(rng):
    curves = paper_curves(3, "linear", rng)
    term = SMRRegressionLoss("normal")
    with pytest.raises(RuntimeError, match="set_curves"):
        term(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="normal, projected"):
        SMRRegressionLoss("l2")
    with pytest.raises(ValueError, match="2 lineages"):
        term.set_curves(curves[:1], PAPER_SPEC)
    with pytest.raises(ValueError, match="do not match the spec's lineage 'granulopoiesis'"):
        term.set_curves([curves[1], curves[0]], PAPER_SPEC)
    with pytest.raises(ValueError, match="stage 7"):
        term.set_curves(curves, [(0, 7)])
    term.set_curves(curves, PAPER_SPEC)
    with pytest.raises(ValueError, match="dimension 4 but the curves live in 3"):
        term(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 15\)"):
        term(torch.zeros(2, 3), torch.tensor([0, 15]))
    with pytest.raises(ValueError, match="integer class indices"):
        term(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        term(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


# -- criterion --------------------------------------------------------------------------------
def test_default_alpha_and_loss_names():
    assert [default_alpha(loss) for loss in LOSSES] == [0.0, 0.2, 0.2, 0.6, 0.6]
    with pytest.raises(ValueError, match="tml, normal, projected, dimred, projected\\+dimred"):
        build_criterion("l1")
    with pytest.raises(ValueError, match="alpha"):
        build_criterion("normal", alpha=1.5)
    assert [build_criterion(loss, embedding_dim=8).loss for loss in LOSSES] == list(LOSSES)


@pytest.mark.parametrize("loss", ["tml", "normal", "projected"])
def test_criterion_combines_the_terms(rng, loss):
    crit = build_criterion(loss, alpha=None if loss == "tml" else 0.3)
    dim = 6
    curves = paper_curves(dim, "bezier", rng)
    if crit.needs_curves:
        crit.set_curves(curves, PAPER_SPEC)
    x = rng.normal(size=(30, dim))
    y = rng.integers(0, N_CLASSES, size=30)
    total, terms = crit(torch.from_numpy(x), torch.from_numpy(y))
    assert set(terms) == set(TERM_NAMES)
    tml = naive_triplet_loss(x, brute_force_triplets(x, y, 0.2, "all"), 0.2)
    if loss == "tml":
        expected, smr = tml, 0.0
    else:
        smr = naive_smr(x, y, curves, loss).mean()
        expected = 0.3 * smr + 0.7 * tml
    assert total.item() == pytest.approx(expected, rel=1e-9)
    assert terms["smr"].item() == pytest.approx(smr, rel=1e-9)
    assert terms["tml"].item() == pytest.approx(tml, rel=1e-9)
    assert terms["tsne_kl"].item() == 0.0


def test_warm_up_logs_the_smr_term_without_optimising_it(rng):
    crit = build_criterion("normal", alpha=0.3)
    dim = 6
    curves = paper_curves(dim, "linear", rng)
    crit.set_curves(curves, PAPER_SPEC)
    x = torch.from_numpy(rng.normal(size=(30, dim))).requires_grad_()
    y = torch.from_numpy(rng.integers(0, N_CLASSES, size=30))
    crit.smr_active = False
    total, terms = crit(x, y)
    (grad_off,) = torch.autograd.grad(total, x)
    (grad_tml,) = torch.autograd.grad(crit.tml(x, y), x)
    smr = naive_smr(x.detach().numpy(), y.numpy(), curves, "normal").mean()
    assert terms["smr"].item() == pytest.approx(smr)
    assert total.item() == pytest.approx(terms["tml"].item(), rel=1e-12)
    torch.testing.assert_close(grad_off, grad_tml)  # the TML gradient at full weight, no SMR part
    crit.smr_active = True
    total, terms = crit(x, y)
    assert total.item() == pytest.approx(0.3 * terms["smr"].item() + 0.7 * terms["tml"].item(), rel=1e-9)


@pytest.mark.parametrize("loss", ["dimred", "projected+dimred"])
def test_dimred_gradient_routing(rng, loss):
    torch.manual_seed(0)
    dim = 8
    crit = build_criterion(loss, embedding_dim=dim, tsne_hidden=(16,)).double()
    x = torch.from_numpy(unit(rng.normal(size=(32, dim)))).requires_grad_(True)
    y = torch.from_numpy(rng.integers(0, N_CLASSES, size=32))
    assert crit.curve_space == "tsne"
    with pytest.raises(ValueError, match="2-D t-SNE map"):
        crit.set_curves(paper_curves(dim, "linear", rng), PAPER_SPEC)
    low = crit.curve_features(x)
    assert low.shape == (32, 2) and not low.requires_grad
    curves_2d = paper_curves(2, "bezier", rng)
    crit.set_curves(curves_2d, PAPER_SPEC)
    terms = crit.compute_terms(x, y)
    params = list(crit.tsne.parameters())

    def grads(term, inputs):
        return torch.autograd.grad(terms[term], inputs, retain_graph=True, allow_unused=True)

    # the SMR term is computed on r(x) with the curves of the 2-D map ...
    mode = "projected" if loss.startswith("projected") else "normal"
    expected = naive_smr(low.numpy(), y.numpy(), curves_2d, mode)
    assert terms["smr"].item() == pytest.approx(expected.mean(), rel=1e-9)
    # ... reaches the backbone through r, and does not train r
    assert grads("smr", [x])[0].abs().sum() > 0
    assert all(g is None or torch.all(g == 0) for g in grads("smr", params))
    # the KL trains r only
    assert grads("tsne_kl", [x])[0] is None
    assert all(g is not None and g.abs().sum() > 0 for g in grads("tsne_kl", params))
    total, logged = crit(x, y)
    expected_total = 0.6 * logged["smr"] + 0.4 * logged["tml"] + logged["tsne_kl"]
    assert total.item() == pytest.approx(expected_total.item(), rel=1e-12)


def test_criterion_rejects_inconsistent_parts(rng):
    with pytest.raises(ValueError, match="alpha"):
        SMRCriterion(TripletLoss(), SMRRegressionLoss(), -0.1)
    with pytest.raises(RuntimeError, match="no SMR term"):
        build_criterion("tml").set_curves(paper_curves(3, "linear", rng), PAPER_SPEC)
    curves = paper_curves(3, "linear", rng)
    curves[0] = replace(curves[0], name="myelopoiesis")
    with pytest.raises(ValueError, match="'myelopoiesis'"):
        build_criterion("normal").set_curves(curves, PAPER_SPEC)
