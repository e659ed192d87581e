"""Statistics primitives of the audit metrics: bootstrap means, the permutation gap test, Holm's correction,
the bias score. They return typed values (:class:`~biasscope.audit.metric_values.Gap`,
:class:`~biasscope.audit.metric_values.BiasScore`); :func:`gap_test` and :func:`bias_score` keep their
dict results for callers outside the audit (face verification).

Randomness: every function takes a seed (or a generator) and draws in a fixed order, so results are
reproducible bit for bit; changing the order of draws changes every interval of every stored run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .metric_options import MetricsOptions, effect_kind
from .metric_values import BiasScore, Gap, Interval, MeanCI
from .model_metrics import ModelMetrics

__all__ = ["GapTests", "bias_score", "bootstrap_means", "estimate_bias_score", "estimate_gap", "finite", "gap_test",
           "holm_adjust", "mean_ci", "quantiles"]


def quantiles(confidence: float) -> tuple[float, float]:
    """The lower and upper quantile of a two-sided percentile interval at ``confidence``."""
    return ((1 - confidence) / 2, 1 - (1 - confidence) / 2)


def _interval(draws: np.ndarray, q: tuple[float, float]) -> Interval:
    return (float(np.quantile(draws, q[0])), float(np.quantile(draws, q[1])))


def bootstrap_means(values: np.ndarray, idx: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Bootstrap means of ``values[idx]`` (resampling within the group): ``(n_boot,)``."""
    v = values[idx]
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(len(v), 1))
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        draw = rng.integers(0, len(v), size=(b, len(v)))
        out[s : s + b] = v[draw].mean(axis=1)
    return out


def mean_ci(values: np.ndarray, idx: np.ndarray, rng: np.random.Generator, n_boot: int,
            confidence: float) -> MeanCI:
    """The mean of ``values[idx]`` with a percentile bootstrap interval (``None`` when ``idx`` is empty)."""
    if idx.size == 0:
        return MeanCI(0, None, (None, None))
    b = bootstrap_means(values, idx, rng, n_boot)
    return MeanCI(int(idx.size), float(values[idx].mean()), _interval(b, quantiles(confidence)))


def _perm_ranges(values: np.ndarray, codes: np.ndarray, n_groups: int, rng: np.random.Generator,
                 n_perm: int) -> np.ndarray:
    """Range (max - min) of group means under ``n_perm`` random permutations of the group codes."""
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    out = np.empty(n_perm)
    n = len(values)
    chunk = max(1, 2_000_000 // max(n, 1))
    for s in range(0, n_perm, chunk):
        b = min(chunk, n_perm - s)
        perm = rng.permuted(np.tile(codes, (b, 1)), axis=1)
        flat = (perm + n_groups * np.arange(b)[:, None]).ravel()
        sums = np.bincount(flat, weights=np.tile(values, b), minlength=b * n_groups).reshape(b, n_groups)
        means = sums / counts
        out[s : s + b] = means.max(axis=1) - means.min(axis=1)
    return out


def estimate_gap(
    values: Sequence[float],
    groups: Sequence,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    signed: bool = False,
) -> Gap | None:
    """Gap in the mean of ``values`` between groups (NaN values ignored), as an untested-for-Holm :class:`Gap`.

    The highest and lowest group, ``difference = mean(high) - mean(low)`` and ``ratio = mean(low) /
    mean(high)``, each with a percentile bootstrap interval (images resampled within each group, the pair
    held fixed), and the permutation p-value of the range over groups. The ratio is ``None`` for signed
    values or a higher mean of 0, and its interval is ``(None, None)`` unless the higher group's own
    interval excludes 0 (``ratio_note`` says why). ``degenerate`` names a comparison with nothing to
    compare (both groups 0 on every image). ``None`` when fewer than two groups have data.
    """
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups).astype(str)
    keep = ~np.isnan(v)
    v, g = v[keep], g[keep]
    names, codes = np.unique(g, return_inverse=True)
    if len(names) < 2:
        return None
    means = np.array([v[codes == k].mean() for k in range(len(names))])
    hi, lo = int(np.argmax(means)), int(np.argmin(means))
    if hi == lo:
        hi, lo = 0, 1
    rng = np.random.default_rng(seed)
    b_hi = bootstrap_means(v, np.flatnonzero(codes == hi), rng, n_boot)
    b_lo = bootstrap_means(v, np.flatnonzero(codes == lo), rng, n_boot)
    q = quantiles(confidence)
    obs_range = float(means[hi] - means[lo])
    perm = _perm_ranges(v, codes, len(names), rng, n_perm)
    p = (1.0 + float(np.sum(perm >= obs_range - 1e-12))) / (1.0 + n_perm)
    pair = np.isin(codes, [hi, lo])
    degenerate = "both groups are 0 on every image" if not np.any(v[pair]) else None
    ratio: float | None = None
    ratio_ci: Interval = (None, None)
    ratio_note = None
    if signed or means[lo] < 0:
        ratio_note = "no ratio: the values are signed"
    elif means[hi] <= 0:
        ratio_note = "no ratio: the higher group's mean is 0"
    else:
        ratio = float(means[lo] / means[hi])
        if float(np.quantile(b_hi, q[0])) <= 0:
            ratio_note = "no ratio interval: the higher group's interval reaches 0"
        else:
            ok = b_hi > 0  # draws with a zero denominator lie beyond the interval's tail; leave them out
            ratio_ci = _interval(b_lo[ok] / b_hi[ok], q)
    return Gap(high_group=str(names[hi]), low_group=str(names[lo]), high=float(means[hi]), low=float(means[lo]),
               difference=obs_range, difference_ci=_interval(b_hi - b_lo, q), ratio=ratio, ratio_ci=ratio_ci,
               ratio_note=ratio_note, degenerate=degenerate, p_value=p, n_perm=n_perm,
               n={str(names[k]): int(np.sum(codes == k)) for k in range(len(names))})


def gap_test(values: Sequence[float], groups: Sequence, *, n_boot: int = 1000, n_perm: int = 1000,
             confidence: float = 0.95, seed: int = 0, signed: bool = False) -> dict | None:
    """:func:`estimate_gap` as a dict (NaN for a missing ratio or ratio interval); ``None`` with < 2 groups."""
    gap = estimate_gap(values, groups, n_boot=n_boot, n_perm=n_perm, confidence=confidence, seed=seed,
                       signed=signed)
    return gap.test_json() if gap else None


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def estimate_bias_score(
    df: pd.DataFrame,
    group: str,
    stereotypical: Sequence[str],
    *,
    value: str = "p_true",
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BiasScore | None:
    """Mean ``value`` on stereotypical minus atypical images, with a bootstrap CI and p-value.

    ``stereotypical`` cells are ``"label:group value"``. Only labels named there take part; every
    other group of such a label is atypical. The bootstrap resamples within each label x group
    cell; the permutation test shuffles the stereotypical flag within each label. ``None`` when the
    cells given leave no stereotypical or no atypical image.
    """
    cells: set[tuple[str, str]] = set()
    for s in stereotypical:
        lab, sep, grp = s.partition(":")
        if not sep:
            raise ValueError(f"stereotypical cell {s!r}: expected LABEL:GROUP")
        cells.add((lab.strip(), grp.strip()))
    labels = {lab for lab, _ in cells}
    sub = df[df["label"].isin(labels)]
    sub = sub[~sub[value].isna()]
    if sub.empty:
        return None
    stereo = np.array([(lab, str(gv)) in cells for lab, gv in zip(sub["label"], sub[group])])
    if stereo.all() or not stereo.any():
        return None
    v = sub[value].to_numpy(dtype=np.float64)
    lab_arr = sub["label"].to_numpy().astype(str)
    cell_keys = np.char.add(np.char.add(lab_arr, "\x00"), sub[group].to_numpy().astype(str))
    obs = float(v[stereo].mean() - v[~stereo].mean())
    rng = np.random.default_rng(seed)
    # bootstrap: resample inside each cell (cell sizes fixed), then pooled means
    sums_s = np.zeros(n_boot)
    sums_a = np.zeros(n_boot)
    for key in np.unique(cell_keys):
        idx = np.flatnonzero(cell_keys == key)
        bm = bootstrap_means(v, idx, rng, n_boot) * len(idx)
        if stereo[idx[0]]:
            sums_s += bm
        else:
            sums_a += bm
    boot = sums_s / stereo.sum() - sums_a / (~stereo).sum()
    # permutation: shuffle the flag within each label
    flags = np.tile(stereo, (n_perm, 1))
    for lab in np.unique(lab_arr):
        idx = np.flatnonzero(lab_arr == lab)
        flags[:, idx] = rng.permuted(flags[:, idx], axis=1)
    ns, na = stereo.sum(), (~stereo).sum()
    perm_stats = (flags @ v) / ns - ((~flags) @ v) / na
    p = (1.0 + float(np.sum(np.abs(perm_stats) >= abs(obs) - 1e-12))) / (1.0 + n_perm)
    lo, hi = _interval(boot, quantiles(confidence))
    return BiasScore(group=group, stereotypical=sorted(f"{a}:{b}" for a, b in cells), value=value, score=obs,
                     ci=(lo, hi), p_value=p, stereotypical_mean=float(v[stereo].mean()),
                     atypical_mean=float(v[~stereo].mean()), n_stereotypical=int(ns), n_atypical=int(na),
                     significant=bool((lo > 0 or hi < 0) and p < 0.05))


def bias_score(df: pd.DataFrame, group: str, stereotypical: Sequence[str], *, value: str = "p_true",
               n_boot: int = 1000, n_perm: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict | None:
    """:func:`estimate_bias_score` as a dict (``None`` without stereotypical or atypical images)."""
    bs = estimate_bias_score(df, group, stereotypical, value=value, n_boot=n_boot, n_perm=n_perm,
                             confidence=confidence, seed=seed)
    return bs.to_json() if bs else None


def finite(x: float | None) -> float | None:
    """``x`` as a Python float, ``None`` when missing or not finite."""
    return None if x is None or not math.isfinite(x) else float(x)


# ---------------------------------------------------------------------------------------- a model's gaps
@dataclass(frozen=True)
class GapSample:
    """What re-testing a gap with more permutations needs: its values, groups, seed and signedness."""

    key: tuple[str, str, str]
    values: np.ndarray
    groups: np.ndarray
    seed: int
    signed: bool


class GapTests:
    """Runs the gap tests of one model in order (each attempt takes the next seed), keeps their samples,
    and judges them all at the end: permutation resolution raised for Holm, Holm's adjustment, status."""

    def __init__(self, opts: MetricsOptions) -> None:
        self.opts = opts
        self.offset = 0
        self.samples: list[GapSample] = []

    def run(self, values: np.ndarray, groups: np.ndarray, fl: tuple[float | None, float | None], *, metric: str,
            grouping: str, scope: str) -> Gap | None:
        """Test one gap (the next seed, taken even when fewer than two groups have data); ``fl`` is fairlearn's
        ``(difference, ratio)`` for it. ``None`` when it cannot be tested."""
        o = self.opts
        self.offset += 1
        seed = o.seed + self.offset
        signed = effect_kind(metric) == "removal"
        gap = estimate_gap(values, groups, n_boot=o.n_boot, n_perm=o.n_perm, confidence=o.confidence, seed=seed,
                           signed=signed)
        if gap is None:
            return None
        gap = replace(gap, fairlearn_difference=fl[0], fairlearn_ratio=fl[1], metric=metric, grouping=grouping,
                      scope=scope)
        self.samples.append(GapSample(gap.key, values, groups, seed, signed))
        return gap

    def _refined(self, gap: Gap, s: GapSample, need: int) -> Gap:
        """Give the permutation test enough resolution for Holm's correction.

        With ``m`` tests, a gap can only survive Holm at level ``alpha`` if its p-value can reach
        ``alpha / m``; the smallest permutation p-value is ``1 / (n_perm + 1)``. Gaps whose p-value sits at
        that floor are re-tested with ``need = ceil(2 m / alpha)`` permutations (the bootstrap stays the same).
        """
        if gap.n_perm >= need or gap.p_value > 1.5 / (gap.n_perm + 1):
            return gap
        o = self.opts
        r = estimate_gap(s.values, s.groups, n_boot=o.n_boot, n_perm=need, confidence=o.confidence, seed=s.seed,
                         signed=s.signed)
        return replace(gap, p_value=r.p_value, n_perm=r.n_perm) if r is not None else gap

    def judge(self, mm: ModelMetrics) -> ModelMetrics:
        """``mm`` with every gap re-tested where needed, Holm-adjusted over the model and given its status."""
        gaps = mm.all_gaps()
        if [g.key for g in gaps] != [s.key for s in self.samples]:
            raise RuntimeError("internal error: the gaps of the metrics are not the gaps tested")
        o = self.opts
        need = min(200_000, math.ceil(2 * len(gaps) / o.alpha))
        gaps = [self._refined(g, s, need) for g, s in zip(gaps, self.samples)]
        adj = holm_adjust([g.p_value for g in gaps]) if gaps else []
        judged = iter([g.judged(pa, o.min_effect[effect_kind(g.metric)], o.alpha) for g, pa in zip(gaps, adj)])

        def swap(old: Gap) -> Gap:
            new = next(judged)
            if new.key != old.key:
                raise RuntimeError("internal error: gaps visited out of test order")
            return new

        return mm.map_gaps(swap)
