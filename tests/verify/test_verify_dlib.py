"""dlib's face recognition ResNet end to end on shipped photos, checked against dlib's own pipeline."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("dlib", reason="needs the faces extra: pip install 'biasscope[faces]'")


@pytest.fixture(scope="module")
def dlib_model():
    from biasscope.verify import DlibFaceModel

    return DlibFaceModel()


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
def test_recipe_matches_dlib_compute_face_descriptor(dlib_model, photos, name):
    from biasscope.faces import detect_faces
    from biasscope.verify import cosine_similarity

    img = photos[name]
    face = detect_faces(img)[0]
    chip = dlib_model.chip(img, face=face)
    assert chip.size == 150
    ours = dlib_model.embed([np.asarray(chip.image)])[0]
    ref = dlib_model.reference_descriptor(img, face)
    assert float(cosine_similarity(ours, ref)) > 0.999
    assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()


def test_verify_audit_end_to_end_and_resume(identity_folder, tmp_path, dlib_model, monkeypatch):
    from biasscope.faces import detect_faces
    from biasscope.images import load_image
    from biasscope.verify import VerifyOptions, cosine_similarity, run_verify_audit

    out = tmp_path / "run"
    opts = VerifyOptions(far=0.05, fars=(0.05, 0.01), n_boot=200)
    res = run_verify_audit(identity_folder / "identities.csv", out=out, model=dlib_model, groups=["set"],
                           options=opts)
    m = json.loads((out / "metrics.json").read_text())
    with (out / "pairs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    gen = [r for r in rows if r["kind"] == "genuine"]
    imp = [r for r in rows if r["kind"] == "impostor"]
    cross = [r for r in rows if r["kind"] == "cross"]
    # 2 x C(6,2) + 3 x C(2,2) genuine; same-set impostors: 36 (astronaut x hopper) + 3 x 4 (lfw); cross: 12 x 6
    assert (len(gen), len(imp), len(cross)) == (33, 48, 72)
    assert m["n_failed_pairs"] == 0
    # the same photo under crops/flips/rotation/lighting scores above every pair of different people
    assert min(float(r["score"]) for r in gen) > max(float(r["score"]) for r in imp + cross)
    subs = m["groupings"]["set"]["subgroups"]
    assert subs["portrait"]["fnmr"] == 0.0 and subs["lfw"]["fnmr"] == 0.0
    assert subs["portrait"]["n_genuine"] == 30 and subs["portrait"]["n_impostor"] == 36
    # metrics.json agrees with a recount from pairs.csv at the stored global threshold
    t = m["overall"]["threshold"]
    for s in ("portrait", "lfw"):
        si = [float(r["score"]) for r in imp if r["subgroup"] == s]
        assert subs[s]["fmr"] == pytest.approx(sum(x > t for x in si) / len(si))
    # a pair's score is the cosine of dlib's own descriptors of the two photos
    row = next(r for r in imp if r["path_a"] == "astronaut_orig.png" and r["path_b"] == "hopper_orig.png")
    refs = []
    for p in ("astronaut_orig.png", "hopper_orig.png"):
        img = load_image(identity_folder / p)
        refs.append(dlib_model.reference_descriptor(img, detect_faces(img)[0]))
    assert float(row["score"]) == pytest.approx(float(cosine_similarity(refs[0], refs[1])), abs=1e-5)
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 3
    assert res.files["plot_det"].is_file()

    # re-running resumes: nothing is embedded again and the findings are identical
    calls = []
    orig = type(dlib_model).embed
    monkeypatch.setattr(type(dlib_model), "embed", lambda self, chips: calls.append(len(chips)) or orig(self, chips))
    res2 = run_verify_audit(identity_folder / "identities.csv", out=out, model=dlib_model, groups=["set"],
                            options=opts)
    assert calls == []
    assert res2.metrics["groupings"] == res.metrics["groupings"]


def test_occlusion_window_equals_manual_drop(dlib_model, photos):
    from PIL import ImageOps

    from biasscope.verify import cosine_similarity, explain_pair

    ca = dlib_model.chip(photos["astronaut"])
    cb = dlib_model.chip(ImageOps.mirror(photos["astronaut"]))
    ex = explain_pair(dlib_model, ca, cb, method="occlusion", patch=75, stride=75)  # 4 windows per chip
    a = np.asarray(ca.image)
    b = np.asarray(cb.image)
    ea, eb = dlib_model.embed([a, b])
    base = float(cosine_similarity(ea, eb))
    assert ex.score == pytest.approx(base)
    occ = a.copy()
    occ[75:150, 0:75] = a.reshape(-1, 3).mean(0).round().astype(np.uint8)  # bottom-left window of chip A
    drop = base - float(cosine_similarity(dlib_model.embed([occ])[0], eb))
    assert ex.heat_a[100, 30] == pytest.approx(drop, abs=1e-6)
    assert np.unique(ex.heat_a).size == 4  # one value per (non-overlapping) window
    for shares in (ex.shares_a, ex.shares_b):
        vals = [v for v in shares.values() if not np.isnan(v)]
        assert sum(vals) == pytest.approx(1.0)


def test_gradient_on_dlib_refused_before_any_work(identity_folder, tmp_path, dlib_model):
    from biasscope.errors import ExplainerError
    from biasscope.verify import run_verify_audit

    with pytest.raises(ExplainerError, match="needs a torch embedding model; dlib-face is not one"):
        run_verify_audit(identity_folder / "identities.csv", out=tmp_path / "r", model=dlib_model,
                         explain=1, explain_method="gradient")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("points", [5, 68])
def test_chip_recipe_equals_dlib_get_face_chip(photos, points):
    import dlib

    from biasscope.faces import detect_faces
    from biasscope.faces.detect import landmarks_for_box
    from biasscope.verify import ChipRecipe, face_chip

    img = np.asarray(photos["hopper"])
    face = detect_faces(img)[0]
    ours = np.asarray(face_chip(img, ChipRecipe(size=112, padding=0.3, landmarks=points), face=face).image)
    lm = face.landmarks if points == 68 else landmarks_for_box(img, face.box, points=5)
    shape = dlib.full_object_detection(dlib.rectangle(*face.box), [dlib.point(int(x), int(y)) for x, y in lm])
    ref = dlib.get_face_chip(img, shape, size=112, padding=0.3)
    assert ours.shape == (112, 112, 3) and np.array_equal(ours, ref)
