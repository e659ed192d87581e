"""Face-part regions on a real photo (skimage astronaut) and their geometric properties."""

from __future__ import annotations

import numpy as np
import pytest

from biasscope.faces import FACE_PARTS, Face, face_part_masks, face_regions, render_face_parts
from biasscope.faces.parts import NoFaceError
from biasscope.regions import attribution_share

from .conftest import similarity


@pytest.fixture(scope="module")
def parts(astronaut, astronaut_face):
    return face_regions(astronaut, face=astronaut_face)


def _centre(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def test_parts_partition_the_image(parts, astronaut):
    assert list(parts) == list(FACE_PARTS)
    stack = np.stack([parts[n] for n in FACE_PARTS]).astype(int)
    assert stack.shape[1:] == (astronaut.height, astronaut.width)
    assert (stack.sum(0) == 1).all()
    assert all(parts[n].any() for n in FACE_PARTS)


def test_parts_are_where_they_should_be_on_the_astronaut(parts, astronaut_face):
    left_x, t, r, b = astronaut_face.box
    cy = {n: _centre(parts[n])[1] for n in FACE_PARTS}
    # top to bottom: hair band, eyebrows, eyes, nose, mouth, jaw/chin
    assert cy["hair_band"] < cy["eyebrows"] < cy["eyes"] < cy["nose"] < cy["mouth"] < cy["jaw_chin"]
    for name in ("eyes", "eyebrows", "nose", "mouth"):
        ys, xs = np.nonzero(parts[name])
        assert left_x - 2 <= xs.min() and xs.max() <= r + 2 and t - 2 <= ys.min() and ys.max() <= b + 2, name
    # two eyes, one each side of the nose; the nose and mouth on the face's midline between them
    ys, xs = np.nonzero(parts["eyes"])
    nose_x = _centre(parts["nose"])[0]
    left, right = xs[xs < nose_x], xs[xs > nose_x]
    assert len(left) > 100 and len(right) > 100
    assert abs((left.mean() + right.mean()) / 2 - nose_x) < 4
    assert abs(_centre(parts["mouth"])[0] - nose_x) < 6
    # the hair band lies above the eyes and reaches above the face box
    assert np.nonzero(parts["hair_band"])[0].min() < t
    # the face skin surrounds the eyes: it is on both sides of each eye
    assert parts["face_skin"][int(cy["eyes"]), : int(left.min())].any()


def test_part_colours_match_what_is_there(parts, astronaut):
    grey = np.asarray(astronaut, dtype=float).mean(-1)
    mean = {n: grey[parts[n]].mean() for n in FACE_PARTS}
    # dark-blond hair and dark eyes/lashes against lighter skin
    assert mean["hair_band"] < mean["face_skin"] - 30
    assert mean["eyes"] < mean["face_skin"]


def test_parts_follow_the_head_roll_and_scale():
    """Moving the landmarks by a similarity moves the masks with it (equivariance)."""
    from skimage import data

    from biasscope.faces import detect_faces

    face = detect_faces(data.astronaut())[0]
    t = similarity(1.6, 25.0, (60.0, -90.0))
    moved = Face(box=face.box, landmarks=t.apply(face.landmarks))
    a = face_part_masks((512, 512), face)
    b = face_part_masks((512, 512), moved)
    for name in ("eyes", "nose", "mouth", "jaw_chin", "face_skin"):
        ys, xs = np.nonzero(a[name])
        mx, my = t.apply(np.stack([xs.mean(), ys.mean()])).tolist()
        bx, by = _centre(b[name])
        assert abs(mx - bx) < 1.5 and abs(my - by) < 1.5, name
        assert b[name].sum() == pytest.approx(a[name].sum() * 1.6**2, rel=0.08), name


def test_masks_plug_into_attribution_shares(parts):
    heat = parts["eyes"].astype(float) * 2.0 + parts["mouth"].astype(float)
    s_eyes = attribution_share(heat, parts["eyes"])
    s_mouth = attribution_share(heat, parts["mouth"])
    m_eyes, m_mouth = parts["eyes"].sum(), parts["mouth"].sum()
    assert s_eyes.share == pytest.approx(2 * m_eyes / (2 * m_eyes + m_mouth))
    assert s_eyes.share + s_mouth.share == pytest.approx(1.0)
    assert attribution_share(heat, parts["background"]).share == 0.0


def test_no_face_is_an_error_with_a_message():
    from skimage import data

    with pytest.raises(NoFaceError, match="no face found"):
        face_regions(data.coffee())


def test_render_tints_only_face_parts(parts, astronaut):
    out = np.asarray(render_face_parts(astronaut, parts))
    src = np.asarray(astronaut)
    assert (out[parts["background"]] == src[parts["background"]]).all()
    assert (out[parts["eyes"]] != src[parts["eyes"]]).any(axis=-1).mean() > 0.9
