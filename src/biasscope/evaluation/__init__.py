"""Evaluation of explanations: faithfulness curves and the randomisation sanity check."""

from .faithfulness import deletion_insertion, perturbation_curves
from .sanity import RandomizationResult, randomization_check

__all__ = ["RandomizationResult", "deletion_insertion", "perturbation_curves", "randomization_check"]
