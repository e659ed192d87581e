"""Average explanations per group in the canonical face frame, and difference maps between groups.

Averaging heatmaps of different photos only means something once every face sits in the same
place: each heatmap (original-image pixels) is warped with its face's alignment transform into
the :class:`~biasscope.faces.align.FaceFrame`. Pixels of the frame that fall outside an image are
NaN for that image and left out of that pixel's mean (``coverage`` counts the images that
contribute to each pixel).

``normalize`` chooses what is averaged: ``"none"`` (raw values), ``"max"`` (each map divided by its
largest absolute value, so every image weighs the same) or ``"sum"`` (divided by the sum of absolute
values: each map becomes a distribution of attribution mass).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from ..render import colorize, legend_image, value_limits
from .align import FaceFrame, alignment_transform, warp_array
from .detect import Face

__all__ = [
    "GroupHeatmap",
    "aggregate_heatmaps",
    "align_face_image",
    "align_heatmap",
    "difference_map",
    "normalize_heatmap",
    "render_group_heatmaps",
]

Normalize = Literal["none", "max", "sum"]


def normalize_heatmap(heatmap: np.ndarray, mode: Normalize = "none") -> np.ndarray:
    """Scale a map by ``mode`` ("none", "max" |h|, "sum" |h|); NaNs are ignored, all-zero maps kept."""
    h = np.asarray(heatmap, dtype=np.float64)
    if mode == "none":
        return h
    if mode not in ("max", "sum"):
        raise ValueError(f"normalize must be 'none', 'max' or 'sum', not {mode!r}")
    a = np.abs(h)
    denom = np.nanmax(a) if mode == "max" else np.nansum(a)
    return h / denom if np.isfinite(denom) and denom > 0 else h


def align_heatmap(heatmap: np.ndarray, face: Face | np.ndarray, frame: FaceFrame | None = None) -> np.ndarray:
    """Warp an ``(H, W)`` heatmap into the canonical frame; NaN where the frame leaves the image."""
    frame = frame or FaceFrame()
    lm = face.landmarks if isinstance(face, Face) else face
    return warp_array(heatmap, alignment_transform(lm, frame), (frame.size, frame.size), fill=np.nan)


def align_face_image(
    image: Image.Image | np.ndarray, face: Face | np.ndarray, frame: FaceFrame | None = None
) -> np.ndarray:
    """The face aligned into the canonical frame as float RGB ``(S, S, 3)``; NaN outside the image."""
    frame = frame or FaceFrame()
    lm = face.landmarks if isinstance(face, Face) else face
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    return warp_array(arr, alignment_transform(lm, frame), (frame.size, frame.size), fill=np.nan)


@dataclass(frozen=True)
class GroupHeatmap:
    """The mean aligned heatmap of one group (or label x group cell)."""

    key: Hashable
    mean: np.ndarray  # (S, S); NaN where no image covers the pixel
    n: int  # images in the group
    coverage: np.ndarray  # (S, S) images contributing to each pixel
    mean_face: np.ndarray | None = None  # (S, S, 3) mean aligned image, if images were given

    def to_dict(self) -> dict:
        return {"key": self.key if isinstance(self.key, str) else list(self.key), "n": self.n,
                "min_coverage": int(self.coverage.min()), "max": float(np.nanmax(self.mean))}


def _nanmean(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = ~np.isnan(stack)
    count = valid.sum(0)
    total = np.where(valid, stack, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count


def aggregate_heatmaps(
    aligned: Sequence[np.ndarray],
    keys: Sequence[Hashable],
    *,
    normalize: Normalize = "none",
    faces: Sequence[np.ndarray] | None = None,
) -> dict[Hashable, GroupHeatmap]:
    """Mean of already aligned ``(S, S)`` heatmaps per key (a group, or a ``(label, group)`` tuple).

    ``faces`` (aligned images ``(S, S, 3)``, same order) adds each group's mean face.
    """
    if len(aligned) != len(keys):
        raise ValueError(f"{len(aligned)} heatmaps but {len(keys)} group keys")
    if faces is not None and len(faces) != len(aligned):
        raise ValueError(f"{len(faces)} aligned faces but {len(aligned)} heatmaps")
    out: dict[Hashable, GroupHeatmap] = {}
    for key in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        stack = np.stack([normalize_heatmap(aligned[i], normalize) for i in idx])
        mean, count = _nanmean(stack)
        face = None
        if faces is not None:
            face, _ = _nanmean(np.stack([np.asarray(faces[i], dtype=np.float64) for i in idx]))
        out[key] = GroupHeatmap(key=key, mean=mean, n=len(idx), coverage=count, mean_face=face)
    return out


def difference_map(a: GroupHeatmap, b: GroupHeatmap) -> np.ndarray:
    """``a.mean - b.mean`` (positive where group ``a`` gets more attribution); NaN where either is."""
    return a.mean - b.mean


def _label(key: Hashable) -> str:
    return " / ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _base(face: np.ndarray | None, size: int) -> np.ndarray:
    if face is None:
        return np.full((size, size, 3), 128.0)
    grey = np.nan_to_num(np.asarray(face, dtype=np.float64), nan=0.0).mean(-1, keepdims=True)
    return np.repeat(grey, 3, axis=-1)


def _overlay(base: np.ndarray, heat: np.ndarray, signed: bool, limits: tuple[float, float]) -> Image.Image:
    rgba = colorize(np.nan_to_num(heat, nan=0.0), signed, limits).astype(np.float64)
    a = rgba[..., 3:4] / 255.0 * 0.7
    out = base * (1 - a) + rgba[..., :3] * a
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def render_group_heatmaps(
    groups: dict[Hashable, GroupHeatmap],
    *,
    signed: bool = False,
    pairs: Sequence[tuple[Hashable, Hashable]] | None = None,
    cell: int = 160,
) -> Image.Image:
    """A grid: each group's mean heatmap over its mean aligned face, titled with its ``n``; below,
    difference maps (``a - b`` for each pair; default: every group minus the first) on a diverging
    scale (blue: less than ``b``, red: more) centred on zero, each row with its legend.

    All group maps share one colour scale and all difference maps another, so cells compare.
    """
    keys = list(groups)
    if not keys:
        raise ValueError("no groups to render")
    pairs = list(pairs) if pairs is not None else [(k, keys[0]) for k in keys[1:]]
    means = np.stack([groups[k].mean for k in keys])
    lim = value_limits(np.nan_to_num(means, nan=0.0), signed)
    diffs = [difference_map(groups[a], groups[b]) for a, b in pairs]
    dlim = value_limits(np.nan_to_num(np.stack(diffs), nan=0.0), True) if diffs else (-1.0, 1.0)
    title_h, legend_h = 18, 40
    cols = max(len(keys), len(diffs), 1)
    rows = 1 + (1 if diffs else 0)
    sheet = Image.new("RGB", (cols * cell, rows * (cell + title_h + legend_h)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for j, k in enumerate(keys):
        g = groups[k]
        tile = _overlay(_base(g.mean_face, g.mean.shape[0]), g.mean, signed, lim).resize((cell, cell))
        sheet.paste(tile, (j * cell, y + title_h))
        draw.text((j * cell + 3, y + 3), f"{_label(k)} (n={g.n})", fill="black")
    sheet.paste(legend_image(signed, lim, width=min(256, cols * cell)), (0, y + title_h + cell + 2))
    y += cell + title_h + legend_h
    if diffs:
        for j, ((a, b), d) in enumerate(zip(pairs, diffs)):
            faces = [groups[a].mean_face, groups[b].mean_face]
            base = _base(None if faces[0] is None or faces[1] is None else (faces[0] + faces[1]) / 2, d.shape[0])
            sheet.paste(_overlay(base, d, True, dlim).resize((cell, cell)), (j * cell, y + title_h))
            draw.text((j * cell + 3, y + 3), f"{_label(a)} - {_label(b)}", fill="black")
        sheet.paste(legend_image(True, dlim, width=min(256, cols * cell)), (0, y + title_h + cell + 2))
    return sheet
