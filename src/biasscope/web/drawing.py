"""Pictures the audit pages draw on an image: manifest regions outlined, face parts tinted."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["REGION_PALETTE", "draw_regions"]

#: Outline colours of regions, in the order of their sorted names.
REGION_PALETTE = [(47, 111, 237), (217, 130, 43), (58, 157, 93), (184, 74, 98), (125, 91, 166)]


def draw_regions(
    img: Image.Image,
    regions: Mapping[str, str],
    manifest_root: Path,
    *,
    face: Mapping[str, Any] | None = None,
    check_mask: Callable[[Path, str], None] | None = None,
    palette: Sequence[tuple[int, int, int]] = REGION_PALETTE,
) -> Image.Image:
    """A copy of ``img`` with each manifest region (``name -> spec``) outlined by its bounding box and named,
    and the face parts of ``face`` (a stored face record with landmarks) tinted. ``check_mask(path, spec)``
    is called for every mask file before it is read (the web app refuses files outside its data root)."""
    from ..regions import parse_region, region_mask

    out = img.copy()
    landmarks = face.get("landmarks") if face else None
    if face and landmarks:
        from ..faces import Face, face_part_masks, render_face_parts

        box = tuple(face.get("box") or (0, 0, 1, 1))
        masks = face_part_masks((img.height, img.width), Face(box=box, landmarks=np.asarray(landmarks, dtype=float)))
        out = render_face_parts(out, masks)
    draw = ImageDraw.Draw(out)
    for i, (name, text) in enumerate(sorted(regions.items())):
        spec = parse_region(name, text, manifest_root)
        if spec.path is not None and check_mask is not None:
            check_mask(spec.path, text)
        m = region_mask(spec, (img.height, img.width))
        ys, xs = np.nonzero(m)
        if len(xs):
            c = palette[i % len(palette)]
            draw.rectangle((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), outline=c,
                           width=max(1, img.width // 150))
            draw.text((int(xs.min()) + 3, int(ys.min()) + 2), name, fill=c)
    return out
