"""Similarity transforms between images and a canonical face frame, and warping with them.

Coordinates are ``(x, y)`` in pixels with pixel centres on integers (dlib's and scikit-image's
convention): pixel ``[r, c]`` of an array sits at ``(x=c, y=r)``.

The canonical face frame is dlib's mean face (the average positions of landmarks 17-67 in a unit
square, from dlib's ``get_face_chip_details``), padded by ``padding`` on every side and scaled to
``size`` pixels: exactly the frame of dlib's aligned face chips, so a chip made with
``get_face_chip_details(shape, size, padding)`` and our :func:`chip_transform` agree. The fit uses
the landmarks dlib uses (eyes, nose, outer mouth and upper inner lip: the rigid part of the face;
eyebrows and the lower lip move with expressions) and is least squares (Umeyama 1991).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "DLIB_MEAN_FACE_5",
    "DLIB_MEAN_FACE_68",
    "FIT_INDICES_68",
    "FaceFrame",
    "Similarity",
    "alignment_transform",
    "chip_transform",
    "estimate_similarity",
    "template_points",
    "warp_array",
    "warp_image",
]

# dlib/image_transforms/interpolation.h: average positions of the 68-point landmarks 17..67
_MEAN_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)
_MEAN_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)
#: landmark index -> (x, y) in dlib's unit mean-face square (indices 17..67)
DLIB_MEAN_FACE_68: dict[int, tuple[float, float]] = {i + 17: (x, y) for i, (x, y) in enumerate(zip(_MEAN_X, _MEAN_Y))}
#: the landmarks dlib fits its chips to (no eyebrows, no lower lip)
FIT_INDICES_68: tuple[int, ...] = tuple(i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67))
#: dlib's 5-point template (eye corners and the base of the nose), same unit square
DLIB_MEAN_FACE_5: dict[int, tuple[float, float]] = {
    0: (0.8595674595992, 0.2134981538014),
    1: (0.6460604764104, 0.2289674387677),
    2: (0.1205750620789, 0.2137274526848),
    3: (0.3340850613712, 0.2290642403242),
    4: (0.4901123135679, 0.6277975316475),
}


@dataclass(frozen=True)
class Similarity:
    """``dst = scale * R(angle) @ src + shift`` as a 2x3 matrix acting on ``(x, y)`` points."""

    matrix: np.ndarray  # (2, 3)

    @property
    def scale(self) -> float:
        return float(np.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def angle(self) -> float:
        """Rotation in radians (counter-clockwise in x-right / y-down pixel axes means clockwise on screen)."""
        return float(np.arctan2(self.matrix[1, 0], self.matrix[0, 0]))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` points (or one ``(2,)`` point)."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def inverse(self) -> Similarity:
        a = self.matrix[:, :2]
        inv = np.linalg.inv(a)
        return Similarity(np.hstack([inv, -inv @ self.matrix[:, 2:3]]))

    def compose(self, first: Similarity) -> Similarity:
        """``self ∘ first``: apply ``first``, then ``self``."""
        a = self.matrix[:, :2] @ first.matrix[:, :2]
        t = self.matrix[:, :2] @ first.matrix[:, 2] + self.matrix[:, 2]
        return Similarity(np.hstack([a, t[:, None]]))

    def to_list(self) -> list[list[float]]:
        return self.matrix.tolist()


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity (rotation, uniform scale, shift; no reflection) with ``dst ≈ T(src)``.

    Umeyama's closed form, as dlib's ``find_similarity_transform``.
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or s.shape[0] < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {s.shape} and {d.shape}")
    mu_s, mu_d = s.mean(0), d.mean(0)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc**2).sum() / len(s)
    if var_s <= 0:
        raise ValueError("source points are all identical")
    cov = dc.T @ sc / len(s)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[1, 1] = -1
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip) / var_s)
    a = scale * rot
    return Similarity(np.hstack([a, (mu_d - a @ mu_s)[:, None]]))


def template_points(size: float, padding: float, points: int = 68) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, (K, 2) positions)`` of the fit landmarks in a ``size``-pixel padded frame."""
    if points == 68:
        idx = np.array(FIT_INDICES_68)
        unit = np.array([DLIB_MEAN_FACE_68[i] for i in FIT_INDICES_68])
    elif points == 5:
        idx = np.arange(5)
        unit = np.array([DLIB_MEAN_FACE_5[i] for i in range(5)])
    else:
        raise ValueError(f"templates exist for 5 or 68 landmarks, not {points}")
    return idx, (padding + unit) / (2 * padding + 1) * size


def chip_transform(landmarks: np.ndarray, size: int, padding: float) -> Similarity:
    """Image -> chip similarity of dlib's ``extract_image_chip(img, get_face_chip_details(shape, size, padding))``.

    ``landmarks`` is ``(68, 2)`` or ``(5, 2)`` in image pixels. As dlib: the template is fitted to
    the landmarks (chip -> image, least squares); that fit defines a rectangle ``size * scale`` image
    pixels wide (corner to corner ``size * scale - 1``) centred on the image of the chip point
    ``(size/2, size/2)``, and its corners are mapped onto the chip's corner pixels ``0``, ``size - 1``.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    idx, tmpl = template_points(size, padding, len(lm))
    fit = estimate_similarity(tmpl, lm[idx])  # chip -> image
    centre = fit.apply(np.array([size / 2.0, size / 2.0]))
    k = (fit.scale * size - 1) / (size - 1)  # image pixels per chip pixel (dlib's centered_drect)
    c, s = np.cos(fit.angle), np.sin(fit.angle)
    a = k * np.array([[c, -s], [s, c]])
    mid = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    chip_to_image = Similarity(np.hstack([a, (centre - a @ mid)[:, None]]))
    return chip_to_image.inverse()


@dataclass(frozen=True)
class FaceFrame:
    """The canonical aligned-face frame: ``size x size`` pixels, dlib's mean face padded by ``padding``.

    The default padding (0.45 of the eyebrow-to-lip height on each side) keeps the chin, the
    forehead and a band of hair inside the frame.
    """

    size: int = 160
    padding: float = 0.45

    def template(self) -> np.ndarray:
        """``(K, 2)`` template positions of :data:`FIT_INDICES_68` in this frame."""
        return template_points(self.size, self.padding, 68)[1]

    def landmark_position(self, index: int) -> tuple[float, float]:
        """Where mean-face landmark ``index`` (17..67) lies in this frame."""
        x, y = DLIB_MEAN_FACE_68[index]
        k = self.size / (2 * self.padding + 1)
        return ((self.padding + x) * k, (self.padding + y) * k)


def alignment_transform(landmarks: np.ndarray, frame: FaceFrame | None = None) -> Similarity:
    """Image -> canonical frame similarity from 68 landmarks ``(68, 2)``."""
    frame = frame or FaceFrame()
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"alignment needs (68, 2) landmarks, got {lm.shape}")
    return chip_transform(lm, frame.size, frame.padding)


def warp_array(
    array: np.ndarray,
    transform: Similarity,
    out_shape: tuple[int, int],
    *,
    fill: float = np.nan,
    order: int = 1,
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``array`` (``(H, W)`` or ``(H, W, C)``) into the frame where ``transform`` maps it.

    ``transform`` maps source ``(x, y)`` to destination ``(x, y)``. Each output pixel takes the
    (bilinear, ``order=1``) value at its pre-image; pre-images outside the source get ``fill``.
    When the warp shrinks the source, it is first blurred (sigma ``(1/scale - 1) / 2``, as
    scikit-image's ``rescale``) so that the result is an average, not a sample.
    """
    src = np.asarray(array, dtype=np.float64)
    h, w = out_shape
    inv = transform.inverse()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = inv.apply(np.stack([xs.ravel(), ys.ravel()], axis=1))
    coords = np.stack([pts[:, 1], pts[:, 0]])  # (row, col)
    sigma = (1.0 / transform.scale - 1.0) / 2.0 if antialias and transform.scale < 1 else 0.0
    H, W = src.shape[:2]
    outside = (coords[0] < -0.5) | (coords[0] > H - 0.5) | (coords[1] < -0.5) | (coords[1] > W - 0.5)
    channels = [src] if src.ndim == 2 else [src[..., c] for c in range(src.shape[2])]
    out = []
    for ch in channels:
        if sigma > 0:
            ch = ndimage.gaussian_filter(ch, sigma, mode="nearest")
        v = ndimage.map_coordinates(ch, coords, order=order, mode="nearest")
        v[outside] = fill
        out.append(v.reshape(h, w))
    return out[0] if src.ndim == 2 else np.stack(out, axis=-1)


def warp_image(image: Image.Image, transform: Similarity, size: int | tuple[int, int]) -> Image.Image:
    """Warp an RGB image with ``transform`` into a ``size`` (square or ``(H, W)``) frame; black outside."""
    shape = (size, size) if isinstance(size, int) else size
    arr = warp_array(np.asarray(image.convert("RGB")), transform, shape, fill=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
