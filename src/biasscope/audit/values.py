"""Typed values of an audit: what the store holds per image (:class:`ImageResult`).

The JSON form (:meth:`ImageResult.to_json`) is the record stored in the run's SQLite file since the
first schema version; :meth:`ImageResult.from_json` reads it back, including records written before
later keys (``quality``, ``agreement``, ``face``, ``view``) existed, so old runs load and resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["ImageResult", "json_safe"]

# the keys of an ok record, in their stored order (``face`` and ``view`` follow when present)
_OK_KEYS = ("image_id", "path", "status", "error", "width", "height", "top", "pred_index", "pred_class",
            "pred_prob", "pred_label", "p_true", "correct", "correct_top1", "correct_topk", "scores", "predicted",
            "target_index", "target_class", "shares", "quality", "agreement", "removal", "seconds")
_DICT_KEYS = ("scores", "predicted", "shares", "quality", "agreement", "removal")


@dataclass
class ImageResult:
    """One model's result on one image: prediction, correctness, region shares and removal effects.

    ``status`` is ``"error"`` (with ``error``) when the image could not be scored; the other fields then
    keep their defaults. ``shares`` is ``{method: {region: {"area_share", "share", "ratio", ...}}}``,
    ``quality`` ``{method: {check: value}}``, ``agreement`` ``{"a~b": rho}``, ``removal``
    ``{region: {"effect", ...}}``. ``face`` (face-part runs) and ``view`` (models that see a crop of
    the image) are written only when the run has them (``with_face`` / ``with_view``), as before.
    ``model`` (set when read from a store) and ``heatmaps`` (``{method: map}``, stored in their own
    table) are not part of the JSON record.
    """

    image_id: int
    path: str
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    top: list[dict] = field(default_factory=list)
    pred_index: int | None = None
    pred_class: str | None = None
    pred_prob: float | None = None
    pred_label: str | None = None
    p_true: float | None = None
    correct: bool | None = None
    correct_top1: bool | None = None
    correct_topk: bool | None = None
    scores: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, bool] = field(default_factory=dict)
    target_index: int | None = None
    target_class: str | None = None
    shares: dict[str, dict[str, dict]] = field(default_factory=dict)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    removal: dict[str, dict] = field(default_factory=dict)
    seconds: float | None = None
    face: dict | None = None
    view: dict | None = None
    with_face: bool = field(default=False, repr=False)
    with_view: bool = field(default=False, repr=False)
    model: str | None = field(default=None, compare=False)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, image_id: int, path: str, error: str) -> ImageResult:
        """The result of an image that could not be scored (unreadable, no face for a face model...)."""
        return cls(image_id=image_id, path=path, status="error", error=error)

    def to_json(self) -> dict[str, Any]:
        """The stored record (plain JSON types; key order as stored)."""
        if not self.ok:
            return json_safe({"image_id": self.image_id, "path": self.path, "status": self.status,
                              "error": self.error})
        d = {k: getattr(self, k) for k in _OK_KEYS}
        if self.with_face:
            d["face"] = self.face
        if self.with_view:
            d["view"] = self.view
        return json_safe(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], model: str | None = None) -> ImageResult:
        """Read a stored record back (keys added in later versions default to empty)."""
        kw = {k: d[k] for k in _OK_KEYS if k in d and not (k in _DICT_KEYS and d[k] is None)}
        return cls(**kw, face=d.get("face"), view=d.get("view"), with_face="face" in d, with_view="view" in d,
                   model=model)


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf by ``None`` and numpy scalars by Python ones, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
