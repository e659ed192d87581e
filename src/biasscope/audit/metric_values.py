"""Typed values of an audit's metrics: what one model's ``metrics.json`` entry holds (:class:`ModelMetrics`).

Each value has ``to_json()``, the exact form metrics.json has had since the first version with findings per
label x group (key names, key order, ``null`` for a missing number), and ``from_json()``, which reads it
back, tolerating keys that older runs did not write. ``metrics.json`` is the contract: the report is
re-rendered from it by ``audit-report`` and the web API serves it as is. Missing numbers are ``None``
(never NaN), so ``from_json(x.to_json()) == x``.

What can be derived is not stored twice: a gap's ``flagged``, ``label`` and ``n_images``, and a model's
``flagged`` list, test counts and ``warning_groups`` are computed from the gaps and warnings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "BASE_METRICS",
    "BiasScore",
    "CellMetric",
    "ComparisonRow",
    "ConceptMetrics",
    "ConceptRates",
    "Gap",
    "GapStatus",
    "GroupStats",
    "GroupingMetrics",
    "ImageError",
    "Interval",
    "LabelMetrics",
    "MeanCI",
    "ModelMetrics",
    "RegionMetrics",
    "WarningGroup",
]

#: a confidence interval ``(low, high)``; ``None`` bounds when there is nothing to resample
Interval = tuple[float | None, float | None]
#: per group (or per label, then group): the mean of each region column (``share:gradcam:hair``...)
ColumnMeans = dict[str, float | None]
GapStatus = Literal["flagged", "too small", "not significant", "degenerate"]
#: the metrics of every image: ``correct``, ``correct_top1``, ``correct_topk``, ``p_true`` averaged
BASE_METRICS = ("accuracy", "accuracy_top1", "accuracy_topk", "mean_p_true")
#: the gap statuses that are not flagged, in the order ``n_not_flagged`` lists them
NOT_FLAGGED: tuple[GapStatus, ...] = ("not significant", "too small", "degenerate")
#: the keys of a gap in a model's ``flagged`` list
_FLAGGED_KEYS = ("grouping", "scope", "label", "metric", "high_group", "low_group", "high", "low", "difference",
                 "difference_ci", "ratio", "ratio_ci", "p_value", "p_adjusted", "min_effect", "n", "n_images")


def _interval(v: Any) -> Interval:
    lo, hi = (list(v) if v else []) + [None, None][len(v or []):]
    return (lo, hi)


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


@dataclass(frozen=True)
class GroupStats:
    """Accuracy (top-1, top-k), mean true-label probability and image count of a group, a label x group
    cell or the whole set (``None``: no image; ``n`` is ``None`` for a cell fairlearn leaves empty)."""

    n: int | None
    accuracy: float | None
    accuracy_top1: float | None
    accuracy_topk: float | None
    mean_p_true: float | None

    def get(self, metric: str) -> float | None:
        """One of :data:`BASE_METRICS` by name."""
        return getattr(self, metric)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, **{k: getattr(self, k) for k in BASE_METRICS}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupStats:
        return cls(n=d.get("n"), **{k: d.get(k) for k in BASE_METRICS})


@dataclass(frozen=True)
class ConceptRates:
    """A concept's one-vs-rest selection rate, FPR, FNR (``None`` with an empty denominator) and mean score."""

    selection_rate: float | None
    fpr: float | None
    fnr: float | None
    mean_score: float | None

    def to_json(self) -> dict[str, Any]:
        return {"selection_rate": self.selection_rate, "fpr": self.fpr, "fnr": self.fnr, "mean_score": self.mean_score}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ConceptRates:
        return cls(d.get("selection_rate"), d.get("fpr"), d.get("fnr"), d.get("mean_score"))


@dataclass(frozen=True)
class MeanCI:
    """The mean of a value over ``n`` images with its percentile bootstrap interval (``None`` when ``n`` is 0)."""

    n: int
    mean: float | None
    ci: Interval

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "ci": list(self.ci)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MeanCI:
        return cls(n=d.get("n", 0), mean=d.get("mean"), ci=_interval(d.get("ci")))


@dataclass(frozen=True)
class Gap:
    """The gap in a metric between the highest and the lowest group, tested.

    ``difference = high - low`` and ``ratio = low / high`` with bootstrap intervals (``ratio`` is ``None``
    for signed values or a higher mean of 0, its interval ``(None, None)`` when the higher group's
    interval reaches 0; ``ratio_note`` says why), the permutation ``p_value`` over ``n_perm`` permutations,
    fairlearn's own difference and ratio, and what it is computed over: ``grouping``, ``scope``
    (``all``, ``label=X`` or ``concept=X``) and ``metric``. ``p_adjusted`` (Holm over every gap of the
    model), ``min_effect`` and ``status`` are set once every gap of the model is known (``None`` before).
    """

    high_group: str
    low_group: str
    high: float
    low: float
    difference: float
    difference_ci: Interval
    ratio: float | None
    ratio_ci: Interval
    ratio_note: str | None
    degenerate: str | None
    p_value: float
    n_perm: int
    n: dict[str, int]
    fairlearn_difference: float | None = None
    fairlearn_ratio: float | None = None
    metric: str = ""
    grouping: str = ""
    scope: str = "all"
    p_adjusted: float | None = None
    min_effect: float | None = None
    status: GapStatus | None = None

    @property
    def flagged(self) -> bool:
        return self.status == "flagged"

    @property
    def label(self) -> str | None:
        """The label a within-label gap is computed over."""
        return self.scope.split("=", 1)[1] if self.scope.startswith("label=") else None

    @property
    def n_images(self) -> int:
        return int(sum(self.n.values()))

    @property
    def key(self) -> tuple[str, str, str]:
        """``(grouping, scope, metric)``: which gap this is (unique within a model)."""
        return (self.grouping, self.scope, self.metric)

    def judged(self, p_adjusted: float, min_effect: float, alpha: float) -> Gap:
        """The gap with its Holm-adjusted p-value, minimum effect and status: ``degenerate``, ``not significant``
        (interval reaching 0 or adjusted p >= ``alpha``), ``too small`` (significant, below ``min_effect``)
        or ``flagged``."""
        lo = self.difference_ci[0]
        status: GapStatus
        if self.degenerate:
            status = "degenerate"
        elif not (self.difference > 0 and lo is not None and lo > 0 and p_adjusted < alpha):
            status = "not significant"
        elif self.difference < min_effect:
            status = "too small"
        else:
            status = "flagged"
        return replace(self, p_adjusted=p_adjusted, min_effect=min_effect, status=status)

    def test_json(self) -> dict[str, Any]:
        """The result of :func:`~biasscope.audit.stats.gap_test`: the test's own keys, NaN for a missing ratio."""
        nan = math.nan
        return {
            "high_group": self.high_group, "low_group": self.low_group, "high": self.high, "low": self.low,
            "difference": self.difference, "difference_ci": list(self.difference_ci),
            "ratio": nan if self.ratio is None else self.ratio,
            "ratio_ci": [nan if v is None else v for v in self.ratio_ci],
            "ratio_note": self.ratio_note, "degenerate": self.degenerate, "p_value": self.p_value,
            "n_perm": self.n_perm, "n": dict(self.n),
        }

    def to_json(self) -> dict[str, Any]:
        d = {**self.test_json(), "ratio": self.ratio, "ratio_ci": list(self.ratio_ci),
             "fairlearn_difference": self.fairlearn_difference, "fairlearn_ratio": self.fairlearn_ratio,
             "metric": self.metric, "grouping": self.grouping, "scope": self.scope}
        # region and explanation-quality gaps (metrics named "kind:...") have always written the label here
        in_cell = ":" in self.metric
        if in_cell:
            d["label"] = self.label
        d.update(p_adjusted=self.p_adjusted, min_effect=self.min_effect, status=self.status, flagged=self.flagged)
        if not in_cell:
            d["label"] = self.label
        d["n_images"] = self.n_images
        return d

    def flagged_json(self) -> dict[str, Any]:
        """The gap as an entry of a model's ``flagged`` list."""
        d = self.to_json()
        return {k: d[k] for k in _FLAGGED_KEYS}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Gap:
        """A stored gap, or an entry of a ``flagged`` list (which has no status key: it is flagged)."""
        status = d.get("status")
        if status is None and d.get("p_adjusted") is not None:  # written before gaps had a status
            status = ("degenerate" if d.get("degenerate") else "flagged" if d.get("flagged", True)
                      else "not significant")
        return cls(
            high_group=d["high_group"], low_group=d["low_group"], high=d["high"], low=d["low"],
            difference=d["difference"], difference_ci=_interval(d.get("difference_ci")),
            ratio=_nan_to_none(d.get("ratio")), ratio_ci=tuple(_nan_to_none(v) for v in _interval(d.get("ratio_ci"))),
            ratio_note=d.get("ratio_note"), degenerate=d.get("degenerate"), p_value=d["p_value"],
            n_perm=d.get("n_perm", 0), n=dict(d.get("n") or {}), fairlearn_difference=d.get("fairlearn_difference"),
            fairlearn_ratio=d.get("fairlearn_ratio"), metric=d.get("metric", ""), grouping=d.get("grouping", ""),
            scope=d.get("scope") or (f"label={d['label']}" if d.get("label") else "all"),
            p_adjusted=d.get("p_adjusted"), min_effect=d.get("min_effect"), status=status)


def _gap_or_none(d: Mapping[str, Any] | None) -> Gap | None:
    return Gap.from_json(d) if d else None


def _gaps(d: Mapping[str, Any] | None) -> dict[str, Gap]:
    return {k: Gap.from_json(v) for k, v in (d or {}).items()}


def _gaps_json(gaps: Mapping[str, Gap]) -> dict[str, Any]:
    return {k: g.to_json() for k, g in gaps.items()}


def _map(gaps: Mapping[str, Gap], fn: Callable[[Gap], Gap]) -> dict[str, Gap]:
    return {k: fn(g) for k, g in gaps.items()}


@dataclass(frozen=True)
class CellMetric:
    """One region or explanation-quality column within one label: each group's mean over the label's images
    that have the value (``n`` of ``n_label``), the same split by correct / wrong prediction, and the
    within-label group gap (``None`` when the column is described, not tested)."""

    n_label: int
    n: int
    by_group: dict[str, MeanCI]
    correct: dict[str, MeanCI]
    wrong: dict[str, MeanCI]
    gap: Gap | None = None

    def to_json(self) -> dict[str, Any]:
        def table(t: Mapping[str, MeanCI]) -> dict[str, Any]:
            return {g: c.to_json() for g, c in t.items()}

        return {"n_label": self.n_label, "n": self.n, "by_group": table(self.by_group),
                "by_outcome": {"correct": table(self.correct), "wrong": table(self.wrong)},
                "gap": self.gap.to_json() if self.gap else None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CellMetric:
        def table(t: Mapping[str, Any] | None) -> dict[str, MeanCI]:
            return {g: MeanCI.from_json(c) for g, c in (t or {}).items()}

        outcome = d.get("by_outcome") or {}
        return cls(n_label=d.get("n_label", 0), n=d.get("n", 0), by_group=table(d.get("by_group")),
                   correct=table(outcome.get("correct")), wrong=table(outcome.get("wrong")),
                   gap=_gap_or_none(d.get("gap")))


#: ``{column: {label: cell}}``
Cells = dict[str, dict[str, CellMetric]]


def _cells_json(cells: Cells) -> dict[str, Any]:
    return {c: {lab: cell.to_json() for lab, cell in per.items()} for c, per in cells.items()}


def _cells(d: Mapping[str, Any] | None) -> Cells:
    return {c: {lab: CellMetric.from_json(cell) for lab, cell in per.items()} for c, per in (d or {}).items()}


def _cell_gaps(cells: Cells) -> Iterator[Gap]:
    return (cell.gap for per in cells.values() for cell in per.values() if cell.gap is not None)


def _map_cells(cells: Cells, fn: Callable[[Gap], Gap]) -> Cells:
    return {c: {lab: replace(cell, gap=fn(cell.gap)) if cell.gap else cell for lab, cell in per.items()}
            for c, per in cells.items()}


@dataclass(frozen=True)
class LabelMetrics:
    """One label's images: each group's :class:`GroupStats` and the within-label gaps per base metric."""

    by_group: dict[str, GroupStats]
    gaps: dict[str, Gap]

    def to_json(self) -> dict[str, Any]:
        return {"by_group": {g: s.to_json() for g, s in self.by_group.items()}, "gaps": _gaps_json(self.gaps)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LabelMetrics:
        return cls({g: GroupStats.from_json(s) for g, s in (d.get("by_group") or {}).items()}, _gaps(d.get("gaps")))


@dataclass(frozen=True)
class ConceptMetrics:
    """One concept (label) one-vs-rest: rates per group, their gaps and fairlearn's parity differences."""

    by_group: dict[str, ConceptRates]
    gaps: dict[str, Gap]
    demographic_parity_difference: float | None
    equalized_odds_difference: float | None

    def to_json(self) -> dict[str, Any]:
        return {"by_group": {g: r.to_json() for g, r in self.by_group.items()}, "gaps": _gaps_json(self.gaps),
                "demographic_parity_difference": self.demographic_parity_difference,
                "equalized_odds_difference": self.equalized_odds_difference}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ConceptMetrics:
        return cls({g: ConceptRates.from_json(r) for g, r in (d.get("by_group") or {}).items()}, _gaps(d.get("gaps")),
                   d.get("demographic_parity_difference"), d.get("equalized_odds_difference"))


@dataclass(frozen=True)
class RegionMetrics:
    """Region columns (attribution share, share / area, removal effect): means per group, per label x
    group (fairlearn), and the per label x group :class:`CellMetric` with its tested gap."""

    by_group: dict[str, ColumnMeans]
    by_label: dict[str, dict[str, ColumnMeans]]
    cells: Cells

    def to_json(self) -> dict[str, Any]:
        return {"by_group": self.by_group, "by_label": self.by_label, "cells": _cells_json(self.cells)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RegionMetrics:
        return cls(dict(d.get("by_group") or {}), dict(d.get("by_label") or {}), _cells(d.get("cells")))


@dataclass(frozen=True)
class GroupingMetrics:
    """Everything computed for one grouping (a group column, or the intersection of several).

    ``regions`` is ``None`` without region columns, ``faithfulness`` (``{column: {label: cell}}``) ``None``
    without explanation-quality columns."""

    by_group: dict[str, GroupStats]
    gaps: dict[str, Gap]
    by_label: dict[str, LabelMetrics]
    concepts: dict[str, ConceptMetrics]
    by_group_ci: dict[str, dict[str, Interval]]
    regions: RegionMetrics | None = None
    faithfulness: Cells | None = None

    def all_gaps(self) -> list[Gap]:
        """Every gap, in the order they are tested (and written)."""
        out = list(self.gaps.values())
        out += [g for lab in self.by_label.values() for g in lab.gaps.values()]
        out += [g for c in self.concepts.values() for g in c.gaps.values()]
        if self.regions is not None:
            out += _cell_gaps(self.regions.cells)
        if self.faithfulness is not None:
            out += _cell_gaps(self.faithfulness)
        return out

    def map_gaps(self, fn: Callable[[Gap], Gap]) -> GroupingMetrics:
        """The same metrics with ``fn`` applied to every gap, in :meth:`all_gaps` order."""
        gaps = _map(self.gaps, fn)
        by_label = {lab: replace(m, gaps=_map(m.gaps, fn)) for lab, m in self.by_label.items()}
        concepts = {lab: replace(m, gaps=_map(m.gaps, fn)) for lab, m in self.concepts.items()}
        regions = replace(self.regions, cells=_map_cells(self.regions.cells, fn)) if self.regions else None
        faith = _map_cells(self.faithfulness, fn) if self.faithfulness is not None else None
        return replace(self, gaps=gaps, by_label=by_label, concepts=concepts, regions=regions, faithfulness=faith)

    def to_json(self) -> dict[str, Any]:
        d = {"by_group": {g: s.to_json() for g, s in self.by_group.items()}, "gaps": _gaps_json(self.gaps),
             "by_label": {lab: m.to_json() for lab, m in self.by_label.items()},
             "concepts": {lab: m.to_json() for lab, m in self.concepts.items()},
             "regions": self.regions.to_json() if self.regions else {},
             "by_group_ci": {g: {k: list(ci) for k, ci in cis.items()} for g, cis in self.by_group_ci.items()}}
        if self.faithfulness is not None:
            d["faithfulness"] = {"cells": _cells_json(self.faithfulness)}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupingMetrics:
        faith = d.get("faithfulness")
        return cls(
            by_group={g: GroupStats.from_json(s) for g, s in (d.get("by_group") or {}).items()},
            gaps=_gaps(d.get("gaps")),
            by_label={lab: LabelMetrics.from_json(m) for lab, m in (d.get("by_label") or {}).items()},
            concepts={lab: ConceptMetrics.from_json(m) for lab, m in (d.get("concepts") or {}).items()},
            by_group_ci={g: {k: _interval(ci) for k, ci in cis.items()}
                         for g, cis in (d.get("by_group_ci") or {}).items()},
            regions=RegionMetrics.from_json(d["regions"]) if d.get("regions") else None,
            faithfulness=_cells((faith or {}).get("cells")) if faith is not None else None)


@dataclass(frozen=True)
class BiasScore:
    """Mean true-label probability on stereotypical minus atypical images, with interval and p-value.

    ``min_effect`` and ``flagged`` are set in a model's metrics (``None`` from :func:`bias_score` alone)."""

    group: str
    stereotypical: list[str]
    value: str
    score: float
    ci: Interval
    p_value: float
    stereotypical_mean: float
    atypical_mean: float
    n_stereotypical: int
    n_atypical: int
    significant: bool
    min_effect: float | None = None
    flagged: bool | None = None

    def judged(self, min_effect: float) -> BiasScore:
        """Flagged when significant and at least ``min_effect`` in absolute value."""
        return replace(self, min_effect=min_effect, flagged=bool(self.significant and abs(self.score) >= min_effect))

    def to_json(self) -> dict[str, Any]:
        d = {"group": self.group, "stereotypical": list(self.stereotypical), "value": self.value, "score": self.score,
             "ci": list(self.ci), "p_value": self.p_value, "stereotypical_mean": self.stereotypical_mean,
             "atypical_mean": self.atypical_mean, "n_stereotypical": self.n_stereotypical,
             "n_atypical": self.n_atypical, "significant": self.significant}
        if self.min_effect is not None:
            d.update(min_effect=self.min_effect, flagged=self.flagged)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BiasScore:
        return cls(group=d["group"], stereotypical=list(d.get("stereotypical") or []), value=d.get("value", "p_true"),
                   score=d["score"], ci=_interval(d.get("ci")), p_value=d["p_value"],
                   stereotypical_mean=d["stereotypical_mean"], atypical_mean=d["atypical_mean"],
                   n_stereotypical=d["n_stereotypical"], n_atypical=d["n_atypical"], significant=d["significant"],
                   min_effect=d.get("min_effect"), flagged=d.get("flagged"))


@dataclass(frozen=True)
class WarningGroup:
    """Warnings of one kind (small groups, small label x group cells, other), each once."""

    kind: str
    title: str
    items: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "items": list(self.items)}

    @staticmethod
    def group(warnings: list[str] | tuple[str, ...]) -> list[WarningGroup]:
        """Warnings grouped by kind, each kind once and each warning once (small groups, small cells, other)."""
        kinds = (("small_group", " group ", "Small groups (metrics uncertain)"),
                 ("small_cell", "cell ", "Small label x group cells (metrics uncertain)"))
        groups: dict[str, WarningGroup] = {}
        for w in dict.fromkeys(warnings):
            kind, title = "other", "Other warnings"
            for k, marker, t in kinds:
                if "image(s) (<" in w and (w.startswith(marker.strip() + " ") if k == "small_cell" else marker in w):
                    kind, title = k, t
                    break
            item = w.split(" (<", 1)[0] if kind != "other" else w
            groups.setdefault(kind, WarningGroup(kind, title, [])).items.append(item)
        return list(groups.values())


@dataclass(frozen=True)
class ImageError:
    """An image a model could not score, and why."""

    path: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


@dataclass(frozen=True)
class ModelMetrics:
    """One model's metrics: overall numbers, one :class:`GroupingMetrics` per grouping, the bias score,
    warnings, unscored images and the findings / answer in words.

    ``overall`` is ``None`` when no image could be evaluated (then only counts, warnings and errors are
    written). ``bias_score_asked``: the run named stereotypical cells, so ``bias_score`` is written, ``null``
    when it could not be computed. ``faces`` is the face audit's summary (its own JSON, face-part runs only).
    """

    n_images: int
    groupings: dict[str, GroupingMetrics] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    overall: GroupStats | None = None
    bias_score: BiasScore | None = None
    bias_score_asked: bool = False
    n_errors: int = 0
    errors: list[ImageError] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    faces: dict[str, Any] | None = None

    def all_gaps(self) -> list[Gap]:
        """Every gap of the model in test order (the order of Holm's family and of ``flagged``)."""
        return [g for e in self.groupings.values() for g in e.all_gaps()]

    def map_gaps(self, fn: Callable[[Gap], Gap]) -> ModelMetrics:
        return replace(self, groupings={k: e.map_gaps(fn) for k, e in self.groupings.items()})

    @property
    def flagged(self) -> list[Gap]:
        return [g for g in self.all_gaps() if g.flagged]

    @property
    def n_tests(self) -> int:
        return len(self.all_gaps())

    @property
    def n_not_flagged(self) -> dict[str, int]:
        gaps = self.all_gaps()
        return {s: sum(g.status == s for g in gaps) for s in NOT_FLAGGED}

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"n_images": self.n_images,
                             "groupings": {k: e.to_json() for k, e in self.groupings.items()},
                             "warnings": list(self.warnings)}
        if self.overall is not None:
            d["overall"] = self.overall.to_json()
            d["flagged"] = [g.flagged_json() for g in self.flagged]
            d["n_not_flagged"] = self.n_not_flagged
            d["n_tests"] = self.n_tests
            if self.bias_score_asked:
                d["bias_score"] = self.bias_score.to_json() if self.bias_score else None
            d["warning_groups"] = [w.to_json() for w in WarningGroup.group(self.warnings)]
        d.update(n_errors=self.n_errors, errors=[e.to_json() for e in self.errors], findings=list(self.findings),
                 answer=list(self.answer))
        if self.faces is not None:
            d["faces"] = self.faces
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelMetrics:
        bs = d.get("bias_score")
        return cls(
            n_images=d.get("n_images", 0),
            groupings={k: GroupingMetrics.from_json(e) for k, e in (d.get("groupings") or {}).items()},
            warnings=list(d.get("warnings") or []),
            overall=GroupStats.from_json(d["overall"]) if d.get("overall") else None,
            bias_score=BiasScore.from_json(bs) if bs else None, bias_score_asked="bias_score" in d,
            n_errors=d.get("n_errors", 0),
            errors=[ImageError(e.get("path"), e.get("error")) for e in d.get("errors") or []],
            findings=list(d.get("findings") or []), answer=list(d.get("answer") or []), faces=d.get("faces"))


@dataclass(frozen=True)
class ComparisonRow:
    """One model's headline numbers side by side with the others (``comparison`` in metrics.json)."""

    n: int
    accuracy: float | None
    accuracy_topk: float | None
    mean_p_true: float | None
    accuracy_gaps: list[Gap]
    n_flagged: int
    bias_score: BiasScore | None
    n_errors: int

    @classmethod
    def of(cls, mm: ModelMetrics, groups: list[str]) -> ComparisonRow:
        """The row of a model: overall numbers, the accuracy gap of each group column, counts, bias score."""
        ov = mm.overall
        gaps = [g for gname in groups if (e := mm.groupings.get(gname)) and (g := e.gaps.get("accuracy"))]
        return cls(n=(ov.n or 0) if ov else 0, accuracy=ov.accuracy if ov else None,
                   accuracy_topk=ov.accuracy_topk if ov else None, mean_p_true=ov.mean_p_true if ov else None,
                   accuracy_gaps=gaps, n_flagged=len(mm.flagged), bias_score=mm.bias_score, n_errors=mm.n_errors)

    def to_json(self) -> dict[str, Any]:
        bs = self.bias_score
        return {"n": self.n, "accuracy": self.accuracy, "accuracy_topk": self.accuracy_topk,
                "mean_p_true": self.mean_p_true,
                "accuracy_gaps": [{"grouping": g.grouping, "difference": g.difference, "ci": list(g.difference_ci),
                                   "p_adjusted": g.p_adjusted, "flagged": g.flagged} for g in self.accuracy_gaps],
                "n_flagged": self.n_flagged, "bias_score": bs.score if bs else None,
                "bias_score_ci": list(bs.ci) if bs else None, "n_errors": self.n_errors}
