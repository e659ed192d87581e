"""Shared fixtures for the face tests: real photos, detected faces (dlib's 100 MB landmark model is
loaded once per session), the packaged gender model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib", reason="face tests need the faces extra: pip install 'biasscope[faces]'")


@pytest.fixture(autouse=True)
def _fixed_batch_size(monkeypatch):
    # skip throughput measurement (seconds on a shared 2-core machine); results do not depend on it
    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "32")


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def astronaut_face(astronaut):
    from biasscope.faces import detect_faces

    faces = detect_faces(astronaut)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="session")
def gender_model():
    pytest.importorskip("onnx2torch")
    from biasscope.faces import FacesUnavailableError, load_face_model

    try:
        return load_face_model("gender")
    except FacesUnavailableError as exc:
        pytest.skip(str(exc))


def similarity(scale: float, angle_deg: float, shift: tuple[float, float]):
    from biasscope.faces import Similarity

    a = np.deg2rad(angle_deg)
    m = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return Similarity(np.hstack([m, np.array(shift, dtype=float)[:, None]]))
