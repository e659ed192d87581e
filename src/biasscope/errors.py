"""Errors with messages a user can act on. Messages are constants so tests can assert on them."""

from __future__ import annotations


class BiasscopeError(Exception):
    """Base class: every error biasscope raises on purpose. ``str(err)`` is user-facing."""

    status = 400  # HTTP status the web layer answers with


class ImageError(BiasscopeError):
    """An input image is unreadable, hostile or too large."""


class ImageTooLargeError(ImageError):
    status = 413


class ModelError(BiasscopeError):
    """A model cannot be built or loaded."""


class WeightsMissingError(ModelError):
    """Weights are not on this machine and downloading was not asked for."""

    status = 409


class ExplainerError(BiasscopeError):
    """An explainer cannot run with these parameters or on this model."""


class MethodUnavailableError(ExplainerError):
    """The method needs something this model does not offer (e.g. layer hooks on TorchScript)."""


class ManifestError(BiasscopeError):
    """A manifest is malformed; ``problems`` lists them row by row."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        detail = "".join(f"\n  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(message + detail + more)


class CancelledError(BiasscopeError):
    """Work was cancelled by the user."""

    status = 409
