"""Quality flags: each flag fires on an image built to have that problem, and not on a clean one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from biasscope.faces import Face, assess_quality, detect_faces
from biasscope.faces.quality import face_sharpness, yaw_ratio


def test_clean_portrait_has_no_flags(astronaut):
    q = assess_quality(astronaut)
    assert q.flags == () and q.ok and q.n_faces == 1
    assert q.yaw_ratio == pytest.approx(0.5, abs=0.05)
    assert q.sharpness > 100


def test_no_face():
    from skimage import data

    q = assess_quality(data.coffee())
    assert q.flags == ("no_face",) and q.face is None


def test_several_faces(astronaut):
    arr = np.asarray(astronaut)[:, :400]
    q = assess_quality(np.concatenate([arr, arr], axis=1))
    assert q.n_faces == 2 and "several_faces" in q.flags


def test_tiny_face(astronaut):
    q = assess_quality(astronaut.resize((256, 256)))
    assert q.n_faces == 1 and q.face_size < 64
    assert "tiny_face" in q.flags


def test_blur_lowers_sharpness_and_is_flagged(astronaut, astronaut_face):
    arr = np.asarray(astronaut, dtype=float)
    values = [face_sharpness(ndimage.gaussian_filter(arr, (s, s, 0)), astronaut_face) for s in (0.0, 1.0, 2.0)]
    assert values[0] > values[1] > values[2]
    blurred = ndimage.gaussian_filter(arr, (2, 2, 0)).clip(0, 255).astype(np.uint8)
    q = assess_quality(blurred, [astronaut_face])  # the blurred face is still found at sigma 2
    assert q.flags == ("blurry",)


def test_turned_head_from_landmarks(astronaut_face):
    lm = astronaut_face.landmarks.copy()
    left, right = astronaut_face.eye_centres()
    axis = (right - left) / np.hypot(*(right - left))
    width = (lm[16] - lm[0]) @ axis
    turned = lm.copy()
    turned[27:36] += 0.3 * width * axis  # nose moved along the eye line: a head turned ~37 degrees
    assert yaw_ratio(Face(astronaut_face.box, turned)) == pytest.approx(yaw_ratio(astronaut_face) + 0.3, abs=1e-9)
    mirrored = lm * [-1, 1]  # a mirror image: the ratio is measured from the other jaw end
    mirrored[:17] = mirrored[16::-1]
    mirrored[36:42], mirrored[42:48] = mirrored[42:48][::-1].copy(), mirrored[36:42][::-1].copy()
    assert yaw_ratio(Face(astronaut_face.box, mirrored)) == pytest.approx(1 - yaw_ratio(astronaut_face), abs=1e-9)
    arr = np.zeros((512, 512, 3), np.uint8)
    assert "turned_head" in assess_quality(arr, [Face(astronaut_face.box, turned)]).flags
    assert "turned_head" not in assess_quality(arr, [astronaut_face]).flags


def test_thresholds_are_reported(astronaut):
    q = assess_quality(astronaut, detect_faces(astronaut), min_face=200)
    assert q.flags == ("tiny_face",)
    assert q.to_dict()["thresholds"]["min_face"] == 200
