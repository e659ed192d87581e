"""Where does the explanation fall? Positive attribution mass inside a region, relative to area.

``share = sum(max(h, 0) inside) / sum(max(h, 0))``; ``area_share = |region| / |image|``;
``ratio = share / area_share`` (1 means "as much as its size", above 1 means the model looks there
more than chance). With no positive mass anywhere the share is undefined (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RegionShare", "attribution_share"]


@dataclass(frozen=True)
class RegionShare:
    """The positive attribution share of one region in one heatmap."""

    share: float
    area_share: float
    ratio: float
    positive_mass: float

    def to_dict(self) -> dict:
        return {
            "share": self.share,
            "area_share": self.area_share,
            "ratio": self.ratio,
            "positive_mass": self.positive_mass,
        }


def attribution_share(heatmap: np.ndarray, mask: np.ndarray) -> RegionShare:
    """Share of positive attribution of ``heatmap`` inside boolean ``mask`` (same ``(H, W)``)."""
    h = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if h.shape != m.shape:
        raise ValueError(f"heatmap shape {h.shape} does not match mask shape {m.shape}")
    pos = np.clip(h, 0.0, None)
    total = float(pos.sum())
    inside = float(pos[m].sum())
    area = float(m.mean()) if m.size else 0.0
    share = inside / total if total > 0 else math.nan
    ratio = share / area if area > 0 and not math.isnan(share) else math.nan
    return RegionShare(share=share, area_share=area, ratio=ratio, positive_mass=inside)
