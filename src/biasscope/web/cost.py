"""What an explanation request costs, in forward passes of its model, and whether it must be queued.

``POST /api/explain`` answers in the request thread only while :func:`queue_reason` finds nothing: no slow
method and an estimated cost within the server's ``MAX_SYNC_COST``.
"""

from __future__ import annotations

from flask import current_app

from ..models import ModelAdapter

__all__ = ["FAITHFULNESS_FORWARDS", "estimated_cost", "queue_reason"]

#: deletion and insertion curves: 2 x (20 + 1) forward passes per map (evaluation.deletion_insertion)
FAITHFULNESS_FORWARDS = 42


def estimated_cost(job, adapter: ModelAdapter, classes: dict) -> float:
    """A job's estimated work in forward passes of its model: the prediction, each method's own
    estimate (:meth:`Explainer.cost`) and, with faithfulness, each map's deletion and insertion curves."""
    total = 1.0
    for name, cls in classes.items():
        total += cls.cost(job.params[name], adapter.input_size)
        if job.faithfulness:
            total += FAITHFULNESS_FORWARDS
    return total


def queue_reason(job, adapter: ModelAdapter, classes: dict) -> str | None:
    """Why this request must run as a background job, or None when it is cheap enough to answer now."""
    slow = [c.label for c in classes.values() if c.slow]
    if slow:
        return f"{', '.join(slow)} {'is' if len(slow) == 1 else 'are'} slow"
    cost, bound = estimated_cost(job, adapter, classes), float(current_app.config["MAX_SYNC_COST"])
    if cost > bound:
        return f"the estimated cost ({cost:,.0f} forward passes) is above this server's bound of {bound:,.0f}"
    return None
