"""Face chips: the face cropped, aligned and resized as a face model was trained, and the way back.

:func:`extract_chip` cuts dlib's aligned chip (``get_face_chip_details`` + ``extract_image_chip``) and
keeps the exact image -> chip similarity, so a map computed on the chip is placed back onto the
photo (:func:`chip_map_to_image`; 0 outside the chip's footprint, :func:`chip_footprint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .align import Similarity, chip_transform, warp_array
from .deps import dlib_module
from .detect import Face, landmarks_for_box

__all__ = ["FaceChip", "chip_footprint", "chip_map_to_image", "extract_chip", "rgb_array"]


def rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))


@dataclass(frozen=True)
class FaceChip:
    """An aligned face chip and the similarity that maps the original image onto it."""

    image: Image.Image
    image_to_chip: Similarity
    face: Face
    landmarks: np.ndarray  # the landmarks the chip was fitted to (5 or 68 points)

    @property
    def size(self) -> int:
        return self.image.width


def extract_chip(
    image: Image.Image | np.ndarray, face: Face, size: int, padding: float = 0.2, *, points: int = 5,
    landmarks: np.ndarray | None = None,
) -> FaceChip:
    """dlib's aligned chip (``get_face_chip_details`` + ``extract_image_chip``) for ``face``; its
    landmarks are found again in ``face.box`` with ``points`` unless ``landmarks`` are given."""
    dlib = dlib_module()
    arr = rgb_array(image)
    if landmarks is not None:
        lm = np.asarray(landmarks, dtype=np.float64)
    else:
        lm = face.landmarks if points == 68 else landmarks_for_box(arr, face.box, points=points)
    rect = dlib.rectangle(*(int(v) for v in face.box))
    shape = dlib.full_object_detection(rect, [dlib.point(*p) for p in np.rint(lm).astype(int).tolist()])
    chip = dlib.extract_image_chip(arr, dlib.get_face_chip_details(shape, size, padding))
    return FaceChip(
        image=Image.fromarray(np.ascontiguousarray(chip)),
        image_to_chip=chip_transform(lm, size, padding),
        face=face,
        landmarks=lm,
    )


def chip_map_to_image(chip_map: np.ndarray, chip: FaceChip, size: tuple[int, int]) -> np.ndarray:
    """Map a ``(s, s)`` chip heatmap onto the original ``size=(H, W)``; 0 outside the chip."""
    return warp_array(chip_map, chip.image_to_chip.inverse(), size, fill=0.0, antialias=False).astype(np.float32)


def chip_footprint(chip: FaceChip, size: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)``: the original pixels whose image lies inside the chip."""
    ones = np.ones((chip.size, chip.size))
    return warp_array(ones, chip.image_to_chip.inverse(), size, fill=0.0, antialias=False, order=0) > 0.5
