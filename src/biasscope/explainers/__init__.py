"""Explainers: one registry, one file per method. Importing this package registers them all.

A new method is one new module here with a ``@register``-ed :class:`Explainer` subclass (set its
``order`` to place it in listings); modules whose names start with ``_`` hold shared helpers."""

from ._baselines import BASELINES, make_baseline
from .base import SEED_MAX, Attribution, Explainer, Explanation, Param, ProgressFn, TargetSelector
from .registry import EXPLAINERS, discover, get_explainer, is_signed, list_explainers, register

discover(__name__, __path__)

__all__ = [
    "BASELINES",
    "EXPLAINERS",
    "SEED_MAX",
    "Attribution",
    "Explainer",
    "Explanation",
    "Param",
    "ProgressFn",
    "TargetSelector",
    "discover",
    "get_explainer",
    "is_signed",
    "list_explainers",
    "make_baseline",
    "register",
]
