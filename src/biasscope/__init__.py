"""biasscope: audit image classifiers for bias and explain their decisions.

The public Python API; see the README for a runnable example.
"""

from .api import explain, explain_batch, predict
from .errors import BiasscopeError
from .evaluation import deletion_insertion, randomization_check
from .explainers import Explanation, get_explainer, list_explainers
from .images import load_image
from .models import ModelAdapter, Prediction, fetch_weights, load_model
from .render import render_overlay

__version__ = "0.1.0"

__all__ = [
    "BiasscopeError",
    "Explanation",
    "ModelAdapter",
    "Prediction",
    "__version__",
    "deletion_insertion",
    "explain",
    "explain_batch",
    "fetch_weights",
    "get_explainer",
    "list_explainers",
    "load_image",
    "load_model",
    "predict",
    "randomization_check",
    "render_overlay",
]
