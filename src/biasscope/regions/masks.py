"""Named regions of an image: pixel boxes ``x0,y0,x1,y1`` or mask PNGs, as boolean masks.

A box covers columns ``x0 <= x < x1`` and rows ``y0 <= y < y1`` of the *original* image (the same
convention as PIL's ``crop``); it is clipped to the image. A mask PNG is non-zero (after conversion
to grayscale, or its alpha channel when it has one) inside the region; a mask drawn at another
resolution is resized to the image with nearest neighbour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BiasscopeError

__all__ = ["RegionSpec", "box_mask", "load_mask", "parse_region", "region_mask"]

_BOX_RE = re.compile(r"^\s*-?\d+(\.\d*)?\s*(,\s*-?\d+(\.\d*)?\s*){3}$")

MSG_BOX_ORDER = "box {value!r} must have x0 < x1 and y0 < y1"
MSG_BOX_FORMAT = "{value!r} is neither a box x0,y0,x1,y1 nor a mask PNG path"
MSG_MASK_MISSING = "mask file {path} not found"
MSG_MASK_EMPTY = "mask {path} has no pixel inside the region"


@dataclass(frozen=True)
class RegionSpec:
    """One region of one image: a box in original-image pixels, or a mask file."""

    name: str
    box: tuple[float, float, float, float] | None = None
    path: Path | None = None

    @property
    def kind(self) -> str:
        return "box" if self.box is not None else "mask"

    def to_text(self, base_dir: Path | None = None) -> str:
        """The manifest cell this spec came from (mask paths relative to ``base_dir``)."""
        if self.box is not None:
            return ",".join(f"{v:g}" for v in self.box)
        assert self.path is not None
        if base_dir is not None:
            try:
                return self.path.relative_to(base_dir).as_posix()
            except ValueError:
                pass
        return str(self.path)


def parse_region(name: str, value: str, base_dir: Path | None = None) -> RegionSpec:
    """Parse a manifest cell: ``"x0,y0,x1,y1"`` or a path to a mask PNG (relative to ``base_dir``).

    Raises :class:`ValueError` with a user-facing message for malformed boxes; does not check
    that a mask file exists (the manifest loader reports missing files with the row number).
    """
    text = str(value).strip()
    if _BOX_RE.match(text):
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
        if not (x0 < x1 and y0 < y1):
            raise ValueError(MSG_BOX_ORDER.format(value=text))
        return RegionSpec(name=name, box=(x0, y0, x1, y1))
    if "," in text and not text.lower().endswith((".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jpg")):
        raise ValueError(MSG_BOX_FORMAT.format(value=text))
    p = Path(text)
    if base_dir is not None and not p.is_absolute():
        p = base_dir / p
    return RegionSpec(name=name, path=p)


def box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of ``box`` (``x1``, ``y1`` exclusive), clipped to ``size=(H, W)``."""
    h, w = size
    x0, y0, x1, y1 = box
    c0, c1 = int(np.clip(round(x0), 0, w)), int(np.clip(round(x1), 0, w))
    r0, r1 = int(np.clip(round(y0), 0, h)), int(np.clip(round(y1), 0, h))
    m = np.zeros((h, w), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Load a mask image as a boolean ``(H, W)`` mask (alpha if present, else grayscale > 127)."""
    p = Path(path)
    if not p.is_file():
        raise BiasscopeError(MSG_MASK_MISSING.format(path=p))
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                band = im.convert("RGBA").getchannel("A")
            else:
                band = im.convert("L")
    except (OSError, ValueError) as exc:
        raise BiasscopeError(f"mask {p} is not a readable image ({exc})") from None
    h, w = size
    if band.size != (w, h):
        band = band.resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(band) > 127


def region_mask(spec: RegionSpec, size: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of ``spec`` for an image of ``size=(H, W)``."""
    if spec.box is not None:
        return box_mask(spec.box, size)
    assert spec.path is not None
    return load_mask(spec.path, size)
