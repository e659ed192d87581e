"""Alignment: similarity fitting, dlib-exact chip geometry, warps that agree with the transforms."""

from __future__ import annotations

import dlib
import numpy as np
import pytest

from biasscope.faces import FaceFrame, alignment_transform, chip_transform, detect_faces, estimate_similarity
from biasscope.faces.align import DLIB_MEAN_FACE_68, FIT_INDICES_68, warp_array, warp_image
from biasscope.faces.deps import shape_predictor

from .conftest import similarity


def test_estimate_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (20, 2))
    t = similarity(1.7, 23.0, (12.0, -5.0))
    est = estimate_similarity(src, t.apply(src))
    np.testing.assert_allclose(est.matrix, t.matrix, atol=1e-9)
    np.testing.assert_allclose(est.inverse().apply(t.apply(src)), src, atol=1e-9)
    assert est.scale == pytest.approx(1.7) and np.rad2deg(est.angle) == pytest.approx(23.0)


def test_estimate_similarity_never_reflects():
    src = np.array([[0, 0], [10, 0], [0, 4], [7, 9.0], [3, 1]])
    mirrored = src * [-1, 1] + [0.3, 0.0] * src[:, :1]  # a reflection, slightly sheared
    a = estimate_similarity(src, mirrored).matrix[:, :2]
    assert np.linalg.det(a) > 0  # a rotation and a scale: the best proper similarity, not the mirror
    np.testing.assert_allclose(a / np.sqrt(np.linalg.det(a)) @ (a / np.sqrt(np.linalg.det(a))).T, np.eye(2), atol=1e-12)


def test_alignment_maps_known_landmarks_onto_the_template_within_a_pixel():
    frame = FaceFrame(size=160, padding=0.45)
    # landmarks of a face placed in a 640x480 photo by a known similarity (rolled 17 degrees, 2.3x),
    # with half-pixel landmark noise; jaw points (not in the template) are arbitrary
    to_photo = similarity(2.3, 17.0, (250.0, 90.0))
    lm = np.zeros((68, 2))
    lm[17:] = to_photo.apply(np.array([frame.landmark_position(i) for i in range(17, 68)]))
    lm[:17] = np.random.default_rng(1).uniform(100, 400, (17, 2))
    lm += np.random.default_rng(2).uniform(-0.5, 0.5, lm.shape)
    t = alignment_transform(lm, frame)
    mapped = t.apply(lm[list(FIT_INDICES_68)])
    err = np.hypot(*(mapped - frame.template()).T)
    assert err.max() < 1.0
    # the recovered transform is the inverse of the one that placed the face (up to dlib's
    # corner-pixel convention, a scale of (size*s - 1)/(size - 1) / s)
    assert t.angle == pytest.approx(-np.deg2rad(17.0), abs=2e-3)


def _dlib_mapping_to_chip(d) -> np.ndarray:
    """dlib's get_mapping_to_chip(chip_details), written out from its C++ definition."""
    r = d.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = np.cos(d.angle), np.sin(d.angle)

    def rot(x, y):
        return (cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy))

    src = np.array([rot(r.left(), r.top()), rot(r.right(), r.top()), rot(r.right(), r.bottom())])
    dst = np.array([(0, 0), (d.cols - 1, 0), (d.cols - 1, d.rows - 1)], dtype=float)
    return np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T


@pytest.mark.parametrize(("points", "size", "padding"), [(68, 150, 0.25), (68, 160, 0.45), (5, 32, 0.2)])
def test_chip_transform_equals_dlibs_chip_geometry(astronaut, astronaut_face, points, size, padding):
    arr = np.asarray(astronaut)
    shape = shape_predictor(points)(arr, dlib.rectangle(*astronaut_face.box))
    lm = np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=float)
    ours = chip_transform(lm, size, padding).matrix
    np.testing.assert_allclose(ours, _dlib_mapping_to_chip(dlib.get_face_chip_details(shape, size, padding)),
                               atol=1e-9)


def test_a_marked_pixel_lands_in_dlibs_chip_where_the_transform_says(astronaut, astronaut_face):
    arr = np.asarray(astronaut).copy()
    shape = shape_predictor(68)(arr, dlib.rectangle(*astronaut_face.box))
    t = chip_transform(astronaut_face.landmarks, 150, 0.25)
    for x, y in [(182, 82), (262, 168), (215, 128)]:
        marked = arr.copy()
        marked[y - 2 : y + 3, x - 2 : x + 3] = (255, 0, 255)
        chip = dlib.extract_image_chip(marked, dlib.get_face_chip_details(shape, 150, 0.25)).astype(int)
        hit = (chip[..., 0] > 200) & (chip[..., 1] < 60) & (chip[..., 2] > 200)
        ys, xs = np.nonzero(hit)
        np.testing.assert_allclose([xs.mean(), ys.mean()], t.apply(np.array([x, y], float)), atol=0.5)


def test_aligned_photo_has_its_landmarks_where_the_transform_puts_them(astronaut, astronaut_face):
    frame = FaceFrame()
    t = alignment_transform(astronaut_face.landmarks, frame)
    aligned = warp_image(astronaut, t, frame.size)
    again = detect_faces(aligned)
    assert len(again) == 1
    err = np.hypot(*(again[0].landmarks - t.apply(astronaut_face.landmarks)).T)
    assert err.mean() < 1.5, err.mean()
    # and the eyes of the aligned face sit where the mean face has them
    left = np.mean([frame.landmark_position(i) for i in range(36, 42)], axis=0)
    np.testing.assert_allclose(again[0].landmarks[36:42].mean(0), left, atol=4.0)


def test_warp_moves_a_heatmap_peak_with_the_transform():
    t = similarity(0.5, -30.0, (40.0, 90.0))
    heat = np.zeros((200, 300))
    heat[120, 210] = 1.0
    heat = warp_array(heat, similarity(1.0, 0.0, (0.0, 0.0)), heat.shape, antialias=False)  # identity
    assert heat[120, 210] == 1.0
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(heat, 6)
    out = warp_array(smooth, t, (200, 200))
    r, c = np.unravel_index(np.nanargmax(out), out.shape)
    np.testing.assert_allclose([c, r], t.apply(np.array([210.0, 120.0])), atol=1.0)
    # exactly the pixels whose pre-image is outside the source are NaN (fill), never clamped copies
    ys, xs = np.mgrid[0:200, 0:200]
    pre = t.inverse().apply(np.stack([xs.ravel(), ys.ravel()], 1))
    outside = (pre[:, 0] < -0.5) | (pre[:, 0] > 299.5) | (pre[:, 1] < -0.5) | (pre[:, 1] > 199.5)
    assert 0 < outside.sum() < outside.size
    np.testing.assert_array_equal(np.isnan(out).ravel(), outside)


def test_mean_face_template_is_dlibs():
    # a few anchor values from dlib's get_face_chip_details (interpolation.h)
    assert DLIB_MEAN_FACE_68[17] == (0.000213256, 0.106454)
    assert DLIB_MEAN_FACE_68[30] == (0.490127, 0.515625)
    assert DLIB_MEAN_FACE_68[67] == (0.42689, 0.824182)
    assert len(FIT_INDICES_68) == 33
