"""Group metrics of an audit: fairlearn's MetricFrame for the numbers, resampling for the doubt.

Point estimates per group and per label x group come from :class:`fairlearn.metrics.MetricFrame`
(and ``demographic_parity_difference`` / ``equalized_odds_difference``). Around them this module
adds what fairlearn does not give: a stratified bootstrap confidence interval for each gap (the
difference and ratio between the highest and the lowest group, resampling images within each group),
a permutation-test p-value (shuffling group labels; the statistic is the range over groups, so the
test accounts for picking the extreme pair), Holm's correction over all gaps of a model, small-group
warnings, and the bias score (stereotypical minus atypical confidence in the true label).

A gap is *flagged* only when it is real and matters: its interval excludes zero, its Holm-adjusted
p-value is below ``alpha`` AND its difference is at least the minimum effect the user set for that kind
of metric (:data:`DEFAULT_MIN_EFFECT`). Degenerate comparisons (both groups 0 on every image) are
reported as such and never flagged; a ratio is given an interval only when the higher group's interval
excludes 0.

Region findings (attribution share, share / area, removal effect) and explanation quality (deletion /
insertion AUC, IG relative completeness error) are computed per label x group cell, over the images of that
label that have the region (or the value), with the group difference tested within each label, and
split by correct vs wrong prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_MIN_EFFECT",
    "MetricsOptions",
    "bias_score",
    "compute_model_metrics",
    "effect_kind",
    "gap_test",
    "holm_adjust",
    "mean_value",
]

MSG_SMALL_GROUP = "{grouping} group {group!r} has only {n} image(s) (< {min}); its metrics are uncertain"
MSG_SMALL_CELL = "cell {label} x {group} has only {n} image(s) (< {min}); its metrics are uncertain"

#: smallest difference between groups worth flagging, per kind of metric (absolute, same unit as the metric):
#: accuracy (top-1/top-k), probability (mean true-label probability, concept scores, bias score),
#: rate (selection rate, FPR, FNR), share (attribution share of a region), removal (change of the true
#: label's probability when a region is removed), faithfulness (deletion/insertion AUC, IG relative completeness
#: error, rank agreement between methods)
DEFAULT_MIN_EFFECT: dict[str, float] = {
    "accuracy": 0.05,
    "probability": 0.05,
    "rate": 0.05,
    "share": 0.05,
    "removal": 0.05,
    "faithfulness": 0.05,
}


def effect_kind(metric: str) -> str:
    """The kind of a metric name, which selects its minimum effect (see :data:`DEFAULT_MIN_EFFECT`)."""
    if metric.startswith("share:"):
        return "share"
    if metric.startswith("ratio:"):
        return "share"
    if metric.startswith("removal:"):
        return "removal"
    if metric.startswith(("faith:", "agree:")):
        return "faithfulness"
    if metric.startswith("accuracy"):
        return "accuracy"
    if metric in ("selection_rate", "fpr", "fnr"):
        return "rate"
    return "probability"


@dataclass
class MetricsOptions:
    """How findings are computed (can change without re-running the models)."""

    n_boot: int = 1000
    n_perm: int = 1000
    seed: int = 0
    confidence: float = 0.95
    alpha: float = 0.05
    min_group_size: int = 30
    #: stereotypical cells ``"label:group value"`` of ``bias_group`` (default: the first group)
    stereotypical: list[str] = field(default_factory=list)
    bias_group: str | None = None
    #: leave images with any of these face quality flags out of every metric (needs face parts)
    exclude_flags: list[str] = field(default_factory=list)
    #: minimum difference to flag, per kind of metric (missing kinds take :data:`DEFAULT_MIN_EFFECT`)
    min_effect: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_EFFECT))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.min_effect) - set(DEFAULT_MIN_EFFECT))
        if unknown:
            raise ValueError(f"minimum effect for unknown kind(s) {', '.join(unknown)}; "
                             f"kinds are {', '.join(DEFAULT_MIN_EFFECT)}")
        bad = [k for k, v in self.min_effect.items() if not (isinstance(v, int | float) and v >= 0)]
        if bad:
            raise ValueError(f"minimum effect of {', '.join(bad)} must be a number >= 0")
        self.min_effect = {**DEFAULT_MIN_EFFECT, **{k: float(v) for k, v in self.min_effect.items()}}

    def to_dict(self) -> dict:
        return asdict(self)


def mean_value(y_true: Sequence, y_pred: Sequence, values: Sequence[float]) -> float:
    """A MetricFrame metric: the NaN-ignoring mean of a per-image value (passed as sample param)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---------------------------------------------------------------------------------------- statistics
def _group_means_boot(values: np.ndarray, idx: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Bootstrap means of ``values[idx]`` (resampling within the group): ``(n_boot,)``."""
    v = values[idx]
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(len(v), 1))
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        draw = rng.integers(0, len(v), size=(b, len(v)))
        out[s : s + b] = v[draw].mean(axis=1)
    return out


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


def gap_test(
    values: Sequence[float],
    groups: Sequence,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    signed: bool = False,
) -> dict | None:
    """Gap in the mean of ``values`` between groups (NaN values ignored).

    Returns the highest and lowest group, ``difference = mean(high) - mean(low)`` and
    ``ratio = mean(low) / mean(high)``, each with a percentile bootstrap interval (images resampled
    within each group, the pair held fixed), and the permutation p-value of the range over groups.
    The ratio is ``None`` for signed values or a higher mean of 0, and its interval is ``None`` unless
    the higher group's own interval excludes 0 (``ratio_note`` says why). ``degenerate`` names a
    comparison with nothing to compare (both groups 0 on every image). ``None`` when fewer than two
    groups have data.
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
    b_hi = _group_means_boot(v, np.flatnonzero(codes == hi), rng, n_boot)
    b_lo = _group_means_boot(v, np.flatnonzero(codes == lo), rng, n_boot)
    q = ((1 - confidence) / 2, 1 - (1 - confidence) / 2)
    diffs = b_hi - b_lo
    obs_range = float(means[hi] - means[lo])
    perm = _perm_ranges(v, codes, len(names), rng, n_perm)
    p = (1.0 + float(np.sum(perm >= obs_range - 1e-12))) / (1.0 + n_perm)
    pair = np.isin(codes, [hi, lo])
    degenerate = "both groups are 0 on every image" if not np.any(v[pair]) else None
    ratio, ratio_ci, ratio_note = math.nan, [math.nan, math.nan], None
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
            ratios = b_lo[ok] / b_hi[ok]
            ratio_ci = [float(np.quantile(ratios, q[0])), float(np.quantile(ratios, q[1]))]
    return {
        "high_group": str(names[hi]),
        "low_group": str(names[lo]),
        "high": float(means[hi]),
        "low": float(means[lo]),
        "difference": obs_range,
        "difference_ci": [float(np.quantile(diffs, q[0])), float(np.quantile(diffs, q[1]))],
        "ratio": ratio,
        "ratio_ci": ratio_ci,
        "ratio_note": ratio_note,
        "degenerate": degenerate,
        "p_value": p,
        "n_perm": n_perm,
        "n": {str(names[k]): int(np.sum(codes == k)) for k in range(len(names))},
    }


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


def bias_score(
    df: pd.DataFrame,
    group: str,
    stereotypical: Sequence[str],
    *,
    value: str = "p_true",
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict | None:
    """Mean ``value`` on stereotypical minus atypical images, with a bootstrap CI and p-value.

    ``stereotypical`` cells are ``"label:group value"``. Only labels named there take part; every
    other group of such a label is atypical. The bootstrap resamples within each label x group
    cell; the permutation test shuffles the stereotypical flag within each label.
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
        bm = _group_means_boot(v, idx, rng, n_boot) * len(idx)
        if stereo[idx[0]]:
            sums_s += bm
        else:
            sums_a += bm
    boot = sums_s / stereo.sum() - sums_a / (~stereo).sum()
    q = ((1 - confidence) / 2, 1 - (1 - confidence) / 2)
    # permutation: shuffle the flag within each label
    perm_stats = np.empty(n_perm)
    flags = np.tile(stereo, (n_perm, 1))
    for lab in np.unique(lab_arr):
        idx = np.flatnonzero(lab_arr == lab)
        flags[:, idx] = rng.permuted(flags[:, idx], axis=1)
    ns, na = stereo.sum(), (~stereo).sum()
    perm_stats = (flags @ v) / ns - ((~flags) @ v) / na
    p = (1.0 + float(np.sum(np.abs(perm_stats) >= abs(obs) - 1e-12))) / (1.0 + n_perm)
    lo, hi = float(np.quantile(boot, q[0])), float(np.quantile(boot, q[1]))
    return {
        "group": group,
        "stereotypical": sorted(f"{a}:{b}" for a, b in cells),
        "value": value,
        "score": obs,
        "ci": [lo, hi],
        "p_value": p,
        "stereotypical_mean": float(v[stereo].mean()),
        "atypical_mean": float(v[~stereo].mean()),
        "n_stereotypical": int(ns),
        "n_atypical": int(na),
        "significant": bool((lo > 0 or hi < 0) and p < 0.05),
    }


# ---------------------------------------------------------------------------------------- tables
def _frame(metrics: dict, y_true, y_pred, sens, params: dict, control=None):
    from fairlearn.metrics import MetricFrame

    return MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=sens,
                       control_features=control, sample_params=params or None)


def _records(by_group: pd.DataFrame) -> dict:
    out: dict = {}
    for key, row in by_group.iterrows():
        d = {k: (_finite(float(v)) if not isinstance(v, str) else v) for k, v in row.items()}
        if "n" in d and d["n"] is not None:
            d["n"] = int(d["n"])
        if isinstance(key, tuple):
            out.setdefault(str(key[0]), {})[str(key[1])] = d
        else:
            out[str(key)] = d
    return out


def _fl_gap(by_group: pd.Series, difference: float, ratio: float) -> tuple[float | None, float | None]:
    """fairlearn's between-groups difference and ratio, over the groups where the metric is defined."""
    if by_group.isna().any():
        col = by_group.dropna()
        if len(col) < 2:
            return None, None
        hi = float(col.max())
        return float(hi - col.min()), (float(col.min() / hi) if hi > 0 else None)
    return _finite(float(difference)), _finite(float(ratio))


def _on_binary(fn):
    """Wrap a fairlearn binary metric so it reads a concept's one-vs-rest labels from sample params."""

    def metric(y_true, y_pred, yt, yp) -> float:
        return float(fn(np.asarray(yt), np.asarray(yp)))

    metric.__name__ = getattr(fn, "__name__", "metric")
    return metric


def _group_cis(df: pd.DataFrame, sens: pd.Series, cols: dict[str, str], opts: MetricsOptions) -> dict:
    """Percentile bootstrap interval of each group's mean, per metric: ``{group: {metric: [lo, hi]}}``."""
    rng = np.random.default_rng(opts.seed)
    q = ((1 - opts.confidence) / 2, 1 - (1 - opts.confidence) / 2)
    g = sens.to_numpy().astype(str)
    out: dict = {}
    for gval in np.unique(g):
        out[str(gval)] = {}
        for k, c in cols.items():
            v = df[c].to_numpy(dtype=np.float64)
            idx = np.flatnonzero((g == gval) & ~np.isnan(v))
            if idx.size == 0:
                out[str(gval)][k] = [None, None]
                continue
            b = _group_means_boot(v, idx, rng, opts.n_boot)
            out[str(gval)][k] = [float(np.quantile(b, q[0])), float(np.quantile(b, q[1]))]
    return out


def _gap(values, groups, opts: MetricsOptions, fl: tuple[float | None, float | None], seed_offset: int,
         metric: str = "") -> dict | None:
    signed = effect_kind(str(metric)) == "removal"
    res = gap_test(values, groups, n_boot=opts.n_boot, n_perm=opts.n_perm, confidence=opts.confidence,
                   seed=opts.seed + seed_offset, signed=signed)
    if res is None:
        return None
    res["fairlearn_difference"], res["fairlearn_ratio"] = fl
    res["_inputs"] = (values, groups, opts.seed + seed_offset, signed)  # to refine the p-value; dropped before output
    return res


def _refine_pvalues(gaps: list[dict], opts: MetricsOptions) -> None:
    """Give the permutation test enough resolution for Holm's correction.

    With ``m`` tests, a gap can only survive Holm at level ``alpha`` if its p-value can reach
    ``alpha / m``; the smallest permutation p-value is ``1 / (n_perm + 1)``. Gaps whose p-value sits at
    that floor are re-tested with ``ceil(2 m / alpha)`` permutations (the bootstrap stays the same).
    """
    m = len(gaps)
    need = min(200_000, math.ceil(2 * m / opts.alpha))
    for g in gaps:
        if g["n_perm"] >= need or g["p_value"] > 1.5 / (g["n_perm"] + 1):
            continue
        values, groups, seed, signed = g["_inputs"]
        r = gap_test(values, groups, n_boot=opts.n_boot, n_perm=need, confidence=opts.confidence, seed=seed,
                     signed=signed)
        if r is not None:
            g["p_value"], g["n_perm"] = r["p_value"], r["n_perm"]


def compute_model_metrics(
    df: pd.DataFrame,
    *,
    groups: Sequence[str],
    labels: Sequence[str],
    methods: Sequence[str] = (),
    regions: Sequence[str] = (),
    options: MetricsOptions | None = None,
) -> dict:
    """All findings for one model from its per-image table (rows with ``status == 'ok'``).

    Expected columns: ``label``, the group columns, ``pred_label``, ``correct``, ``correct_top1``,
    ``correct_topk``, ``p_true``, ``predicted:<label>``, ``score:<label>``, and for regions
    ``share:<method>:<region>``, ``ratio:<method>:<region>``, ``removal:<region>``.
    """
    from fairlearn.metrics import (
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_negative_rate,
        false_positive_rate,
        selection_rate,
    )

    opts = options or MetricsOptions()
    df = df.reset_index(drop=True)
    out: dict = {"n_images": len(df), "groupings": {}, "warnings": []}
    if df.empty:
        return out
    out["overall"] = {
        "n": len(df),
        "accuracy": float(df["correct"].mean()),
        "accuracy_top1": float(df["correct_top1"].mean()),
        "accuracy_topk": float(df["correct_topk"].mean()),
        "mean_p_true": float(df["p_true"].mean()),
    }
    base_metrics = {"n": count, "accuracy": mean_value, "accuracy_top1": mean_value,
                    "accuracy_topk": mean_value, "mean_p_true": mean_value}
    base_cols = {"accuracy": "correct", "accuracy_top1": "correct_top1", "accuracy_topk": "correct_topk",
                 "mean_p_true": "p_true"}
    region_cols: dict[str, str] = {}
    for m in methods:
        for r in regions:
            for kind in ("share", "ratio"):
                c = f"{kind}:{m}:{r}"
                if c in df:
                    region_cols[c] = c
    for r in regions:
        if f"removal:{r}" in df:
            region_cols[f"removal:{r}"] = f"removal:{r}"
    faith_cols = [f"faith:{m}:{k}" for m in methods for k in FAITH_KEYS if f"faith:{m}:{k}" in df]
    faith_cols += [f"agree:{a}~{b}" for i, a in enumerate(methods) for b in methods[i + 1:] if f"agree:{a}~{b}" in df]

    groupings: dict[str, pd.Series] = {g: df[g].astype(str) for g in groups}
    if len(groups) > 1:
        name = " x ".join(groups)
        groupings[name] = df[list(groups)].astype(str).agg(" & ".join, axis=1)
    y_true = df["label"].astype(str).to_numpy()
    y_pred = df["pred_label"].astype(str).to_numpy()
    label_series = pd.Series(y_true, name="label")
    all_gaps: list[dict] = []
    seed_offset = 0

    def next_seed() -> int:
        nonlocal seed_offset
        seed_offset += 1
        return seed_offset

    concept_labels = [lab for lab in labels if f"predicted:{lab}" in df]
    concept_bin = {lab: ((y_true == lab).astype(int), df[f"predicted:{lab}"].astype(bool).to_numpy().astype(int))
                   for lab in concept_labels}
    # one MetricFrame per grouping for everything (fairlearn's frames are costly to build), one with control features
    all_metrics: dict = dict(base_metrics)
    all_params: dict = {k: {"values": df[c].to_numpy(dtype=np.float64)} for k, c in base_cols.items()}
    for c in region_cols:
        all_metrics[c] = mean_value
        all_params[c] = {"values": df[c].to_numpy(dtype=np.float64)}
    ctrl_metrics, ctrl_params = dict(all_metrics), dict(all_params)
    rates = (("selection_rate", selection_rate), ("fpr", false_positive_rate), ("fnr", false_negative_rate))
    for lab, (yt, yp) in concept_bin.items():
        for k, fn in rates:
            all_metrics[f"concept:{lab}:{k}"] = _on_binary(fn)
            all_params[f"concept:{lab}:{k}"] = {"yt": yt, "yp": yp}
        all_metrics[f"concept:{lab}:mean_score"] = mean_value
        all_params[f"concept:{lab}:mean_score"] = {"values": df[f"score:{lab}"].to_numpy(dtype=np.float64)}

    for gname, sens in groupings.items():
        sens = pd.Series(sens.to_numpy(), name=gname)
        sv = sens.to_numpy()
        mf = _frame(all_metrics, y_true, y_pred, sens, all_params)
        bg = mf.by_group.copy()
        diff, ratio = mf.difference(), mf.ratio()
        for lab, (yt, _) in concept_bin.items():  # fairlearn reports 0 for a rate with an empty denominator
            npos = pd.Series(yt).groupby(sv).sum()
            for gval in bg.index:
                if npos.get(gval, 0) == (sv == gval).sum():
                    bg.loc[gval, f"concept:{lab}:fpr"] = np.nan
                if npos.get(gval, 0) == 0:
                    bg.loc[gval, f"concept:{lab}:fnr"] = np.nan

        def fl(name: str, _bg: pd.DataFrame = bg, _d: pd.Series = diff, _r: pd.Series = ratio):
            return _fl_gap(_bg[name], _d[name], _r[name])

        entry: dict = {"by_group": _records(bg[list(base_metrics)]), "gaps": {}, "by_label": {}, "concepts": {},
                       "regions": {}, "by_group_ci": _group_cis(df, sens, base_cols, opts)}
        for gval, n in bg["n"].items():
            if n < opts.min_group_size:
                out["warnings"].append(MSG_SMALL_GROUP.format(grouping=gname, group=gval, n=int(n),
                                                              min=opts.min_group_size))
        for k, c in base_cols.items():
            gap = _gap(df[c].to_numpy(dtype=np.float64), sv, opts, fl(k), next_seed())
            if gap:
                gap.update(metric=k, grouping=gname, scope="all")
                entry["gaps"][k] = gap
                all_gaps.append(gap)
        # per label x group (stereotypical vs atypical cells): fairlearn control features
        mfl = _frame(ctrl_metrics, y_true, y_pred, sens, ctrl_params, control=label_series)
        cells = _records(mfl.by_group[list(base_metrics)])
        diff_l, ratio_l = mfl.difference(), mfl.ratio()
        for lab in labels:
            if lab not in cells:
                continue
            sub = np.flatnonzero(y_true == lab)
            lab_entry: dict = {"by_group": cells[lab], "gaps": {}}
            for gval, d in cells[lab].items():
                if d.get("n") is not None and d["n"] < opts.min_group_size:
                    out["warnings"].append(MSG_SMALL_CELL.format(label=lab, group=gval, n=d["n"],
                                                                 min=opts.min_group_size))
            for k, c in base_cols.items():
                flv = (_finite(float(diff_l.loc[lab, k])), _finite(float(ratio_l.loc[lab, k])))
                gap = _gap(df[c].to_numpy(dtype=np.float64)[sub], sv[sub], opts, flv, next_seed())
                if gap:
                    gap.update(metric=k, grouping=gname, scope=f"label={lab}")
                    lab_entry["gaps"][k] = gap
                    all_gaps.append(gap)
            entry["by_label"][lab] = lab_entry
        # per concept: selection rate, FPR, FNR (one vs rest) and fairlearn's parity differences
        for lab, (yt, yp) in concept_bin.items():
            cols = {f"concept:{lab}:{k}": k for k in ("selection_rate", "fpr", "fnr", "mean_score")}
            c_entry: dict = {"by_group": _records(bg[list(cols)].rename(columns=cols)), "gaps": {}}
            every = np.ones_like(yt, dtype=bool)
            tests = {
                "selection_rate": (yp.astype(float), every),
                "fpr": (yp.astype(float), yt == 0),
                "fnr": (1.0 - yp, yt == 1),
                "mean_score": (df[f"score:{lab}"].to_numpy(dtype=np.float64), every),
            }
            for k, (vals, mask) in tests.items():
                gap = _gap(vals[mask], sv[mask], opts, fl(f"concept:{lab}:{k}"), next_seed())
                if gap:
                    gap.update(metric=k, grouping=gname, scope=f"concept={lab}")
                    c_entry["gaps"][k] = gap
                    all_gaps.append(gap)
            c_entry["demographic_parity_difference"] = _finite(
                float(demographic_parity_difference(yt, yp, sensitive_features=sv)))
            c_entry["equalized_odds_difference"] = (
                _finite(float(equalized_odds_difference(yt, yp, sensitive_features=sv)))
                if 0 < yt.sum() < len(yt) else None)
            entry["concepts"][lab] = c_entry
        # regions and explanation quality: per label x group cell, over the images that have the value
        if region_cols:
            entry["regions"] = {"by_group": _records(bg[list(region_cols)]),
                                "by_label": _records(mfl.by_group[list(region_cols)]),
                                "cells": _cells(df, list(region_cols), sv, y_true, labels, opts,
                                                (mfl.by_group, diff_l, ratio_l), gname,
                                                next_seed, all_gaps, test=lambda c: not c.startswith("ratio:"))}
        if faith_cols:
            entry["faithfulness"] = {"cells": _cells(df, faith_cols, sv, y_true, labels, opts, None, gname,
                                                     next_seed, all_gaps, test=lambda c: True)}
        out["groupings"][gname] = entry

    _refine_pvalues(all_gaps, opts)
    adj = holm_adjust([g["p_value"] for g in all_gaps]) if all_gaps else []
    for g, pa in zip(all_gaps, adj):
        g.pop("_inputs", None)
        g["p_adjusted"] = pa
        g["min_effect"] = opts.min_effect[effect_kind(g["metric"])]
        g["status"] = _gap_status(g, opts)
        g["flagged"] = g["status"] == "flagged"
        g.setdefault("label", g["scope"].split("=", 1)[1] if g["scope"].startswith("label=") else None)
        g["n_images"] = int(sum(g["n"].values()))
    out["flagged"] = [
        {k: g.get(k) for k in ("grouping", "scope", "label", "metric", "high_group", "low_group", "high", "low",
                               "difference", "difference_ci", "ratio", "ratio_ci", "p_value", "p_adjusted",
                               "min_effect", "n", "n_images")}
        for g in all_gaps if g["flagged"]
    ]
    out["n_not_flagged"] = {s: sum(g["status"] == s for g in all_gaps)
                            for s in ("not significant", "too small", "degenerate")}
    out["n_tests"] = len(all_gaps)
    if opts.stereotypical:
        bg_col = opts.bias_group or (groups[0] if groups else None)
        if bg_col is None or bg_col not in df:
            raise ValueError(f"bias score needs a group column; {bg_col!r} is not one")
        out["bias_score"] = bias_score(df, bg_col, opts.stereotypical, n_boot=opts.n_boot, n_perm=opts.n_perm,
                                       confidence=opts.confidence, seed=opts.seed)
        if out["bias_score"]:
            bs = out["bias_score"]
            bs["min_effect"] = opts.min_effect["probability"]
            bs["flagged"] = bool(bs["significant"] and abs(bs["score"]) >= bs["min_effect"])
    out["warnings"] = list(dict.fromkeys(out["warnings"]))
    out["warning_groups"] = group_warnings(out["warnings"])
    return out


def _gap_status(g: dict, opts: MetricsOptions) -> str:
    """``flagged``, ``degenerate``, ``not significant`` or ``too small`` (significant, below the minimum effect)."""
    if g.get("degenerate"):
        return "degenerate"
    lo = g["difference_ci"][0]
    if not (g["difference"] > 0 and lo is not None and lo > 0 and g["p_adjusted"] < opts.alpha):
        return "not significant"
    if g["difference"] < g["min_effect"]:
        return "too small"
    return "flagged"


def group_warnings(warnings: Sequence[str]) -> list[dict]:
    """Warnings grouped by kind, each kind once: ``[{"kind", "title", "items"}]`` (small groups, small cells, other)."""
    kinds = (("small_group", " group ", "Small groups (metrics uncertain)"),
             ("small_cell", "cell ", "Small label x group cells (metrics uncertain)"))
    groups: dict[str, dict] = {}
    for w in dict.fromkeys(warnings):
        kind, title = "other", "Other warnings"
        for k, marker, t in kinds:
            if "image(s) (<" in w and (w.startswith(marker.strip() + " ") if k == "small_cell" else marker in w):
                kind, title = k, t
                break
        item = w.split(" (<", 1)[0] if kind != "other" else w
        groups.setdefault(kind, {"kind": kind, "title": title, "items": []})["items"].append(item)
    return list(groups.values())


#: per-image explanation-quality columns ``faith:<method>:<key>``
FAITH_KEYS = ("deletion_auc", "insertion_auc", "completeness_relative")


def _mean_ci(v: np.ndarray, idx: np.ndarray, rng: np.random.Generator, opts: MetricsOptions) -> dict:
    """``{"n", "mean", "ci"}`` of ``v[idx]`` with a percentile bootstrap interval (``None`` when empty)."""
    if idx.size == 0:
        return {"n": 0, "mean": None, "ci": [None, None]}
    q = ((1 - opts.confidence) / 2, 1 - (1 - opts.confidence) / 2)
    b = _group_means_boot(v, idx, rng, opts.n_boot)
    return {"n": int(idx.size), "mean": float(v[idx].mean()),
            "ci": [float(np.quantile(b, q[0])), float(np.quantile(b, q[1]))]}


def _cells(df: pd.DataFrame, cols: Sequence[str], sv: np.ndarray, y_true: np.ndarray, labels: Sequence[str],
           opts: MetricsOptions, mfl: tuple | None, gname: str, next_seed: Callable[[], int], all_gaps: list[dict],
           test: Callable[[str], bool]) -> dict:
    """Per column, per label: each group's mean with n and interval over the label's images that have the
    value, the same split by correct vs wrong prediction, and the within-label group difference (tested
    when ``test(col)``; appended to ``all_gaps`` for Holm's correction). ``mfl`` is fairlearn's
    ``(by_group, difference, ratio)`` with the label as control feature, for the fairlearn columns.

    ``{col: {label: {"n_label", "n", "by_group": {g: {n, mean, ci}}, "by_outcome": {"correct"|"wrong":
    {g: {n, mean, ci}}}, "gap": gap or None}}}``
    """
    rng = np.random.default_rng(opts.seed + 104_729)
    correct = df["correct"].astype(bool).to_numpy()
    out: dict = {}
    for c in cols:
        v = df[c].to_numpy(dtype=np.float64)
        per_label: dict = {}
        for lab in labels:
            in_lab = y_true == lab
            has = in_lab & ~np.isnan(v)
            if not has.any():
                continue
            cell: dict = {"n_label": int(in_lab.sum()), "n": int(has.sum()), "by_group": {},
                          "by_outcome": {"correct": {}, "wrong": {}}, "gap": None}
            for gval in sorted({str(x) for x in sv[in_lab]}):
                ing = has & (sv == gval)
                cell["by_group"][gval] = _mean_ci(v, np.flatnonzero(ing), rng, opts)
                cell["by_outcome"]["correct"][gval] = _mean_ci(v, np.flatnonzero(ing & correct), rng, opts)
                cell["by_outcome"]["wrong"][gval] = _mean_ci(v, np.flatnonzero(ing & ~correct), rng, opts)
            if test(c):
                sub = np.flatnonzero(has)
                fl: tuple[float | None, float | None] = (None, None)
                if mfl is not None:
                    by, dif, rat = mfl
                    fl = _fl_gap(by.loc[lab][c], dif.loc[lab, c], rat.loc[lab, c])
                gap = _gap(v[sub], sv[sub], opts, fl, next_seed(), metric=c)
                if gap:
                    gap.update(metric=c, grouping=gname, scope=f"label={lab}", label=lab)
                    cell["gap"] = gap
                    all_gaps.append(gap)
            per_label[lab] = cell
        out[c] = per_label
    return out
