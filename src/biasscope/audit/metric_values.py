"""Typed values of an audit's metrics: the numbers one model's entry of ``metrics.json`` is made of.

:class:`GroupStats` (a group's accuracy and confidence), :class:`ConceptRates`, :class:`MeanCI` (a mean with
its interval), :class:`Gap` (a tested difference between groups), :class:`BiasScore`, :class:`WarningGroup`
and :class:`ImageError`; :mod:`biasscope.audit.model_metrics` assembles them into a model's metrics.

Each value has ``to_json()``, the exact form metrics.json has had since findings per label x group were
added (key names, key order, ``null`` for a missing number), and ``from_json()``, which reads it back,
tolerating keys that older runs did not write. metrics.json is the contract: the report is re-rendered
from it by ``audit-report`` and the web API serves it as is. Missing numbers are ``None`` (never NaN), so
``from_json(x.to_json()) == x``. What can be derived is not stored twice (a gap's ``flagged``, ``label``,
``n_images``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = [
    "BASE_METRICS",
    "NOT_FLAGGED",
    "BiasScore",
    "ColumnMeans",
    "ConceptRates",
    "Gap",
    "GapStatus",
    "GroupStats",
    "ImageError",
    "Interval",
    "MeanCI",
    "WarningGroup",
    "interval",
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


def interval(v: Any) -> Interval:
    """A stored ``[lo, hi]`` (or nothing) as an :data:`Interval`."""
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
        return cls(n=d.get("n", 0), mean=d.get("mean"), ci=interval(d.get("ci")))


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

    def subset_json(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """Some keys of :meth:`to_json`, in the order given (summaries of a gap elsewhere)."""
        d = self.to_json()
        return {k: d[k] for k in keys}

    def flagged_json(self) -> dict[str, Any]:
        """The gap as an entry of a model's ``flagged`` list."""
        return self.subset_json(_FLAGGED_KEYS)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Gap:
        """A stored gap, or an entry of a ``flagged`` list (which has no status key: it is flagged)."""
        status = d.get("status")
        if status is None and d.get("p_adjusted") is not None:  # written before gaps had a status
            status = ("degenerate" if d.get("degenerate") else "flagged" if d.get("flagged", True)
                      else "not significant")
        return cls(
            high_group=d["high_group"], low_group=d["low_group"], high=d["high"], low=d["low"],
            difference=d["difference"], difference_ci=interval(d.get("difference_ci")),
            ratio=_nan_to_none(d.get("ratio")), ratio_ci=tuple(_nan_to_none(v) for v in interval(d.get("ratio_ci"))),
            ratio_note=d.get("ratio_note"), degenerate=d.get("degenerate"), p_value=d["p_value"],
            n_perm=d.get("n_perm", 0), n=dict(d.get("n") or {}), fairlearn_difference=d.get("fairlearn_difference"),
            fairlearn_ratio=d.get("fairlearn_ratio"), metric=d.get("metric", ""), grouping=d.get("grouping", ""),
            scope=d.get("scope") or (f"label={d['label']}" if d.get("label") else "all"),
            p_adjusted=d.get("p_adjusted"), min_effect=d.get("min_effect"), status=status)


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
                   score=d["score"], ci=interval(d.get("ci")), p_value=d["p_value"],
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
