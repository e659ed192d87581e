"""Aggregate aligned heatmaps per group: hand-computed means, normalisation, differences, rendering,
and alignment that makes heatmaps of differently placed faces comparable."""

from __future__ import annotations

import numpy as np
import pytest

from biasscope.faces import (
    Face,
    FaceFrame,
    aggregate_heatmaps,
    align_face_image,
    align_heatmap,
    difference_map,
    render_group_heatmaps,
)

from .conftest import similarity

nan = np.nan


def test_group_means_equal_the_hand_computed_means():
    a1 = np.array([[1.0, 2.0], [3.0, 4.0]])
    a2 = np.array([[3.0, nan], [5.0, 0.0]])  # NaN: this face's frame left its photo there
    b1 = np.array([[0.0, 1.0], [1.0, 0.0]])
    groups = aggregate_heatmaps([a1, b1, a2], ["female", "male", "female"])
    assert list(groups) == ["female", "male"]
    f, m = groups["female"], groups["male"]
    assert f.n == 2 and m.n == 1
    np.testing.assert_allclose(f.mean, [[2.0, 2.0], [4.0, 2.0]])
    np.testing.assert_array_equal(f.coverage, [[2, 1], [2, 2]])
    np.testing.assert_allclose(m.mean, b1)
    np.testing.assert_allclose(difference_map(f, m), [[2.0, 1.0], [3.0, 2.0]])


def test_normalisation_by_max_and_sum():
    a = np.array([[2.0, -4.0], [0.0, 2.0]])
    b = np.array([[1.0, 1.0], [1.0, 1.0]])
    by_max = aggregate_heatmaps([a, b], ["g", "g"], normalize="max")["g"].mean
    np.testing.assert_allclose(by_max, (np.array([[0.5, -1.0], [0.0, 0.5]]) + b) / 2)
    by_sum = aggregate_heatmaps([a, b], ["g", "g"], normalize="sum")["g"].mean
    np.testing.assert_allclose(by_sum, (a / 8 + b / 4) / 2)
    with pytest.raises(ValueError, match="normalize"):
        aggregate_heatmaps([a], ["g"], normalize="mean")


def test_label_by_group_cells_and_mean_faces():
    maps = [np.full((2, 2), v) for v in (1.0, 2.0, 4.0, 8.0)]
    faces = [np.full((2, 2, 3), v) for v in (10.0, 20.0, 30.0, 50.0)]
    keys = [("doctor", "f"), ("doctor", "f"), ("doctor", "m"), ("nurse", "f")]
    cells = aggregate_heatmaps(maps, keys, faces=faces)
    assert cells[("doctor", "f")].n == 2
    np.testing.assert_allclose(cells[("doctor", "f")].mean, 1.5)
    np.testing.assert_allclose(cells[("doctor", "f")].mean_face, 15.0)
    np.testing.assert_allclose(cells[("nurse", "f")].mean, 8.0)


def test_alignment_makes_heatmaps_of_moved_faces_agree(astronaut_face):
    """The same face-anchored heatmap in two photos (one rolled, scaled, shifted) aligns to one map."""
    frame = FaceFrame(size=96)
    lm = astronaut_face.landmarks
    ys, xs = np.mgrid[0:512, 0:512]

    def heat_at(nose, d):  # a blob on the nose tip, sized by the interocular distance
        return np.exp(-((xs - nose[0]) ** 2 + (ys - nose[1]) ** 2) / (2 * (0.3 * d) ** 2))

    t = similarity(0.8, 20.0, (90.0, -40.0))
    lm2 = t.apply(lm)
    f1, f2 = Face(astronaut_face.box, lm), Face(astronaut_face.box, lm2)
    h1 = align_heatmap(heat_at(lm[30], f1.interocular()), f1, frame)
    h2 = align_heatmap(heat_at(lm2[30], f2.interocular()), f2, frame)
    assert np.nanmax(np.abs(h1 - h2)) < 0.03
    r, c = np.unravel_index(np.nanargmax(h1), h1.shape)
    np.testing.assert_allclose([c, r], frame.landmark_position(30), atol=1.5)


def test_aligned_face_image_is_the_same_for_a_moved_photo(astronaut, astronaut_face):
    from scipy import ndimage

    frame = FaceFrame(size=96)
    a = align_face_image(astronaut, astronaut_face, frame)
    # shift the photo by whole pixels: landmarks move with it, the aligned face must not change
    shifted = ndimage.shift(np.asarray(astronaut, float), (7, -11, 0), order=0, mode="nearest")
    moved = Face(astronaut_face.box, astronaut_face.landmarks + np.array([-11.0, 7.0]))
    b = align_face_image(shifted, moved, frame)
    assert np.nanmean(np.abs(a - b)) < 1.0


def test_render_uses_a_diverging_scale_for_differences():
    pos = np.zeros((8, 8))
    pos[:4] = 1.0
    groups = aggregate_heatmaps([pos, np.zeros((8, 8))], ["female", "male"])
    title, legend = 18, 40
    diff_top = 64 + title + legend + title
    sheet = np.asarray(render_group_heatmaps(groups, cell=64, pairs=[("female", "male")])).astype(int)
    red = sheet[diff_top + 8, 32]  # female - male = +1 at the top: red
    grey = sheet[diff_top + 56, 32]  # 0 at the bottom: untinted grey background
    assert red[0] > red[2] + 40
    assert abs(grey[0] - grey[2]) < 10
    # the default pairs are "each group minus the first": male - female = -1 at the top: blue
    blue = np.asarray(render_group_heatmaps(groups, cell=64)).astype(int)[diff_top + 8, 32]
    assert blue[2] > blue[0] + 40
    # the group row: the mean heatmap of "female" is hot at the top, "male" untinted
    row = np.asarray(render_group_heatmaps(groups, cell=64)).astype(int)
    hot, cold = row[title + 8, 32], row[title + 8, 64 + 32]
    assert hot.sum() > cold.sum() + 100 and abs(cold[0] - cold[2]) < 10
