"""Group metrics of an audit: fairlearn's MetricFrame for the numbers, resampling for the doubt.

Point estimates per group and per label x group come from :class:`fairlearn.metrics.MetricFrame`
(and ``demographic_parity_difference`` / ``equalized_odds_difference``). Around them this module
adds what fairlearn does not give (the statistics are in :mod:`biasscope.audit.stats`): a stratified
bootstrap confidence interval for each gap (the difference and ratio between the highest and the lowest
group, resampling images within each group), a permutation-test p-value (shuffling group labels; the
statistic is the range over groups, so the test accounts for picking the extreme pair), Holm's
correction over all gaps of a model, small-group warnings, and the bias score (stereotypical minus
atypical confidence in the true label).

A gap is *flagged* only when it is real and matters: its interval excludes zero, its Holm-adjusted
p-value is below ``alpha`` AND its difference is at least the minimum effect the user set for that kind
of metric (:data:`DEFAULT_MIN_EFFECT`). Degenerate comparisons (both groups 0 on every image) are
reported as such and never flagged; a ratio is given an interval only when the higher group's interval
excludes 0.

Region findings (attribution share, share / area, removal effect) and explanation quality (deletion /
insertion AUC, IG relative completeness error) are computed per label x group cell, over the images of that
label that have the region (or the value), with the group difference tested within each label, and
split by correct vs wrong prediction.

:func:`compute_model_metrics` returns a typed :class:`~biasscope.audit.metric_values.ModelMetrics`;
its ``to_json()`` is the model's entry of metrics.json.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from .metric_options import DEFAULT_MIN_EFFECT, MetricsOptions, effect_kind, mean_value
from .metric_values import BASE_METRICS, ConceptRates, Gap, GroupStats, Interval, WarningGroup
from .model_metrics import CellMetric, ConceptMetrics, GroupingMetrics, LabelMetrics, ModelMetrics, RegionMetrics
from .stats import GapTests, bias_score, bootstrap_means, estimate_bias_score, finite, gap_test, holm_adjust
from .stats import mean_ci as _mean_ci
from .stats import quantiles as _quantiles

__all__ = [
    "DEFAULT_MIN_EFFECT",
    "FAITH_KEYS",
    "MetricsOptions",
    "bias_score",
    "compute_model_metrics",
    "effect_kind",
    "gap_test",
    "group_warnings",
    "holm_adjust",
    "mean_value",
]

MSG_SMALL_GROUP = "{grouping} group {group!r} has only {n} image(s) (< {min}); its metrics are uncertain"
MSG_SMALL_CELL = "cell {label} x {group} has only {n} image(s) (< {min}); its metrics are uncertain"

#: per-image explanation-quality columns ``faith:<method>:<key>``
FAITH_KEYS = ("deletion_auc", "insertion_auc", "completeness_relative")
#: the per-image column averaged by each base metric
_BASE_COLUMNS = {"accuracy": "correct", "accuracy_top1": "correct_top1", "accuracy_topk": "correct_topk",
                 "mean_p_true": "p_true"}
_CONCEPT_RATES = ("selection_rate", "fpr", "fnr", "mean_score")


def group_warnings(warnings: Sequence[str]) -> list[dict]:
    """Warnings grouped by kind, each kind once: ``[{"kind", "title", "items"}]`` (small groups, small cells, other)."""
    return [w.to_json() for w in WarningGroup.group(list(warnings))]


# ---------------------------------------------------------------------------------------- fairlearn tables
def _frame(metrics: dict, y_true, y_pred, sens, params: dict, control=None):
    from fairlearn.metrics import MetricFrame

    return MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=sens,
                       control_features=control, sample_params=params or None)


def _rows(by_group: pd.DataFrame) -> dict:
    """A MetricFrame table as ``{group: {column: value}}`` (``{label: {group: ...}}`` with a control feature);
    NaN -> ``None``, counts as ``int``."""
    out: dict = {}
    for key, row in by_group.iterrows():
        d = {k: (finite(float(v)) if not isinstance(v, str) else v) for k, v in row.items()}
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
    return finite(float(difference)), finite(float(ratio))


def _on_binary(fn):
    """Wrap a fairlearn binary metric so it reads a concept's one-vs-rest labels from sample params."""

    def metric(y_true, y_pred, yt, yp):
        return fn(np.asarray(yt), np.asarray(yp))

    metric.__name__ = getattr(fn, "__name__", "binary")
    return metric


# ---------------------------------------------------------------------------------------- assembling
class _Model:
    """One model's per-image table and what every grouping reads from it: columns, fairlearn metrics, tests."""

    def __init__(self, df: pd.DataFrame, labels: Sequence[str], methods: Sequence[str], regions: Sequence[str],
                 opts: MetricsOptions) -> None:
        from fairlearn.metrics import count, false_negative_rate, false_positive_rate, selection_rate

        self.df, self.labels, self.opts = df, list(labels), opts
        self.tests = GapTests(opts)
        self.warnings: list[str] = []
        self.region_cols = [c for m in methods for r in regions for c in (f"share:{m}:{r}", f"ratio:{m}:{r}")
                            if c in df]
        self.region_cols += [f"removal:{r}" for r in regions if f"removal:{r}" in df]
        self.faith_cols = [f"faith:{m}:{k}" for m in methods for k in FAITH_KEYS if f"faith:{m}:{k}" in df]
        self.faith_cols += [f"agree:{a}~{b}" for i, a in enumerate(methods) for b in methods[i + 1:]
                            if f"agree:{a}~{b}" in df]
        self.y_true = df["label"].astype(str).to_numpy()
        self.y_pred = df["pred_label"].astype(str).to_numpy()
        self.correct = df["correct"].astype(bool).to_numpy()
        self.concept_bin = {lab: ((self.y_true == lab).astype(int),
                                  df[f"predicted:{lab}"].astype(bool).to_numpy().astype(int))
                            for lab in labels if f"predicted:{lab}" in df}
        # one MetricFrame per grouping for everything (fairlearn's frames are costly to build), one with the label
        # as control feature for the base and region columns
        self.metrics: dict = {"n": count, **{k: mean_value for k in BASE_METRICS}}
        self.params: dict = {k: {"values": self.column(c)} for k, c in _BASE_COLUMNS.items()}
        for c in self.region_cols:
            self.metrics[c] = mean_value
            self.params[c] = {"values": self.column(c)}
        self.ctrl_metrics, self.ctrl_params = dict(self.metrics), dict(self.params)
        rates = (("selection_rate", selection_rate), ("fpr", false_positive_rate), ("fnr", false_negative_rate))
        for lab, (yt, yp) in self.concept_bin.items():
            for k, fn in rates:
                self.metrics[f"concept:{lab}:{k}"] = _on_binary(fn)
                self.params[f"concept:{lab}:{k}"] = {"yt": yt, "yp": yp}
            self.metrics[f"concept:{lab}:mean_score"] = mean_value
            self.params[f"concept:{lab}:mean_score"] = {"values": self.column(f"score:{lab}")}

    def column(self, c: str) -> np.ndarray:
        return self.df[c].to_numpy(dtype=np.float64)

    def overall(self) -> GroupStats:
        df = self.df
        return GroupStats(n=len(df), accuracy=float(df["correct"].mean()),
                          accuracy_top1=float(df["correct_top1"].mean()),
                          accuracy_topk=float(df["correct_topk"].mean()), mean_p_true=float(df["p_true"].mean()))

    def grouping(self, gname: str, sens: pd.Series) -> GroupingMetrics:
        """Every table and gap of one grouping, in the order the gaps take their seeds."""
        sens = pd.Series(sens.to_numpy(), name=gname)
        sv = sens.to_numpy()
        mf = _frame(self.metrics, self.y_true, self.y_pred, sens, self.params)
        bg = mf.by_group.copy()
        diff, ratio = mf.difference(), mf.ratio()
        for lab, (yt, _) in self.concept_bin.items():  # fairlearn reports 0 for a rate with an empty denominator
            npos = pd.Series(yt).groupby(sv).sum()
            for gval in bg.index:
                if npos.get(gval, 0) == (sv == gval).sum():
                    bg.loc[gval, f"concept:{lab}:fpr"] = np.nan
                if npos.get(gval, 0) == 0:
                    bg.loc[gval, f"concept:{lab}:fnr"] = np.nan

        def fl(name: str) -> tuple[float | None, float | None]:
            return _fl_gap(bg[name], diff[name], ratio[name])

        by_group = {g: GroupStats.from_json(r) for g, r in _rows(bg[["n", *BASE_METRICS]]).items()}
        by_group_ci = self._group_cis(sv)
        for gval, n in bg["n"].items():
            if n < self.opts.min_group_size:
                self.warnings.append(MSG_SMALL_GROUP.format(grouping=gname, group=gval, n=int(n),
                                                            min=self.opts.min_group_size))
        gaps = self._gaps({k: (self.column(c), sv, fl(k)) for k, c in _BASE_COLUMNS.items()}, gname, "all")
        mfl = _frame(self.ctrl_metrics, self.y_true, self.y_pred, sens, self.ctrl_params,
                     control=pd.Series(self.y_true, name="label"))
        diff_l, ratio_l = mfl.difference(), mfl.ratio()
        by_label = self._by_label(gname, sv, _rows(mfl.by_group[["n", *BASE_METRICS]]), diff_l, ratio_l)
        concepts = {lab: self._concept(gname, sv, bg, fl, lab) for lab in self.concept_bin}
        regions = None
        if self.region_cols:
            regions = RegionMetrics(by_group=_rows(bg[self.region_cols]),
                                    by_label=_rows(mfl.by_group[self.region_cols]),
                                    cells=self._cells(self.region_cols, sv, gname, (mfl.by_group, diff_l, ratio_l),
                                                      test=lambda c: not c.startswith("ratio:")))
        faith = self._cells(self.faith_cols, sv, gname, None, test=lambda c: True) if self.faith_cols else None
        return GroupingMetrics(by_group=by_group, gaps=gaps, by_label=by_label, concepts=concepts,
                               by_group_ci=by_group_ci, regions=regions, faithfulness=faith)

    def _gaps(self, tests: dict[str, tuple], gname: str, scope: str) -> dict[str, Gap]:
        """Run ``{metric: (values, groups, fairlearn's (difference, ratio))}``; the gaps that could be tested."""
        out = {}
        for k, (values, groups, fl) in tests.items():
            gap = self.tests.run(values, groups, fl, metric=k, grouping=gname, scope=scope)
            if gap:
                out[k] = gap
        return out

    def _group_cis(self, sv: np.ndarray) -> dict[str, dict[str, Interval]]:
        """Percentile bootstrap interval of each group's mean, per base metric: ``{group: {metric: (lo, hi)}}``."""
        rng = np.random.default_rng(self.opts.seed)
        q = _quantiles(self.opts.confidence)
        g = sv.astype(str)
        out: dict[str, dict[str, Interval]] = {}
        for gval in np.unique(g):
            out[str(gval)] = {}
            for k, c in _BASE_COLUMNS.items():
                v = self.column(c)
                idx = np.flatnonzero((g == gval) & ~np.isnan(v))
                if idx.size == 0:
                    out[str(gval)][k] = (None, None)
                    continue
                b = bootstrap_means(v, idx, rng, self.opts.n_boot)
                out[str(gval)][k] = (float(np.quantile(b, q[0])), float(np.quantile(b, q[1])))
        return out

    def _by_label(self, gname: str, sv: np.ndarray, cells: dict, diff_l: pd.DataFrame,
                  ratio_l: pd.DataFrame) -> dict[str, LabelMetrics]:
        """Per label x group (stereotypical vs atypical cells): fairlearn with the label as control feature."""
        out = {}
        for lab in self.labels:
            if lab not in cells:
                continue
            sub = np.flatnonzero(self.y_true == lab)
            for gval, d in cells[lab].items():
                if d.get("n") is not None and d["n"] < self.opts.min_group_size:
                    self.warnings.append(MSG_SMALL_CELL.format(label=lab, group=gval, n=d["n"],
                                                               min=self.opts.min_group_size))
            tests = {k: (self.column(c)[sub], sv[sub], (finite(float(diff_l.loc[lab, k])),
                                                         finite(float(ratio_l.loc[lab, k]))))
                     for k, c in _BASE_COLUMNS.items()}
            out[lab] = LabelMetrics({g: GroupStats.from_json(d) for g, d in cells[lab].items()},
                                    self._gaps(tests, gname, f"label={lab}"))
        return out

    def _concept(self, gname: str, sv: np.ndarray, bg: pd.DataFrame, fl: Callable, lab: str) -> ConceptMetrics:
        """A concept one vs rest: selection rate, FPR, FNR, mean score and fairlearn's parity differences."""
        from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

        yt, yp = self.concept_bin[lab]
        cols = {f"concept:{lab}:{k}": k for k in _CONCEPT_RATES}
        every = np.ones_like(yt, dtype=bool)
        samples = {"selection_rate": (yp.astype(float), every), "fpr": (yp.astype(float), yt == 0),
                   "fnr": (1.0 - yp, yt == 1), "mean_score": (self.column(f"score:{lab}"), every)}
        gaps = self._gaps({k: (v[mask], sv[mask], fl(f"concept:{lab}:{k}")) for k, (v, mask) in samples.items()},
                          gname, f"concept={lab}")
        return ConceptMetrics(
            by_group={g: ConceptRates.from_json(r) for g, r in _rows(bg[list(cols)].rename(columns=cols)).items()},
            gaps=gaps,
            demographic_parity_difference=finite(float(demographic_parity_difference(yt, yp, sensitive_features=sv))),
            equalized_odds_difference=(finite(float(equalized_odds_difference(yt, yp, sensitive_features=sv)))
                                       if 0 < yt.sum() < len(yt) else None))

    def _cells(self, cols: Sequence[str], sv: np.ndarray, gname: str, mfl: tuple | None,
               test: Callable[[str], bool]) -> dict[str, dict[str, CellMetric]]:
        """Per column, per label: each group's mean with n and interval over the label's images that have the
        value, the same split by correct vs wrong prediction, and the within-label group gap (tested when
        ``test(col)``). ``mfl`` is fairlearn's ``(by_group, difference, ratio)`` with the label as control
        feature, for the fairlearn columns."""
        o = self.opts
        rng = np.random.default_rng(o.seed + 104_729)
        out: dict[str, dict[str, CellMetric]] = {}
        for c in cols:
            v = self.column(c)
            per_label: dict[str, CellMetric] = {}
            for lab in self.labels:
                in_lab = self.y_true == lab
                has = in_lab & ~np.isnan(v)
                if not has.any():
                    continue
                by_group, right, wrong = {}, {}, {}
                for gval in sorted({str(x) for x in sv[in_lab]}):
                    ing = has & (sv == gval)
                    by_group[gval] = _mean_ci(v, np.flatnonzero(ing), rng, o.n_boot, o.confidence)
                    right[gval] = _mean_ci(v, np.flatnonzero(ing & self.correct), rng, o.n_boot, o.confidence)
                    wrong[gval] = _mean_ci(v, np.flatnonzero(ing & ~self.correct), rng, o.n_boot, o.confidence)
                gap = None
                if test(c):
                    sub = np.flatnonzero(has)
                    fl: tuple[float | None, float | None] = (None, None)
                    if mfl is not None:
                        by, dif, rat = mfl
                        fl = _fl_gap(by.loc[lab][c], dif.loc[lab, c], rat.loc[lab, c])
                    gap = self.tests.run(v[sub], sv[sub], fl, metric=c, grouping=gname, scope=f"label={lab}")
                per_label[lab] = CellMetric(n_label=int(in_lab.sum()), n=int(has.sum()), by_group=by_group,
                                            correct=right, wrong=wrong, gap=gap)
            out[c] = per_label
        return out


def _groupings(df: pd.DataFrame, groups: Sequence[str]) -> dict[str, pd.Series]:
    """Each group column, and their intersection (``"a x b"``, values ``"u & v"``) when there are several."""
    out = {g: df[g].astype(str) for g in groups}
    if len(groups) > 1:
        out[" x ".join(groups)] = df[list(groups)].astype(str).agg(" & ".join, axis=1)
    return out


def compute_model_metrics(
    df: pd.DataFrame,
    *,
    groups: Sequence[str],
    labels: Sequence[str],
    methods: Sequence[str] = (),
    regions: Sequence[str] = (),
    options: MetricsOptions | None = None,
) -> ModelMetrics:
    """All findings for one model from its per-image table (rows with ``status == 'ok'``).

    Expected columns: ``label``, the group columns, ``pred_label``, ``correct``, ``correct_top1``,
    ``correct_topk``, ``p_true``, ``predicted:<label>``, ``score:<label>``, and for regions
    ``share:<method>:<region>``, ``ratio:<method>:<region>``, ``removal:<region>``. Errors, findings and
    the answer are left empty (:func:`~biasscope.audit.results.finalize_run` fills them).
    """
    opts = options or MetricsOptions()
    df = df.reset_index(drop=True)
    if df.empty:
        return ModelMetrics(n_images=0)
    model = _Model(df, labels, methods, regions, opts)
    groupings = {gname: model.grouping(gname, sens) for gname, sens in _groupings(df, groups).items()}
    mm = model.tests.judge(ModelMetrics(n_images=len(df), groupings=groupings, overall=model.overall()))
    bs = None
    if opts.stereotypical:
        bg_col = opts.bias_group or (groups[0] if groups else None)
        if bg_col is None or bg_col not in df:
            raise ValueError(f"bias score needs a group column; {bg_col!r} is not one")
        bs = estimate_bias_score(df, bg_col, opts.stereotypical, n_boot=opts.n_boot, n_perm=opts.n_perm,
                                 confidence=opts.confidence, seed=opts.seed)
        bs = bs.judged(opts.min_effect["probability"]) if bs else None
    return replace(mm, bias_score=bs, bias_score_asked=bool(opts.stereotypical),
                   warnings=list(dict.fromkeys(model.warnings)))
