"""An audit's metrics in words: metric names, one sentence per gap, a model's findings and its answer.

Everything here reads the typed values of :mod:`biasscope.audit.metric_values`; the public functions also
take the JSON form (a model's entry of metrics.json, a gap from it) and convert it at the boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..formatting import fmt_number as _fmt
from .metric_values import Gap
from .model_metrics import ModelMetrics

__all__ = ["answer", "findings", "gap_sentence", "metric_words", "scope_words", "where_explanations_fall"]

_METRIC_WORDS = {
    "accuracy": "accuracy",
    "accuracy_top1": "top-1 accuracy",
    "accuracy_topk": "top-k accuracy",
    "mean_p_true": "mean probability of the true label",
    "selection_rate": "selection rate",
    "fpr": "false positive rate",
    "fnr": "false negative rate",
    "mean_score": "mean score",
}

_FAITH_WORDS = {"deletion_auc": "deletion AUC (lower is more faithful)",
                "insertion_auc": "insertion AUC (higher is more faithful)",
                "completeness_relative": "relative completeness error (lower is more faithful)"}


def _model(mm: ModelMetrics | Mapping[str, Any]) -> ModelMetrics:
    return mm if isinstance(mm, ModelMetrics) else ModelMetrics.from_json(mm)


def _gap(g: Gap | Mapping[str, Any]) -> Gap:
    return g if isinstance(g, Gap) else Gap.from_json(g)


def metric_words(metric: str) -> str:
    """A metric name (``share:gradcam:hair``, ``removal:hair``, ``accuracy``...) in words."""
    if metric.startswith(("share:", "ratio:")):
        kind, method, region = metric.split(":", 2)
        what = "attribution share" if kind == "share" else "attribution share / area share"
        return f"{method} {what} on region '{region}'"
    if metric.startswith("removal:"):
        return f"effect of removing region '{metric.split(':', 1)[1]}' on the true label's probability"
    if metric.startswith("faith:"):
        _, method, key = metric.split(":", 2)
        return f"{method} {_FAITH_WORDS.get(key, key)}"
    if metric.startswith("agree:"):
        a, _, b = metric.split(":", 1)[1].partition("~")
        return f"rank agreement (Spearman) of {a} and {b} maps"
    return _METRIC_WORDS.get(metric, metric)


def _pct_metric(metric: str) -> bool:
    return metric.startswith("accuracy") or metric in ("selection_rate", "fpr", "fnr")


def scope_words(g: Gap | Mapping[str, Any]) -> str:
    """What a gap is computed over: label, groups with their n, images."""
    g = _gap(g)
    sizes = ", ".join(f"{k} n={v}" for k, v in g.n.items())
    where = ("all labels" if g.scope == "all" else f"label {g.label}" if g.label is not None
             else g.scope.replace("=", " "))
    return f"over {where}; {g.grouping} groups {sizes}; {g.n_images} images"


def gap_sentence(g: Gap | Mapping[str, Any]) -> str:
    """One gap (flagged or not) as a sentence with its numbers and what it is computed over."""
    g = _gap(g)
    pct = _pct_metric(g.metric)
    lo, hi = g.difference_ci
    where = (f"Within label {g.label}, the" if g.label else "The" if g.scope == "all"
             else f"For {g.scope.replace('=', ' ')}, the")
    ratio = ""
    if g.ratio is not None:
        rlo, rhi = g.ratio_ci
        ratio = f", ratio {_fmt(g.ratio)}" + (f" [{_fmt(rlo)}, {_fmt(rhi)}]" if rlo is not None else "")
    return (f"{where} {metric_words(g.metric)} differs between {g.grouping} groups: "
            f"{g.high_group} {_fmt(g.high, pct)} vs {g.low_group} {_fmt(g.low, pct)} "
            f"(difference {_fmt(g.difference)}, 95% CI [{_fmt(lo)}, {_fmt(hi)}]{ratio}, "
            f"permutation p = {g.p_value:.3g}, Holm-adjusted {g.p_adjusted:.3g}; "
            f"{scope_words(g)}).")


def _faith_notes(mm: ModelMetrics) -> dict[tuple[str, str, str], str]:
    """(grouping, label, method) -> a note when that method's explanations differ in faithfulness by group."""
    notes: dict[tuple[str, str, str], str] = {}
    for gname, entry in mm.groupings.items():
        for col, per_label in (entry.faithfulness or {}).items():
            if not col.startswith("faith:"):
                continue
            _, method, key = col.split(":", 2)
            for lab, cell in per_label.items():
                g = cell.gap
                if g and g.flagged:
                    worse = g.low_group if key == "insertion_auc" else g.high_group
                    notes[(gname, lab, method)] = (
                        f" Caution: {method} explanations are less faithful for {gname} = {worse} within label "
                        f"{lab} ({_FAITH_WORDS.get(key, key)}: {g.high_group} {_fmt(g.high)} vs "
                        f"{g.low_group} {_fmt(g.low)}), so part of this gap may reflect explanation quality.")
    return notes


def _no_gap_sentence(mm: ModelMetrics, alpha: float) -> str:
    counts = mm.n_not_flagged
    return (f"No gap between groups is significant and large enough to flag: of the "
            f"{mm.n_tests} gaps tested, {counts['not significant']} are not significant "
            f"(95% interval or Holm-adjusted permutation p-value at level {alpha}), "
            f"{counts['too small']} are significant but below the minimum effect, "
            f"{counts['degenerate']} are degenerate (both groups 0).")


def findings(model_metrics: ModelMetrics | Mapping[str, Any], *, alpha: float = 0.05) -> list[str]:
    """The findings of one model in plain sentences with their numbers: each flagged gap once, then the bias score.

    Warnings are not findings: they are in ``warnings`` / ``warning_groups``.
    """
    mm = _model(model_metrics)
    ov = mm.overall
    if ov is None:
        return ["No image could be evaluated."]
    out = [f"Over {ov.n} images: accuracy {_fmt(ov.accuracy, True)} (top-k {_fmt(ov.accuracy_topk, True)}), "
           f"mean probability of the true label {_fmt(ov.mean_p_true)}."]
    flagged = mm.flagged
    notes = _faith_notes(mm)
    for g in sorted(flagged, key=lambda g: g.p_adjusted):
        s = gap_sentence(g)
        if g.metric.startswith(("share:", "ratio:")) and g.label:
            s += notes.get((g.grouping, g.label, g.metric.split(":")[1]), "")
        out.append(s)
    too_small = mm.n_not_flagged["too small"]
    if not flagged and mm.n_tests:
        out.append(_no_gap_sentence(mm, alpha))
    elif too_small:
        out.append(f"{too_small} more gap(s) are significant but below the minimum effect; "
                   "they are listed in the tables, not flagged.")
    bs = mm.bias_score
    if bs:
        verdict = ("flagged" if bs.flagged else "significant but below the minimum effect"
                   if bs.significant else "not significant")
        out.append(
            f"Bias score ({bs.group}): stereotypical images get mean true-label probability "
            f"{_fmt(bs.stereotypical_mean)}, atypical ones {_fmt(bs.atypical_mean)}: difference "
            f"{_fmt(bs.score)}, 95% CI [{_fmt(bs.ci[0])}, {_fmt(bs.ci[1])}], "
            f"p = {bs.p_value:.3g} ({verdict}; {bs.n_stereotypical} stereotypical, "
            f"{bs.n_atypical} atypical images)."
        )
    return out


def where_explanations_fall(model_metrics: ModelMetrics | Mapping[str, Any], grouping: str | None = None,
                            limit: int = 6) -> list[str]:
    """Per label x group cell, the region drawing the most attribution relative to its area (with n)."""
    mm = _model(model_metrics)
    out: list[str] = []
    for gname, entry in mm.groupings.items():
        if grouping is not None and gname != grouping:
            continue
        cells = entry.regions.cells if entry.regions else {}
        best: dict[tuple[str, str, str], tuple[float, str, int]] = {}
        for col, per_label in cells.items():
            if not col.startswith("ratio:"):
                continue
            _, method, region = col.split(":", 2)
            for lab, cell in per_label.items():
                for gval, c in cell.by_group.items():
                    if c.mean is None:
                        continue
                    key = (method, lab, gval)
                    if key not in best or c.mean > best[key][0]:
                        best[key] = (c.mean, region, c.n)
        for (method, lab, gval), (ratio, region, n) in sorted(best.items()):
            share_cell = cells.get(f"share:{method}:{region}", {}).get(lab)
            share = share_cell.by_group.get(gval) if share_cell else None
            out.append(f"{lab} x {gname} = {gval} ({method}, {n} images with region '{region}'): "
                       f"'{region}' holds {_fmt(share.mean if share else None, True)} of the positive attribution, "
                       f"{_fmt(ratio)}x its area share.")
        break  # the first grouping only: the others repeat the question
    return out[:limit] if limit else out


def answer(model_metrics: ModelMetrics | Mapping[str, Any], stereotypical: list[str] | None = None, *,
           alpha: float = 0.05) -> list[str]:
    """The answer to the audit's question in a few sentences with numbers (top of report and dashboard)."""
    mm = _model(model_metrics)
    ov = mm.overall
    if ov is None:
        return ["No image could be evaluated."]
    out = [f"Accuracy {_fmt(ov.accuracy, True)} over {ov.n} images "
           f"(mean probability of the true label {_fmt(ov.mean_p_true)})."]
    bs = mm.bias_score
    if bs:
        word = "higher" if bs.score > 0 else "lower"
        verdict = ("a flagged difference" if bs.flagged else
                   "significant but below the minimum effect" if bs.significant else "not significant")
        out.append(f"Stereotypical cells ({', '.join(bs.stereotypical)}; {bs.n_stereotypical} images) get a "
                   f"{word} true-label probability than atypical ones ({bs.n_atypical} images): "
                   f"{_fmt(bs.stereotypical_mean)} vs {_fmt(bs.atypical_mean)}, bias score "
                   f"{_fmt(bs.score)} (95% CI [{_fmt(bs.ci[0])}, {_fmt(bs.ci[1])}], p = {bs.p_value:.3g}):"
                   f" {verdict}.")
    elif stereotypical:
        out.append("No bias score: the stereotypical cells given have no atypical counterpart in the data.")
    flagged = mm.flagged
    if flagged:
        out.append(f"{len(flagged)} of {mm.n_tests} gaps are flagged (significant after Holm "
                   f"and at least the minimum effect); the largest:")
        top = sorted(flagged, key=lambda g: -g.difference / max(g.min_effect or 1e-9, 1e-9))[:3]
        out += [gap_sentence(g) for g in top]
    elif mm.n_tests:
        out.append(_no_gap_sentence(mm, alpha))
    out += where_explanations_fall(mm, limit=6)
    return out
