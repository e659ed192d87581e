"""Explainers: one registry, one file per method. Importing this package registers them all."""

# importing registers each method; the order of registration is the order of the CLI and web lists
from . import gradcam, gradcampp, hirescam, layercam, xgradcam, scorecam, eigencam  # noqa: F401, I001
from . import (  # noqa: F401
    attention_rollout,
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
