"""Kernel SHAP: exact on additive games, exact Shapley values under full enumeration, shap's
coalition scheme, determinism, and ``shap.KernelExplainer`` on the real MobileNetV2."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest
import torch

from biasscope.errors import ExplainerError
from biasscope.explainers import get_explainer
from biasscope.explainers._superpixels import segment, to_uint8
from biasscope.explainers.kernel_shap import shapley_coalitions
from tests.fixtures import (
    PixelLinearProbabilityModel,
    blocky_image,
    make_adapter,
    pixel_linear_adapter,
    planted_contributions,
    small_mobilenet_v2_chelsea,
)


def run_shap(adapter, x, target=1, **params):
    exp = get_explainer("kernel_shap")(adapter, **params)
    return exp.run(x, torch.tensor([target] * x.shape[0]))


def game_values(adapter, x, segments, fill, target):
    """``v(S)`` for every coalition ``S`` (as a dict keyed by the kept tuple), images built by a loop."""
    k = int(segments.max()) + 1
    coalitions = [c for r in range(k + 1) for c in itertools.combinations(range(k), r)]
    imgs = []
    for c in coalitions:
        img = fill.clone()
        for j in c:
            inside = torch.from_numpy(segments == j)
            img[:, inside] = x[:, inside]
        imgs.append(img)
    p = adapter.probabilities(torch.stack(imgs), fast=False)[:, target].double().numpy()
    return dict(zip(coalitions, p)), k


def interacting_adapter(size: int):
    """p = g^3 with g = 0.1 + sum(W x), W >= 0: superpixels interact (p rises faster when more are
    shown), beyond second order (paired sampling alone makes Kernel SHAP exact on quadratic games)."""
    w = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * (1.2 / size**2)
    return make_adapter(PixelLinearProbabilityModel(w, offset=0.1, power=3), input_size=size, num_classes=2)


def exact_shapley(values: dict, k: int) -> np.ndarray:
    phi = np.zeros(k)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        for r in range(k):
            w = factorial(r) * factorial(k - r - 1) / factorial(k)
            for s in itertools.combinations(others, r):
                phi[i] += w * (values[tuple(sorted((*s, i)))] - values[s])
    return phi


@pytest.mark.parametrize("hide", ["black", "mean"])
def test_additive_game_recovered_exactly_with_efficiency(hide):
    adapter = pixel_linear_adapter(32, scale=1e-2 if hide == "mean" else 2e-3)
    x = adapter.preprocess(blocky_image(32, noise=40.0 if hide == "mean" else 4.0))
    attr = run_shap(adapter, x, num_samples=100, n_segments=16, hide=hide)
    seg = attr.segments[0]
    planted = planted_contributions(adapter.model, x[0], seg, hide)
    assert len(planted) >= 10 and np.abs(planted).max() > 0.02
    # 100 coalitions of ~16 players: sampled, yet an additive game has no error to average out
    np.testing.assert_allclose(attr.weights[0], planted, rtol=0, atol=2e-6)
    c = attr.checks[0]
    assert c["efficiency_error"] < 1e-9
    assert c["probability"] - c["probability_all_hidden"] == pytest.approx(planted.sum(), abs=1e-6)
    assert c["fit_rmse"] < 1e-6
    np.testing.assert_array_equal(attr.maps[0].numpy(), attr.weights[0][seg])


def test_full_enumeration_gives_exact_shapley_values_of_a_non_additive_game():
    adapter = interacting_adapter(30)
    x = adapter.preprocess(blocky_image(30, blocks=3, seed=3))
    k = int(segment(to_uint8(adapter, x)[0], "slic", 9).max()) + 1
    assert k == 9
    attr = run_shap(adapter, x, num_samples=2**k, n_segments=9, hide="black")
    assert attr.checks[0]["coalitions"] == 2**k - 2
    values, _ = game_values(adapter, x[0], attr.segments[0], torch.zeros_like(x[0]), 1)
    interaction = values[tuple(range(k))] - values[()] - sum(values[(i,)] - values[()] for i in range(k))
    assert abs(interaction) > 0.05  # really not additive
    np.testing.assert_allclose(attr.weights[0], exact_shapley(values, k), rtol=0, atol=1e-6)


def test_coalitions_follow_shap_kernel_explainer():
    """The enumerated part (sizes 1 and k-1, then 2 and k-2, ...) and its weights equal shap's."""
    shap = pytest.importorskip("shap")
    k, budget = 10, 150
    ref = shap.KernelExplainer(lambda z: z.sum(1), np.zeros((1, k)))
    ref.explain(np.ones((1, k)), nsamples=budget, l1_reg=False)
    ref_masks, ref_w = ref.maskMatrix.astype(bool), ref.kernelWeights
    masks, w = shapley_coalitions(k, budget, np.random.default_rng(0))
    assert masks.shape == ref_masks.shape == (budget, k)
    n_fixed = int(np.sum(np.isin(ref_masks.sum(1), (1, k - 1))))
    assert n_fixed == 2 * k  # size 1 and its complements fit in 150, size 2 (90 with complements) does not
    np.testing.assert_array_equal(masks[:n_fixed], ref_masks[:n_fixed])
    np.testing.assert_allclose(w[:n_fixed], ref_w[:n_fixed], rtol=1e-12)
    assert w.sum() == pytest.approx(ref_w.sum(), rel=1e-12)  # same kernel mass left for random draws
    sizes = masks[n_fixed:].sum(1)
    assert sizes.min() >= 2 and sizes.max() <= k - 2
    assert len({m.tobytes() for m in masks}) == len(masks)  # no coalition evaluated twice
    # sizes below k/2 come with their complement right after them, as in shap; size k/2 comes alone
    small = n_fixed + np.flatnonzero(sizes < k / 2)
    small = small[small + 1 < len(masks)]
    np.testing.assert_array_equal(masks[small + 1], ~masks[small])
    assert np.sum(sizes > k / 2) == len(small) and np.any(sizes == k / 2)


def test_small_budget_and_tiny_games():
    m, w = shapley_coalitions(2, 100, np.random.default_rng(0))
    assert sorted(map(tuple, m.tolist())) == [(False, True), (True, False)] and np.allclose(w, 0.5)
    m, w = shapley_coalitions(30, 5, np.random.default_rng(0))
    assert m.shape == (5, 30) and w.sum() == pytest.approx(1.0)


def test_same_seed_same_result_different_seed_different_coalitions():
    adapter = interacting_adapter(32)
    x = adapter.preprocess(blocky_image(32, seed=1))
    a = run_shap(adapter, x, num_samples=60, n_segments=16, seed=1, hide="black")
    b = run_shap(adapter, x, num_samples=60, n_segments=16, seed=1, hide="black")
    c = run_shap(adapter, x, num_samples=60, n_segments=16, seed=2, hide="black")
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    assert np.abs(a.weights[0] - c.weights[0]).max() > 0.01 * np.abs(a.weights[0]).max()
    k = len(a.weights[0])
    m1, _ = shapley_coalitions(k, 60, np.random.default_rng(1))
    m2, _ = shapley_coalitions(k, 60, np.random.default_rng(2))
    assert {r.tobytes() for r in m1} != {r.tobytes() for r in m2}
    assert a.checks[0]["efficiency_error"] < 1e-9 and c.checks[0]["efficiency_error"] < 1e-9


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_samples": 1}, "parameter num_samples must be >= 2"),
        ({"segmentation": "grid"}, "parameter segmentation must be one of slic, quickshift, felzenszwalb"),
        ({"hide": "noise"}, "parameter hide must be one of mean, black, blur"),
        ({"n_segments": "many"}, "parameter n_segments must be int"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(ExplainerError, match=message):
        get_explainer("kernel_shap")(pixel_linear_adapter(8), **params)


@pytest.mark.slow
def test_matches_shap_kernel_explainer_on_mobilenet():
    """Both enumerate every coalition of ~7 superpixels of chelsea: the exact Shapley values of the
    same game, computed independently (shap gets f(mask) built here with a loop)."""
    shap = pytest.importorskip("shap")
    adapter, x, target = small_mobilenet_v2_chelsea(112)
    seg = segment(to_uint8(adapter, x)[0], "slic", 7)
    k = int(seg.max()) + 1
    assert 5 <= k <= 9
    ours = run_shap(adapter, x, target=target, num_samples=2**k - 2, n_segments=7, hide="mean")
    np.testing.assert_array_equal(ours.segments[0], seg)
    x0 = x[0].double()
    fill = x0.clone()
    for j in range(k):  # each superpixel's mean colour
        inside = torch.from_numpy(seg == j)
        fill[:, inside] = x0[:, inside].mean(dim=1, keepdim=True)

    def f(z: np.ndarray) -> np.ndarray:
        keep = torch.from_numpy(z.astype(bool))[:, torch.from_numpy(seg).long()]  # (M, S, S)
        imgs = torch.where(keep[:, None], x0[None], fill[None]).float()
        return adapter.probabilities(imgs, fast=False)[:, target].double().numpy()

    ref = shap.KernelExplainer(f, np.zeros((1, k)))
    theirs = np.asarray(ref.shap_values(np.ones((1, k)), nsamples=2**k - 2, l1_reg=False, silent=True)).reshape(-1)
    np.testing.assert_allclose(ours.weights[0], theirs, rtol=0, atol=2e-5)
    assert ours.checks[0]["probability"] == pytest.approx(float(ref.fx[0]), abs=1e-5)
    assert ours.checks[0]["efficiency_error"] < 1e-9
