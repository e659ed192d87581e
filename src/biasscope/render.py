"""Rendering, kept apart from computing: colour maps, overlays, legends, PNG bytes.

Signed methods (LIME, SHAP, IG, guided) use a diverging map centred on zero (blue = against the
target, red = for it) scaled by a robust symmetric limit; unsigned methods (CAMs, occlusion) use a
sequential map from zero to a robust maximum.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from .explainers.base import Explanation

__all__ = ["colorize", "legend_image", "png_bytes", "render_heatmap", "render_overlay", "value_limits"]

DIVERGING = "RdBu_r"
SEQUENTIAL = "inferno"


def value_limits(heatmap: np.ndarray, signed: bool, *, percentile: float = 99.5) -> tuple[float, float]:
    """Colour-scale limits: symmetric for signed maps, ``[0, p99.5]`` (or min..max) otherwise."""
    h = np.asarray(heatmap, dtype=np.float64)
    if signed:
        lim = float(np.percentile(np.abs(h), percentile)) or float(np.abs(h).max()) or 1.0
        return -lim, lim
    lo = min(0.0, float(h.min()))
    hi = float(np.percentile(h, percentile)) if h.size else 1.0
    if hi <= lo:
        hi = float(h.max()) if h.max() > lo else lo + 1.0
    return lo, hi


def colorize(heatmap: np.ndarray, signed: bool, limits: tuple[float, float] | None = None) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 4)`` RGBA uint8 with alpha following magnitude."""
    lo, hi = limits or value_limits(heatmap, signed)
    h = np.asarray(heatmap, dtype=np.float32)
    norm = np.clip((h - lo) / (hi - lo), 0.0, 1.0)
    rgba = (colormaps[DIVERGING if signed else SEQUENTIAL](norm) * 255).astype(np.uint8)
    mag = np.abs(2 * norm - 1) if signed else norm
    rgba[..., 3] = (np.clip(mag * 1.5, 0, 1) * 255).astype(np.uint8)
    return rgba


def render_overlay(
    image: Image.Image, explanation: Explanation | np.ndarray, *, signed: bool | None = None, alpha: float = 0.6
) -> Image.Image:
    """Blend the heatmap over ``image`` (same size); returns an RGB image."""
    heat = explanation.heatmap if isinstance(explanation, Explanation) else np.asarray(explanation)
    is_signed = explanation.signed if isinstance(explanation, Explanation) else bool(signed)
    if heat.shape != (image.height, image.width):
        raise ValueError(f"heatmap shape {heat.shape} does not match image {image.height}x{image.width}")
    rgba = colorize(heat, is_signed).astype(np.float32)
    a = (rgba[..., 3:4] / 255.0) * alpha
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base * (1 - a) + rgba[..., :3] * a
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def render_heatmap(explanation: Explanation) -> Image.Image:
    """The colour-mapped heatmap alone (RGBA, transparent where attribution is near zero)."""
    return Image.fromarray(colorize(explanation.heatmap, explanation.signed))


def legend_image(signed: bool, limits: tuple[float, float], *, width: int = 256, height: int = 36) -> Image.Image:
    """A colour bar with its end values (and zero for signed maps)."""
    bar = np.linspace(limits[0], limits[1], width)[None].repeat(14, 0)
    rgb = colorize(bar, signed, limits)[..., :3]
    img = Image.new("RGB", (width, height), "white")
    img.paste(Image.fromarray(rgb), (0, 0))
    d = ImageDraw.Draw(img)
    d.text((2, 18), f"{limits[0]:.3g}", fill="black")
    label = f"{limits[1]:.3g}"
    d.text((width - 7 * len(label) - 2, 18), label, fill="black")
    if signed:
        d.text((width // 2 - 3, 18), "0", fill="black")
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
