"""What defines an audit run: the models to load (:class:`ModelSource`) and what to compute per image
(:class:`AuditConfig`). Shared by the runner, the batch scorer and the engines (no import of either)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import BiasscopeError
from ..models.adapter import ModelAdapter
from ..regions.removal import RemovalConfig
from .concepts import Match

__all__ = ["QUALITY_CHECKS", "AuditConfig", "ModelSource"]

#: per-explanation checks stored with each image (explanation quality by group)
QUALITY_CHECKS = ("deletion_auc", "insertion_auc", "completeness_relative")


@dataclass(frozen=True)
class ModelSource:
    """A model to load when its turn comes: a zoo name, a file, or ``ARCH=STATE_DICT.pth``.

    ``key`` names the model in the run (default: ``spec``); ``options`` go to ``load_model``.
    """

    spec: str
    key: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.key or self.spec

    def load(self) -> ModelAdapter:
        from ..models import load_model

        arch, sep, weights = self.spec.partition("=")
        if sep:
            opts = dict(self.options)
            if opts.get("weights") not in (None, "", weights):
                raise BiasscopeError(f"model {self.spec!r} names its state dict and was also given weights "
                                     f"{opts['weights']!r}; give one of them")
            opts["weights"] = weights
            return load_model(arch, **opts)
        return load_model(self.spec, **self.options)


@dataclass
class AuditConfig:
    """What to compute for each image (the parts that define a run's results)."""

    groups: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    concepts: dict[str, list[str]] = field(default_factory=dict)
    top_k: int = 5
    match: Match = "top1"
    #: explain the true label's class (the concept class with the highest probability) or the top-1
    explain_target: Literal["label", "predicted"] = "label"
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    removal: RemovalConfig | None = field(default_factory=RemovalConfig)
    #: stored heatmaps are downsampled to at most this side (for reports and drill-down thumbnails)
    heatmap_size: int = 64
    #: detect faces: face-part regions and quality flags per image (see :mod:`.face_audit`)
    face_parts: bool = False
    #: deletion/insertion AUC of every explanation (explanation quality per label x group; costs forwards)
    faithfulness: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["removal"] = self.removal.to_dict() if self.removal else None
        for flag in ("face_parts", "faithfulness"):
            if not d[flag]:
                d.pop(flag)  # runs stored before the option existed resume unchanged
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditConfig:
        d = dict(d)
        rem = d.get("removal")
        if rem is not None:
            fill = rem.get("fill", "mean")
            d["removal"] = RemovalConfig(mode=rem["mode"], fill=fill if isinstance(fill, str) else tuple(fill),
                                         blur_radius=rem.get("blur_radius"))
        return cls(**d)
