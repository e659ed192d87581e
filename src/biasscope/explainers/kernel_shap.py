"""Kernel SHAP on superpixels (Lundberg & Lee 2017), following ``shap.KernelExplainer``.

Players are superpixels; the value of a coalition is the target probability with the other
superpixels hidden. Coalitions are chosen as shap does: subset sizes whose coalitions (and their
complements) fit the budget under the Shapley kernel are enumerated completely, the rest are
sampled from the kernel's size distribution in complementary pairs (repeats add weight). The
Shapley values solve the kernel-weighted least squares with the efficiency constraint
``sum(phi) = f(x) - f(all hidden)`` imposed exactly (by eliminating one player, as shap does).
With enough samples to enumerate every coalition the result is the exact Shapley value.
"""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import torch

from ._superpixels import SUPERPIXEL_PARAMS, coalition_scores, prepare_superpixels
from .base import SEED_MAX, Attribution, Explainer, Param
from .registry import register

__all__ = ["KernelShap", "constrained_shap_solve", "shapley_coalitions"]


def _random_subsets(rng: np.random.Generator, sizes: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """One uniformly random subset of ``sizes[i]`` of ``k`` players per row, ``(len(sizes), k)`` bool."""
    out = np.empty((len(sizes), k), dtype=bool)
    for i in range(0, len(sizes), block):  # bounded memory for large budgets
        ranks = rng.random((len(sizes[i : i + block]), k), dtype=np.float32).argsort(axis=1).argsort(axis=1)
        out[i : i + block] = ranks < sizes[i : i + block, None]
    return out


def shapley_coalitions(k: int, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions ``(M, k)`` bool and kernel weights ``(M,)`` as ``shap.KernelExplainer`` picks them.

    ``M <= min(num_samples, 2**k - 2)``; the empty and full coalitions are never included.
    """
    if k < 2:
        return np.zeros((0, k), dtype=bool), np.zeros(0)
    budget = min(int(num_samples), 2**k - 2 if k <= 30 else 2**30)
    n_sizes = int(np.ceil((k - 1) / 2))
    n_paired = int(np.floor((k - 1) / 2))
    sizes = np.arange(1, n_sizes + 1)
    weight_vector = (k - 1.0) / (sizes * (k - sizes))
    weight_vector[:n_paired] *= 2
    weight_vector /= weight_vector.sum()

    masks: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    n_full, left = 0, budget
    remaining = weight_vector.copy()
    for s in range(1, n_sizes + 1):
        paired = s <= n_paired
        nsub = comb(k, s) * (2 if paired else 1)
        if left * remaining[s - 1] / nsub < 1.0 - 1e-8:
            break
        n_full += 1
        left -= nsub
        if remaining[s - 1] < 1.0:
            remaining /= 1 - remaining[s - 1]
        idx = np.array(list(itertools.combinations(range(k), s)), dtype=np.int64)
        m = np.zeros((len(idx), k), dtype=bool)
        m[np.arange(len(idx))[:, None], idx] = True
        w = weight_vector[s - 1] / comb(k, s) / (2.0 if paired else 1.0)
        if paired:  # each subset followed by its complement, as shap adds them
            m = np.stack([m, ~m], axis=1).reshape(-1, k)
        masks.append(m)
        weights.append(np.full(len(m), w))

    if n_full != n_sizes and left > 0:
        rem = weight_vector.copy()
        rem[:n_paired] /= 2  # two samples per draw for paired sizes
        rem = rem[n_full:] / rem[n_full:].sum()
        # shap draws up to 4x the budget; draw a little more than needed first, the rest only if repeats ate it
        n_max = 4 * left
        size = rng.choice(len(rem), n_max, p=rem) + n_full + 1
        n_draws = min(n_max, left + left // 2 + 32)
        draws = _random_subsets(rng, size[:n_draws], k)
        while True:
            uniq, first, inverse = np.unique(draws, axis=0, return_index=True, return_inverse=True)
            paired = size[:n_draws] <= n_paired
            new_cost = np.where(paired[first], 2, 1)
            if new_cost.sum() >= left or n_draws == n_max:
                break
            draws = np.concatenate([draws, _random_subsets(rng, size[n_draws:], k)])
            n_draws = n_max
        inverse = inverse.reshape(-1)
        is_new = np.zeros(n_draws, dtype=bool)
        is_new[first] = True
        cost = np.where(is_new, np.where(paired, 2, 1), 0)
        filled = np.cumsum(cost) >= left
        stop = int(np.argmax(filled)) if filled.any() else n_draws - 1
        used = slice(0, stop + 1)
        order = np.sort(first[first <= stop])  # new coalitions in order of first draw
        counts = np.bincount(inverse[used], minlength=len(uniq)).astype(np.float64)
        m_new = draws[order]
        w_new = counts[inverse[order]]
        pair = paired[order]
        keep = np.stack([np.ones(len(order), bool), pair], axis=1)  # complement only for paired sizes
        rows = np.stack([m_new, ~m_new], axis=1)[keep]  # each coalition followed by its complement
        ws = np.stack([w_new, w_new], axis=1)[keep]
        rows, ws = rows[:left], ws[:left]  # an odd budget drops the last complement, as shap does
        ws = ws * (weight_vector[n_full:].sum() / ws.sum())
        masks.append(rows)
        weights.append(ws)
    if not masks:
        return np.zeros((0, k), dtype=bool), np.zeros(0)
    return np.concatenate(masks), np.concatenate(weights)


def constrained_shap_solve(masks: np.ndarray, values: np.ndarray, weights: np.ndarray, f_full: float,
                           f_empty: float) -> np.ndarray:
    """Weighted least squares ``values - f_empty ~ masks @ phi`` subject to
    ``sum(phi) = f_full - f_empty``, solved by eliminating the last player (shap's method)."""
    z = np.asarray(masks, dtype=np.float64)
    k = z.shape[1]
    total = f_full - f_empty
    if k == 1:
        return np.array([total])
    y = np.asarray(values, dtype=np.float64) - f_empty - z[:, -1] * total
    X = z[:, :-1] - z[:, -1:]
    sw = np.sqrt(np.asarray(weights, dtype=np.float64))
    head, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    return np.append(head, total - head.sum())


@register(aliases=("shap", "kernelshap"))
class KernelShap(Explainer):
    name = "kernel_shap"
    label = "Kernel SHAP"
    signed = True
    slow = True
    params = (
        Param("num_samples", int, 500, "coalitions evaluated per explanation", min=2, max=20000),
        *SUPERPIXEL_PARAMS,
        Param("seed", int, 0, "random seed for the coalition sampling", min=0, max=SEED_MAX),
    )
    description = "Shapley values of superpixels for the class probability (kernel-weighted regression)."

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        cfg = self.config
        x, segments, fill = prepare_superpixels(self, x)
        n = x.shape[0]
        maps, values, checks = [], [], []
        self.report(0.0)
        for i in range(n):
            k = int(segments[i].max()) + 1
            rng = np.random.default_rng(cfg["seed"])  # same draws alone or in a batch
            masks, kw = shapley_coalitions(k, cfg["num_samples"], rng)
            ends = np.stack([np.ones(k, dtype=bool), np.zeros(k, dtype=bool)])
            y = coalition_scores(
                self, x[i], fill[i], segments[i], np.concatenate([ends, masks]), int(targets[i]),
                progress_from=i / n, progress_to=(i + 1) / n,
            )
            f_full, f_empty, v = float(y[0]), float(y[1]), y[2:]
            phi = constrained_shap_solve(masks, v, kw, f_full, f_empty)
            resid = v - f_empty - masks.astype(np.float64) @ phi
            values.append(phi.astype(np.float32))
            maps.append(torch.from_numpy(phi.astype(np.float32)[segments[i]]))
            checks.append(
                {
                    "num_superpixels": k,
                    "coalitions": len(masks),
                    "probability": f_full,
                    "probability_all_hidden": f_empty,
                    "efficiency_error": abs(float(phi.sum()) - (f_full - f_empty)),
                    "fit_rmse": float(np.sqrt(kw @ resid**2 / kw.sum())) if len(masks) else 0.0,
                }
            )
        self.report(1.0)
        return Attribution(maps=torch.stack(maps), checks=checks, segments=segments, weights=values)
