"""Deletion/insertion curves on a hand model with hand-computed values, and the cascading
randomisation sanity check on real MobileNetV2 (Grad-CAM changes; a model-independent edge map
does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from biasscope.evaluation import deletion_insertion, perturbation_curves, randomization_check
from biasscope.explainers import EXPLAINERS, Attribution, Explainer, register
from tests.fixtures import LinearModel, make_adapter, mobilenet_v2_adapter, real_images


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _pixel_model(size: int, seed: int):
    """Class 0's logit is ``sum(W * x)``, class 1's is 0: ``p0 = sigmoid(sum of per-pixel
    contributions)``, so every point of a deletion/insertion curve follows on paper."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(2, 3, size, size)
    w[0] = torch.randn(3, size, size, generator=g)
    adapter = make_adapter(LinearModel(w, torch.zeros(2)), input_size=size, num_classes=2)
    return adapter, w[0].double().numpy()


def _blur_by_hand(x: np.ndarray) -> np.ndarray:
    """The insertion baseline: a Gaussian blur, sigma max(2, S/16), edge pixels replicated,
    3-sigma kernel (scipy's own implementation as an independent reference)."""
    sigma = max(2.0, x.shape[-1] / 16)
    return np.stack([gaussian_filter(c, sigma, mode="nearest", truncate=3.0) for c in x])


def test_tiny_case_curves_equal_hand_computation():
    adapter, w = _pixel_model(2, seed=0)
    x = np.array(
        [
            [[[1.0, -0.5], [0.25, 2.0]], [[0.5, 1.5], [-1.0, 0.0]], [[-0.25, 0.75], [1.0, -1.5]]],
            [[[0.0, 1.0], [-1.0, 0.5]], [[2.0, -0.5], [0.25, 1.0]], [[1.5, 0.0], [-0.75, 0.5]]],
        ]
    )  # (2, 3, 2, 2)
    targets = [0, 1]  # p1 = 1 - p0: the second image's curves fall where the first's rise
    steps = 4  # one pixel per step
    maps, dele_hand, ins_hand = [], [], []
    for img, t in zip(x, targets):
        contrib = (w * img).sum(0).ravel()  # per-pixel contributions to the logit, row-major
        assert len(set(contrib.round(6))) == 4  # no ties: the order is unambiguous
        order = np.argsort(-contrib)  # the map removes/inserts pixels in this order
        blur_contrib = (w * _blur_by_hand(img)).sum(0).ravel()
        p = (lambda z: _sigmoid(z)) if t == 0 else (lambda z: 1 - _sigmoid(z))
        dele_hand.append([p(contrib.sum() - contrib[order[:k]].sum()) for k in range(steps + 1)])
        ins_hand.append([p(contrib[order[:k]].sum() + blur_contrib[order[k:]].sum()) for k in range(steps + 1)])
        maps.append(contrib.reshape(2, 2))

    xt, tt, maps = torch.tensor(x, dtype=torch.float32), torch.tensor(targets), np.stack(maps).astype(np.float32)
    dele, ins = perturbation_curves(adapter, xt, tt, maps, steps=steps)
    np.testing.assert_allclose(dele, dele_hand, rtol=1e-5)
    np.testing.assert_allclose(ins, ins_hand, rtol=1e-5)

    aucs = deletion_insertion(adapter, xt, tt, maps, steps=steps)
    for i in range(2):
        assert aucs[i]["deletion_auc"] == pytest.approx(np.trapezoid(dele_hand[i], dx=1 / steps), rel=1e-5)
        assert aucs[i]["insertion_auc"] == pytest.approx(np.trapezoid(ins_hand[i], dx=1 / steps), rel=1e-5)


def test_perfect_map_beats_reversed_map():
    adapter, w = _pixel_model(8, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 8, 8, generator=g) * 2 - 0.5
    t = torch.zeros(3, dtype=torch.long)
    contrib = (torch.tensor(w, dtype=torch.float32)[None] * x).sum(1).numpy()  # (3, 8, 8)
    perfect = deletion_insertion(adapter, x, t, contrib, steps=16)
    reversed_ = deletion_insertion(adapter, x, t, -contrib, steps=16)
    rng = np.random.default_rng(0)
    randoms = [deletion_insertion(adapter, x, t, rng.random(contrib.shape), steps=16) for _ in range(8)]
    for i in range(3):
        rand_del = np.mean([r[i]["deletion_auc"] for r in randoms])
        rand_ins = np.mean([r[i]["insertion_auc"] for r in randoms])
        assert perfect[i]["deletion_auc"] < rand_del < reversed_[i]["deletion_auc"]
        assert perfect[i]["insertion_auc"] > rand_ins > reversed_[i]["insertion_auc"]


# ---------------------------------------------------------------- randomisation sanity check


class _EdgeMap(Explainer):
    """Sobel edge magnitude of the input: ignores the model entirely (a sanity-check control)."""

    name = "test_sobel_edges"
    label = "Sobel edges"
    description = "model-independent control for the randomisation check"

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        gray = x.detach().cpu().float().mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
        gx = torch.nn.functional.conv2d(gray, kx, padding=1)
        gy = torch.nn.functional.conv2d(gray, kx.transpose(2, 3), padding=1)
        self.report(1.0)
        return Attribution(maps=torch.sqrt(gx**2 + gy**2)[:, 0])


@pytest.fixture
def edge_method():
    register(_EdgeMap)
    try:
        yield _EdgeMap.name
    finally:
        EXPLAINERS.pop(_EdgeMap.name, None)


@pytest.mark.slow
def test_randomization_check_separates_gradcam_from_an_edge_detector(edge_method, monkeypatch):
    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "8")  # the randomised copy would measure again
    adapter = mobilenet_v2_adapter()
    image = real_images()[0].resize((160, 106))
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}

    cam = randomization_check(adapter, image, "gradcam", max_steps=2, seed=0)
    assert cam.layers == ["classifier", "features.18"]
    print(f"Grad-CAM spearman after randomising {cam.layers}: {cam.spearman}")
    # measured (chelsea, coffee; seeds 0, 1; 3 steps): between -0.53 and 0.64 at every step
    assert max(cam.spearman) < 0.8, cam.spearman

    edges = randomization_check(adapter, image, edge_method, max_steps=2, seed=0)
    assert edges.spearman == pytest.approx([1.0, 1.0], abs=1e-9)

    # the check works on a copy: the served model is untouched
    after = adapter.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
