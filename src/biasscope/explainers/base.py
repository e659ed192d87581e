"""The explainer contract: one abstract method, declared parameters, and the Explanation value.

An explainer turns a normalised model batch ``x`` of shape ``(N, 3, S, S)`` and target classes
``(N,)`` into an :class:`Attribution` at (or below) model resolution. The API layer
(:mod:`biasscope.api`) resizes maps to each original image, times the work and adds faithfulness
checks, so an explainer only says how attributions are computed.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import CancelledError, ExplainerError, MethodUnavailableError
from ..models.adapter import ModelAdapter

__all__ = [
    "Attribution",
    "Explainer",
    "Explanation",
    "Param",
    "ProgressFn",
    "hooked",
]

#: ``progress(fraction)``; may raise :class:`CancelledError` to stop the work.
ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class Param:
    """A declared explainer parameter: feeds CLI options, web forms and validation."""

    name: str
    type: type
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (possibly a string from a form) to ``type`` and check its range."""
        if value is None or value == "":
            return self.default
        try:
            if self.type is bool:
                v = value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
            else:
                v = self.type(value)
        except (TypeError, ValueError):
            raise ExplainerError(f"parameter {self.name} must be {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and v not in self.choices:
            raise ExplainerError(f"parameter {self.name} must be one of {', '.join(self.choices)}, got {v!r}")
        if self.min is not None and v < self.min:
            raise ExplainerError(f"parameter {self.name} must be >= {self.min}, got {v}")
        if self.max is not None and v > self.max:
            raise ExplainerError(f"parameter {self.name} must be <= {self.max}, got {v}")
        return v

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "help": self.help,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices) if self.choices else None,
        }


@dataclass
class Attribution:
    """What :meth:`Explainer.attribute` returns for a batch.

    ``maps``: ``(N, h, w)`` float32 (model resolution, or coarser for CAMs: resized bilinearly).
    ``segments``: optional ``(N, S, S)`` int superpixel labels; maps are then piecewise constant
    and resized with nearest neighbour. ``checks``: per-image dicts of diagnostics
    (e.g. IG's completeness error). ``weights``: optional per-image superpixel weights.
    """

    maps: torch.Tensor
    checks: list[dict] = field(default_factory=list)
    segments: np.ndarray | None = None
    weights: list[np.ndarray] | None = None
    #: the fp32 logits ``(N, C)`` of the explainer's own forward pass and the targets it used, where
    #: the method can choose targets from them (CAMs with a target selector: prediction and
    #: explanation in one forward pass)
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


@dataclass
class Explanation:
    """One method's explanation of one image for one target class (a value, no rendering)."""

    heatmap: np.ndarray  # (H, W) float32, aligned with the original image
    method: str
    label: str
    signed: bool
    target: int
    target_name: str
    target_probability: float
    params: dict
    seconds: float
    checks: dict = field(default_factory=dict)
    model_heatmap: np.ndarray | None = None  # (S, S) at model resolution
    segments: np.ndarray | None = None  # (H, W) superpixels for LIME/SHAP

    def to_dict(self, *, include_heatmap: bool = False) -> dict:
        d = {
            "method": self.method,
            "label": self.label,
            "signed": self.signed,
            "target": self.target,
            "target_name": self.target_name,
            "target_probability": self.target_probability,
            "params": self.params,
            "seconds": self.seconds,
            "checks": self.checks,
            "shape": list(self.heatmap.shape),
            "min": float(np.min(self.heatmap)),
            "max": float(np.max(self.heatmap)),
        }
        if include_heatmap:
            d["heatmap"] = self.heatmap.tolist()
        return d


class Explainer(ABC):
    """Base class. Subclasses set the class attributes and implement :meth:`attribute`."""

    name: ClassVar[str]
    label: ClassVar[str]
    #: signed methods get a diverging colour map (positive supports the target, negative opposes)
    signed: ClassVar[bool] = False
    #: what the model must offer: 'gradients', 'hooks' (layer hooks), 'relu' (ReLU modules)
    requires: ClassVar[frozenset[str]] = frozenset()
    params: ClassVar[tuple[Param, ...]] = ()
    #: slow methods run as background jobs in the web app
    slow: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, adapter: ModelAdapter, **params: Any) -> None:
        self.adapter = adapter
        known = {p.name: p for p in self.params}
        unknown = set(params) - set(known)
        if unknown:
            raise ExplainerError(
                f"{self.name} has no parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(known) or 'none'}"
            )
        self.config = {n: p.coerce(params.get(n)) for n, p in known.items()}
        self.check_available(adapter)
        self._progress: ProgressFn | None = None

    @classmethod
    def check_available(cls, adapter: ModelAdapter) -> None:
        """Raise :class:`MethodUnavailableError` if this model cannot run this method."""
        if "hooks" in cls.requires and (not adapter.supports_hooks or adapter.target_layer is None):
            why = adapter.note or "the model has no convolutional layer to hook"
            raise MethodUnavailableError(f"{cls.label} is unavailable for {adapter.name}: {why}")
        if "relu" in cls.requires and not any(isinstance(m, nn.ReLU) for m in adapter.model.modules()):
            raise MethodUnavailableError(
                f"{cls.label} needs ReLU activations (guided backpropagation); "
                f"{adapter.name} uses other activations"
            )

    @classmethod
    def availability(cls, adapter: ModelAdapter) -> str | None:
        """``None`` if available on ``adapter``, else the reason."""
        try:
            cls.check_available(adapter)
        except MethodUnavailableError as exc:
            return str(exc)
        return None

    @abstractmethod
    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        """Attributions for normalised inputs ``x`` ``(N, 3, S, S)`` and class indices ``targets``."""

    # ------------------------------------------------------------------ helpers for subclasses
    def run(self, x: torch.Tensor, targets: torch.Tensor, progress: ProgressFn | None = None) -> Attribution:
        """:meth:`attribute` with a progress callback (which may cancel)."""
        self._progress = progress
        try:
            return self.attribute(x, targets)
        finally:
            self._progress = None

    def report(self, fraction: float) -> None:
        """Report progress in ``[0, 1]``; raises :class:`CancelledError` if the caller cancelled."""
        if self._progress is not None:
            self._progress(min(max(float(fraction), 0.0), 1.0))

    def generator(self) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.config.get("seed", 0)))
        return g

    @staticmethod
    def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)


@contextlib.contextmanager
def hooked(handles: list) -> Iterator[list]:
    """Remove every hook handle in ``handles`` on exit, also after errors."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
        handles.clear()


__all__ += ["CancelledError"]
