"""Load and validate images in one place: EXIF orientation, colour modes, size limits.

Every entry point (CLI, API, web, audit) goes through :func:`load_image`, so a hostile or odd file
is handled the same way everywhere: it comes back as an 8-bit RGB ``PIL.Image`` or raises
:class:`~biasscope.errors.ImageError` with a message that says what is wrong.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTooLargeError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "load_image",
    "sniff_image_type",
]

#: Refuse images with more pixels than this (also guards against decompression bombs).
DEFAULT_MAX_PIXELS = 40_000_000
#: Refuse files larger than this many bytes.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})

MSG_EMPTY = "the file is empty (0 bytes)"
MSG_NOT_IMAGE = "not a readable image (supported: JPEG, PNG, WebP, BMP, GIF, TIFF)"
MSG_TRUNCATED = "the image file is truncated or corrupt"
MSG_TOO_MANY_PIXELS = "image has {pixels:,} pixels; the limit is {limit:,} ({w}x{h})"
MSG_TOO_MANY_BYTES = "file is {size:,} bytes; the limit is {limit:,}"
MSG_FORMAT = "image format {fmt} is not supported (supported: JPEG, PNG, WebP, BMP, GIF, TIFF)"
MSG_RANGE = ("{what} has values from {lo:g} to {hi:g}; biasscope reads floats in 0..1 (or 0..255) and integers "
             "in 0..255 or 0..65535 (16-bit). Rescale the image into one of those ranges and save it again")
MSG_NONFINITE = "{what} has NaN or infinite values; it cannot be shown as a picture"

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image | np.ndarray

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_image_type(head: bytes) -> str | None:
    """Detect the image type from the first bytes (never from a file name)."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _read_bytes(source: str | os.PathLike | bytes | BinaryIO, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            if not path.is_file():
                raise ImageError(f"{path}: no such file")
            size = path.stat().st_size
            if size > max_bytes:
                raise ImageTooLargeError(f"{path}: " + MSG_TOO_MANY_BYTES.format(size=size, limit=max_bytes))
            data = path.read_bytes()
        except (OSError, ValueError) as exc:  # a name over 255 bytes, a NUL byte, no permission
            raise ImageError(f"{str(path)[:300]!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLargeError(MSG_TOO_MANY_BYTES.format(size=len(data), limit=max_bytes))
    return data


def _scale_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """8-bit values from the real range of ``arr`` (see :data:`MSG_RANGE` for what is refused).

    Floats in [0, 1] are scaled by 255 and floats in (1, 255] taken as 8-bit values; 16-bit
    integers (uint16, or wider integers with a value above 255) are scaled by 1/257 (65535 -> 255);
    other integers in 0..255 are 8-bit values; bools are 0/255. Negative,
    non-finite or larger values have no agreed meaning and are refused rather than guessed.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.size == 0:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(MSG_NONFINITE.format(what=what))
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        raise ImageError(MSG_RANGE.format(what=what, lo=lo, hi=hi))
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255 and arr.dtype != np.uint16:
            return arr.astype(np.uint8)  # 8-bit values, possibly held in a wider integer type
        if lo >= 0 and hi <= 65535:
            return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
        raise ImageError(MSG_RANGE.format(what=what, lo=lo, hi=hi))
    raise ImageError(f"{what} has pixel type {arr.dtype}, which is not supported")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; alpha is composited on white, 16-bit and float by their range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        what = "a 32-bit float image" if img.mode == "F" else f"a {img.mode} integer image"
        return Image.fromarray(_scale_to_uint8(arr, what)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Load ``source`` (path, bytes, file object, PIL image or HxWx3 uint8 array) as RGB.

    Applies the EXIF orientation, converts grayscale/RGBA/CMYK/16-bit to 8-bit RGB, and refuses
    empty, truncated, non-image, oversized and decompression-bomb inputs with :class:`ImageError`.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(source) or source)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ImageError(f"array image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        arr = _scale_to_uint8(arr, f"an array image of {arr.dtype}")
        _check_pixels(arr.shape[1], arr.shape[0], max_pixels)
        return _to_rgb(Image.fromarray(arr))

    data = _read_bytes(source, max_bytes)
    name = f"{source}: " if isinstance(source, str | os.PathLike) else ""
    if not data:
        raise ImageError(name + MSG_EMPTY)
    fmt = sniff_image_type(data[:16])
    if fmt is None:
        raise ImageError(name + MSG_NOT_IMAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(name + MSG_FORMAT.format(fmt=img.format))
            _check_pixels(img.width, img.height, max_pixels, name)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(name + _bomb_message(exc, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(name + MSG_NOT_IMAGE) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(name + MSG_TRUNCATED + f" ({exc})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not make the pixels unusable
        img = ImageOps.exif_transpose(img) or img
    return _to_rgb(img)


def _bomb_message(exc: Exception, limit: int) -> str:
    """Pillow refused the header before our own check could: say so with the configured limit."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    if m is None:
        return f"refused as a decompression bomb: it claims more pixels than the limit of {limit:,}"
    pixels = int(m.group(1))
    if pixels > limit:
        return f"refused as a decompression bomb: image has {pixels:,} pixels; the limit is {limit:,}"
    return (f"refused as a decompression bomb: image has {pixels:,} pixels, above the image library's "
            f"own limit of {int(Image.MAX_IMAGE_PIXELS or 0):,} (the configured limit is {limit:,})")


def _check_pixels(w: int, h: int, limit: int, name: str = "") -> None:
    if w <= 0 or h <= 0:
        raise ImageError(name + f"image has no pixels ({w}x{h})")
    if w * h > limit:
        raise ImageTooLargeError(
            name + MSG_TOO_MANY_PIXELS.format(pixels=w * h, limit=limit, w=w, h=h)
        )
