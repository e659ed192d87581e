"""Load and validate images in one place: EXIF orientation, colour modes, size limits.

Every entry point (CLI, API, web, audit) goes through :func:`load_image`, so a hostile or odd file
is handled the same way everywhere: it comes back as an 8-bit RGB ``PIL.Image`` or raises
:class:`~biasscope.errors.ImageError` with a message that says what is wrong.
"""

from __future__ import annotations

import contextlib
import io
import os
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
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(f"{path}: " + MSG_TOO_MANY_BYTES.format(size=size, limit=max_bytes))
        data = path.read_bytes()
    else:
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLargeError(MSG_TOO_MANY_BYTES.format(size=len(data), limit=max_bytes))
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; alpha is composited on white, 16-bit is rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode in ("I", "F") and arr.max() <= 255:
            hi = 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
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
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
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
        raise ImageTooLargeError(name + f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(name + MSG_NOT_IMAGE) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(name + MSG_TRUNCATED + f" ({exc})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not make the pixels unusable
        img = ImageOps.exif_transpose(img) or img
    return _to_rgb(img)


def _check_pixels(w: int, h: int, limit: int, name: str = "") -> None:
    if w <= 0 or h <= 0:
        raise ImageError(name + f"image has no pixels ({w}x{h})")
    if w * h > limit:
        raise ImageTooLargeError(
            name + MSG_TOO_MANY_PIXELS.format(pixels=w * h, limit=limit, w=w, h=h)
        )
