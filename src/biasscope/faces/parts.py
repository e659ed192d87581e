"""Face-part regions from 68 landmarks: boolean ``(H, W)`` masks in original-image pixels.

The parts partition the image (every pixel belongs to exactly one part). They are drawn in the
face's own frame, so they follow head roll and scale: origin at the midpoint of the eye centres,
``u`` along the line from the eye on the image's left to the one on its right, ``v`` perpendicular
pointing down the face, both in units of the interocular distance ``d``. Landmark numbers are the
iBUG 300-W order dlib uses. Where parts overlap, the earlier in :data:`FACE_PARTS` wins.

- ``eyes``: two ellipses centred on each eye's landmarks (36-41, 42-47), 1.25 times the eye's
  corner-to-corner width and 2.2 times its lid-to-lid height (at least 0.26 d tall): eye and lids.
- ``eyebrows``: each brow's landmark polyline (17-21, 22-26) thickened to a band 0.18 d tall.
- ``mouth``: the outer lip polygon (48-59), enlarged by 15% about its centre.
- ``nose``: the convex hull of the bridge (27-30, widened to +-0.14 d at the top and +-0.2 d at the
  tip) and the nostrils (31-35, widened by 0.05 d; 0.05 d below the base).
- ``jaw_chin``: the polygon of jaw landmarks 3-13 closed through the mouth corners (54, 48):
  the lower face around and below the mouth (the mouth itself excluded).
- ``face_skin``: the face outline (jaw 0-16, then the eyebrows raised by 0.65 d as the forehead's
  top) minus all the parts above: cheeks, forehead, temples.
- ``hair_band``: above a line 0.25 d below the eye centres, the ring between the face outline and
  the outline enlarged 1.4 times about the nose bridge (landmark 28): where hair or head covering
  usually is.
- ``background``: everything else (ears, neck, body, clothes, scene).

These are geometric approximations from landmarks, not a segmentation: check them on your images
with :func:`render_face_parts`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy.spatial import ConvexHull
from skimage.draw import polygon as fill_polygon

from ..errors import BiasscopeError
from .detect import Face, detect_faces

__all__ = [
    "FACE_PARTS",
    "FACE_PART_COLOURS",
    "MSG_NO_FACE",
    "NoFaceError",
    "face_part_masks",
    "face_part_polygons",
    "face_regions",
    "render_face_parts",
]

FACE_PARTS: tuple[str, ...] = (
    "eyes",
    "eyebrows",
    "mouth",
    "nose",
    "jaw_chin",
    "face_skin",
    "hair_band",
    "background",
)
FACE_PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "eyes": (31, 119, 180),
    "eyebrows": (148, 103, 189),
    "mouth": (214, 39, 40),
    "nose": (255, 127, 14),
    "jaw_chin": (23, 190, 207),
    "face_skin": (44, 160, 44),
    "hair_band": (227, 119, 194),
    "background": (127, 127, 127),
}
MSG_NO_FACE = "no face found in the image (dlib's frontal detector); face-part regions need a visible face"

FOREHEAD_RAISE = 0.65
HAIR_SCALE = 1.4


class NoFaceError(BiasscopeError):
    """Face geometry was asked for an image where no face was detected."""

    status = 422


class _Frame:
    """The face frame: ``p = origin + d * (u * ex + v * ey)``."""

    def __init__(self, face: Face) -> None:
        left, right = face.eye_centres()
        self.origin = (left + right) / 2
        self.d = max(float(np.hypot(*(right - left))), 1e-6)
        self.ex = (right - left) / self.d
        self.ey = np.array([-self.ex[1], self.ex[0]])

    def to_image(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.origin + self.d * (np.outer(u, self.ex) + np.outer(v, self.ey))

    def to_frame(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = (np.asarray(pts, dtype=np.float64) - self.origin) / self.d
        return rel @ self.ex, rel @ self.ey


def _ellipse(centre: np.ndarray, ax_u: np.ndarray, ax_v: np.ndarray, n: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + np.outer(np.cos(t), ax_u) + np.outer(np.sin(t), ax_v)


def _scaled(pts: np.ndarray, about: np.ndarray, k: float) -> np.ndarray:
    return about + (pts - about) * k


def _hull(pts: np.ndarray) -> np.ndarray:
    return pts[ConvexHull(pts).vertices]


def face_part_polygons(face: Face) -> dict[str, list[np.ndarray]]:
    """Polygons ``(K, 2)`` of ``(x, y)`` image points for each part (``background`` has none).

    ``face_skin`` and ``hair_band`` are given as their outer outline (the other parts are carved
    out of them when rasterised); ``jaw_chin`` likewise includes the mouth.
    """
    lm = face.landmarks
    fr = _Frame(face)
    d = fr.d
    out: dict[str, list[np.ndarray]] = {}
    eyes = []
    for sl in (slice(36, 42), slice(42, 48)):
        pts = lm[sl]
        c = pts.mean(0)
        width = float(np.hypot(*(pts[3] - pts[0])))
        height = (float(np.hypot(*(pts[1] - pts[5]))) + float(np.hypot(*(pts[2] - pts[4])))) / 2
        half_h = max(height * 2.2, 0.26 * d) / 2
        eyes.append(_ellipse(c, fr.ex * width * 1.25 / 2, fr.ey * half_h))
    out["eyes"] = eyes
    band = 0.09 * d
    out["eyebrows"] = [
        np.vstack([lm[sl] - band * fr.ey, (lm[sl] + band * fr.ey)[::-1]]) for sl in (slice(17, 22), slice(22, 27))
    ]
    mouth = lm[48:60]
    out["mouth"] = [_scaled(mouth, mouth.mean(0), 1.15)]
    nose_pts = np.vstack(
        [
            lm[27] - 0.14 * d * fr.ex,
            lm[27] + 0.14 * d * fr.ex,
            lm[30] - 0.2 * d * fr.ex,
            lm[30] + 0.2 * d * fr.ex,
            lm[31] - 0.05 * d * fr.ex,
            lm[35] + 0.05 * d * fr.ex,
            lm[32:35],
            lm[33] + 0.05 * d * fr.ey,
        ]
    )
    out["nose"] = [_hull(nose_pts)]
    out["jaw_chin"] = [np.vstack([lm[3:14], lm[54], lm[48]])]
    forehead = (lm[17:27] - FOREHEAD_RAISE * d * fr.ey)[::-1]
    oval = np.vstack([lm[0:17], forehead])
    out["face_skin"] = [oval]
    out["hair_band"] = [_scaled(oval, lm[28], HAIR_SCALE)]
    return out


def _raster(polys: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for p in polys:
        rr, cc = fill_polygon(p[:, 1], p[:, 0], shape)
        m[rr, cc] = True
    return m


def face_part_masks(size: tuple[int, int], face: Face) -> dict[str, np.ndarray]:
    """``{part: (H, W) bool}`` for one face in an image of ``size=(H, W)``; the parts partition it."""
    h, w = size
    polys = face_part_polygons(face)
    fr = _Frame(face)
    taken = np.zeros((h, w), dtype=bool)
    masks: dict[str, np.ndarray] = {}
    for name in FACE_PARTS:
        if name == "background":
            m = ~taken
        else:
            m = _raster(polys[name], (h, w)) & ~taken
            if name == "hair_band":
                ys, xs = np.mgrid[0:h, 0:w]
                _, v = fr.to_frame(np.stack([xs.ravel(), ys.ravel()], axis=1))
                m &= v.reshape(h, w) < 0.25  # above a line just below the eyes
        masks[name] = m
        taken |= m
    return masks


def face_regions(
    image: Image.Image | np.ndarray, *, face: Face | None = None, upsample: int | None = None
) -> dict[str, np.ndarray]:
    """Face-part masks of ``image`` (the largest face; pass ``face`` to choose another).

    The masks are boolean ``(H, W)`` in original-image pixels, the same kind as the audit's
    ``region:NAME`` masks, so they feed :func:`biasscope.regions.attribution_share` directly.
    Raises :class:`NoFaceError` when no face is found.
    """
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if face is None:
        faces = detect_faces(arr, upsample=upsample)
        if not faces:
            raise NoFaceError(MSG_NO_FACE)
        face = faces[0]
    return face_part_masks(arr.shape[:2], face)


def render_face_parts(image: Image.Image, masks: dict[str, np.ndarray], *, alpha: float = 0.45) -> Image.Image:
    """The image with each part tinted in its :data:`FACE_PART_COLOURS` colour (background untinted)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base.copy()
    for name, m in masks.items():
        if name == "background" or name not in FACE_PART_COLOURS:
            continue
        out[m] = base[m] * (1 - alpha) + np.array(FACE_PART_COLOURS[name], dtype=np.float32) * alpha
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))
