"""Explainers: one registry, one file per method. Importing this package registers them all."""

from . import (  # noqa: F401  (importing registers each method)
    gradcam,
    gradcampp,
    gradient_shap,
    guided_gradcam,
    integrated_gradients,
    kernel_shap,
    lime,
    occlusion,
    smoothgrad,
)
from .base import SEED_MAX, Attribution, Explainer, Explanation, Param
from .registry import EXPLAINERS, get_explainer, list_explainers, register

__all__ = [
    "EXPLAINERS",
    "SEED_MAX",
    "Attribution",
    "Explainer",
    "Explanation",
    "Param",
    "get_explainer",
    "list_explainers",
    "register",
]
