"""Small response helpers shared by the audit routes (PNG answers, thumbnails, 202 Accepted)."""

from __future__ import annotations

import io

from flask import Response, jsonify, send_file
from PIL import Image

from .jobs import fast_png

__all__ = ["accepted", "png_response", "thumbnail"]


def png_response(img: Image.Image) -> Response:
    """``img`` as a quickly encoded PNG answer."""
    return send_file(io.BytesIO(fast_png(img)), mimetype="image/png")


def thumbnail(img: Image.Image, side: int) -> Image.Image:
    """``img`` downscaled in place so that its longer side is at most ``side`` (never upscaled)."""
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def accepted(body: dict, location: str | None = None) -> Response:
    """202 Accepted with ``body`` and, when given, the ``Location`` to follow."""
    resp = jsonify(body)
    resp.status_code = 202
    if location:
        resp.headers["Location"] = location
    return resp
