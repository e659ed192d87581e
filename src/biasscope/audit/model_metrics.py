"""One model's metrics as typed values: :class:`ModelMetrics` holds a :class:`GroupingMetrics` per grouping
(tables per group, per label x group and per concept, region and explanation-quality :class:`CellMetric`s,
and their :class:`~biasscope.audit.metric_values.Gap`s), the bias score, warnings, errors and sentences.

``to_json()`` is exactly the model's entry of metrics.json and ``from_json()`` reads stored ones back (see
:mod:`biasscope.audit.metric_values`). What can be derived is not stored twice: the ``flagged`` list, the
test counts and ``warning_groups`` are computed from the gaps and warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .metric_values import (
    NOT_FLAGGED,
    BiasScore,
    ColumnMeans,
    ConceptRates,
    Gap,
    GroupStats,
    ImageError,
    Interval,
    MeanCI,
    WarningGroup,
    interval,
)

__all__ = [
    "CellMetric",
    "ComparisonRow",
    "ConceptMetrics",
    "GroupingMetrics",
    "LabelMetrics",
    "ModelMetrics",
    "RegionMetrics",
]


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
            by_group_ci={g: {k: interval(ci) for k, ci in cis.items()}
                         for g, cis in (d.get("by_group_ci") or {}).items()},
            regions=RegionMetrics.from_json(d["regions"]) if d.get("regions") else None,
            faithfulness=_cells((faith or {}).get("cells")) if faith is not None else None)


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
