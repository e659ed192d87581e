"""How an audit's findings are computed: :class:`MetricsOptions`, the minimum effect per kind of metric.

Options can change without re-running the models (``biasscope audit-report`` recomputes metrics.json).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["DEFAULT_MIN_EFFECT", "MetricsOptions", "effect_kind", "mean_value"]

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
