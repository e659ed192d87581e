"""Every API route on the hand-weighted colour model, checked against values computed by hand."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from biasscope.explainers import list_explainers
from biasscope.models import SUPPORTED_MODELS, zoo_status
from biasscope.web.samples import SAMPLES

from .conftest import GAIN, expected_cam, png, softmax, two_colour, wait_job

RED_BLUE = two_colour((255, 0, 0), (0, 0, 255))


def upload(client, data: bytes, name: str = "img.png") -> dict:
    r = client.post("/api/images", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def test_health_and_openapi_cover_every_api_route(app, client):
    assert client.get("/api/health").get_json()["status"] == "ok"
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, verb.upper()) for path, ops in doc["paths"].items() for verb in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented
    # every $ref resolves
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])
    page = client.get("/docs").get_data(as_text=True)
    for path in doc["paths"]:
        assert path in page


def test_models_lists_zoo_with_reason_and_fix(client):
    data = client.get("/api/models").get_json()
    assert data["default"] == "colour" and data["default_ready"] and data["note"] == ""
    by_name = {m["name"]: m for m in data["models"]}
    assert set(SUPPORTED_MODELS) <= set(by_name)
    for name in SUPPORTED_MODELS:
        info = zoo_status(name)
        assert by_name[name]["ready"] == info.ready
        if not info.ready:
            assert by_name[name]["fix"] == info.fix and info.file in by_name[name]["reason"]


def test_default_falls_back_when_weights_missing(make_app):
    missing = [n for n in SUPPORTED_MODELS if not zoo_status(n).ready]
    if not missing or not zoo_status("mobilenet_v2").ready:
        pytest.skip("needs one model without weights and mobilenet_v2 with weights")
    app = make_app(DEFAULT_MODEL=missing[0], FALLBACK_MODELS=("mobilenet_v2",))
    c = app.test_client()
    data = c.get("/api/models").get_json()
    assert data["default"] == "mobilenet_v2" and data["configured_default"] == missing[0]
    assert missing[0] in data["note"] and zoo_status(missing[0]).fix in data["note"]
    page = c.get("/").get_data(as_text=True)
    assert "Model in use: mobilenet_v2." in page and zoo_status(missing[0]).fix in page
    # nothing ready at all: the page says so and how to fix it
    app2 = make_app(DEFAULT_MODEL=missing[0], FALLBACK_MODELS=())
    page2 = app2.test_client().get("/").get_data(as_text=True)
    assert "No model is ready." in page2 and zoo_status(missing[0]).fix in page2
    # asking for the missing model explains how to get it (409), no traceback
    r = c.post("/api/predict", json={"model": missing[0], "sample": "coffee"})
    assert r.status_code == 409
    err = r.get_json()["error"]
    assert err["code"] == "weights_missing" and zoo_status(missing[0]).fix in err["message"]


def test_explainers_listing_matches_registry_and_availability(client):
    rows = client.get("/api/explainers").get_json()["explainers"]
    assert [r["name"] for r in rows] == [c.name for c in list_explainers()]
    for r, cls in zip(rows, list_explainers()):
        assert r["params"] == [p.to_dict() for p in cls.params]
        assert (r["signed"], r["slow"], r["label"]) == (cls.signed, cls.slow, cls.label)
    rows = client.get("/api/explainers?model=colour_nohooks").get_json()["explainers"]
    gc = next(r for r in rows if r["name"] == "gradcam")
    ig = next(r for r in rows if r["name"] == "integrated_gradients")
    assert gc["available"] is False and "no layer hooks" in gc["reason"]
    assert ig["available"] is True and ig["reason"] == ""


def test_classes_search(client):
    data = client.get("/api/models/colour/classes?q=RE").get_json()
    assert data["classes"] == [{"index": 0, "label": "red"}, {"index": 1, "label": "green"}]
    assert client.get("/api/models/colour/classes").get_json()["count"] == 3
    assert client.get("/api/models/nope/classes").status_code == 400


def test_samples_are_real_photos(client):
    samples = client.get("/api/samples").get_json()["samples"]
    assert [s["name"] for s in samples] == list(SAMPLES)
    for s in samples:
        r = client.get(s["url"])
        assert r.status_code == 200 and r.mimetype == "image/jpeg"
        im = Image.open(io.BytesIO(r.data))
        assert max(im.size) == 320 and np.asarray(im).std() > 20  # a real photo, not a blank
    assert client.get("/api/samples/nope.jpg").status_code == 404
    rec = client.post("/api/images", json={"sample": "chelsea"}).get_json()
    assert (rec["width"], rec["height"]) == (451, 300)


def test_upload_then_fetch_image_is_lossless(client):
    rec = upload(client, png(RED_BLUE), "photo.jpg")  # the name lies: the content decides
    assert rec["name"] == "photo.jpg" and (rec["width"], rec["height"]) == (16, 16)
    back = np.asarray(Image.open(io.BytesIO(client.get(rec["url"]).data)))
    np.testing.assert_array_equal(back, RED_BLUE)


def test_large_upload_is_downscaled_for_work(make_app):
    app = make_app(WORK_MAX_SIDE=64)
    rec = upload(app.test_client(), png(np.zeros((100, 200, 3), np.uint8)))
    assert (rec["width"], rec["height"], rec["original_width"], rec["original_height"]) == (64, 32, 200, 100)


def test_predict_matches_softmax_by_hand(client):
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0], img[..., 1] = 255, 51  # red 1.0, green 0.2
    r = client.post("/api/predict", data={"image": (io.BytesIO(png(img)), "x.png"), "top": "3"},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    preds = r.get_json()["predictions"]
    want = softmax(GAIN * np.array([1.0, 0.2, 0.0]))
    assert [p["label"] for p in preds] == ["red", "green", "blue"]
    np.testing.assert_allclose([p["probability"] for p in preds], want, rtol=1e-5)
    # the same image by id, top-1 only
    rec = upload(client, png(img))
    r = client.post("/api/predict", json={"image_id": rec["id"], "top": 1}).get_json()
    assert len(r["predictions"]) == 1 and r["predictions"][0]["index"] == 0


@pytest.mark.parametrize(("target", "cls"), [(None, 0), (2, 2), ("blue", 2), ("2", 2), ("Red", 0)])
def test_explain_gradcam_and_ig_follow_the_target(client, target, cls):
    # top-1 is a tie between red and blue (same mean); argmax picks the first: red
    body = {"image_id": upload(client, png(RED_BLUE))["id"], "methods": "gradcam,ig", "heatmaps": True,
            "params": {"ig": {"steps": 8}}}
    if target is not None:
        body["target"] = target
    r = client.post("/api/explain", json=body)
    assert r.status_code == 200, r.get_json()
    job = r.get_json()
    assert job["status"] == "done" and list(job["methods"]) == ["gradcam", "integrated_gradients"]
    want = expected_cam(RED_BLUE, cls)
    for name in ("gradcam", "integrated_gradients"):
        res = job["methods"][name]["result"]
        assert res["target"] == cls and res["target_name"] == ["red", "green", "blue"][cls]
        np.testing.assert_allclose(np.array(res["model_heatmap"]), want, atol=1e-6)
        npy = np.load(io.BytesIO(client.get(res["npy_url"]).data))
        np.testing.assert_allclose(npy, want, atol=1e-6)
        assert {"deletion_auc", "insertion_auc"} <= set(res["checks"])
        assert res["seconds"] > 0
    ig = job["methods"]["integrated_gradients"]["result"]
    assert ig["params"]["steps"] == 8
    # completeness: attributions sum to f(x) - f(black) = GAIN * 0.5 (half the image is the colour)
    assert ig["checks"]["logit_difference"] == pytest.approx(GAIN * 0.5, abs=1e-4)
    assert ig["checks"]["completeness_error"] < 1e-4
    gc = job["methods"]["gradcam"]["result"]
    # legend: sequential 0 .. p99.5 of the map, which is the value on the coloured half
    assert gc["legend"]["kind"] == "sequential" and gc["legend"]["min"] == 0.0
    assert gc["legend"]["max"] == pytest.approx(GAIN / 256, rel=1e-5)
    assert ig["legend"]["kind"] == "diverging" and ig["legend"]["min"] == -ig["legend"]["max"]


def test_faithfulness_can_be_turned_off(client):
    rec = upload(client, png(RED_BLUE))
    job = client.post("/api/explain", json={"image_id": rec["id"], "methods": ["gradcam"], "faithfulness": "false"})
    assert job.get_json()["methods"]["gradcam"]["result"]["checks"] == {}


def test_result_downloads(client):
    rec = upload(client, png(RED_BLUE))
    job = client.post("/api/explain", json={"image_id": rec["id"], "methods": ["gradcam"], "target": "blue"}).get_json()
    res = job["methods"]["gradcam"]["result"]
    heat = Image.open(io.BytesIO(client.get(res["heatmap_url"]).data))
    assert heat.mode == "RGBA" and heat.size == (16, 16)
    alpha = np.asarray(heat)[..., 3]
    assert (alpha[:, :8] == 0).all() and (alpha[:, 8:] == 255).all()  # only the blue half is important
    # overlay: alpha 0 is the original image exactly; the default blends the right half only
    r = client.get(res["overlay_url"] + "?alpha=0&download=1")
    assert "attachment" in r.headers["Content-Disposition"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.data))), RED_BLUE)
    ov = np.asarray(Image.open(io.BytesIO(client.get(res["overlay_url"]).data))).astype(int)
    np.testing.assert_array_equal(ov[:, :8], RED_BLUE[:, :8])
    assert np.abs(ov[:, 8:] - RED_BLUE[:, 8:]).max() > 50
    assert client.get(res["overlay_url"] + "?alpha=2").status_code == 400
    assert client.get(res["overlay_url"] + "?alpha=x").status_code == 400
    full = client.get(f"/api/jobs/{job['id']}/result.json?download=1")
    assert "attachment" in full.headers["Content-Disposition"]
    doc = json.loads(full.data)
    assert doc["predictions"][0]["label"] in ("red", "blue") and doc["model"]["id"] == "colour"
    np.testing.assert_allclose(doc["methods"]["gradcam"]["result"]["model_heatmap"], expected_cam(RED_BLUE, 2),
                               atol=1e-6)
    assert client.get(f"/api/jobs/{job['id']}/methods/lime/heatmap.png").status_code == 404


def test_background_job_lifecycle(client):
    rec = upload(client, png(RED_BLUE))
    r = client.post("/api/jobs", json={"image_id": rec["id"], "methods": ["integrated_gradients", "gradcam"],
                                       "target": 0, "params": {"integrated_gradients": {"steps": 4}}})
    assert r.status_code == 202 and r.headers["Location"] == f"/api/jobs/{r.get_json()['id']}"
    job = wait_job(client, r.get_json()["id"])
    assert job["status"] == "done" and job["progress"] == 1.0
    assert all(m["status"] == "done" for m in job["methods"].values())
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404


def test_method_unavailable_on_model(client):
    r = client.post("/api/explain", json={"sample": "coffee", "model": "colour_nohooks", "methods": ["gradcam"]})
    assert r.status_code == 400
    assert "Grad-CAM is unavailable" in r.get_json()["error"]["message"]


def test_page_is_self_contained(client):
    page = client.get("/").get_data(as_text=True)
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and not [u for u in refs if re.match(r"(https?:)?//", u)]
    for u in refs:
        if u.startswith("/static/"):
            with client.get(u) as r:
                assert r.status_code == 200, u
                text = r.get_data(as_text=True)
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text.replace("http://www.w3.org/", "")), u
    assert "default-src 'self'" in client.get("/").headers["Content-Security-Policy"]


def test_loaded_model_says_which_engine_and_dtype_its_forwards_use(client):
    before = {m["name"]: m for m in client.get("/api/models").get_json()["models"]}["colour"]
    assert "backend" not in before  # nothing loaded yet: nothing to report, nothing loaded to find out
    assert client.post("/api/predict", json={"model": "colour", "sample": "coffee"}).status_code == 200
    after = {m["name"]: m for m in client.get("/api/models").get_json()["models"]}["colour"]
    assert after["loaded"] is True
    assert after["backend"]["active"] in ("torch", "onnxruntime") and after["backend"]["requested"]
    assert after["precision"] == {"requested": "fp32", "active": "fp32", "checked": False, "reason": "", "check": None}


def test_explain_a_concept_target(client):
    """A concept ("warm = red, green") is a target: its probability is the summed probability of its classes and,
    the model being linear, Grad-CAM and IG of the summed logits are the sums of the classes' maps."""
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :8, 0], img[:, 8:, 1], img[4:12, :, 2] = 255, 128, 200
    rec = upload(client, png(img))
    r = client.post("/api/explain", json={"image_id": rec["id"], "methods": "gradcam,ig", "heatmaps": True,
                                          "params": {"ig": {"steps": 8}}, "concept": "warm = red, green"})
    assert r.status_code == 200, r.get_json()
    probs = {p["label"]: p["probability"] for p in client.post(
        "/api/predict", json={"image_id": rec["id"], "top": 3}).get_json()["predictions"]}
    want = expected_cam(img, 0) + expected_cam(img, 1)
    for name in ("gradcam", "integrated_gradients"):
        res = r.get_json()["methods"][name]["result"]
        assert res["target_name"] == "warm" and res["target"] == 3
        assert res["target_probability"] == pytest.approx(probs["red"] + probs["green"], rel=1e-5)
        np.testing.assert_allclose(np.array(res["model_heatmap"]), want, atol=1e-5 * float(np.abs(want).max()))
    bad = client.post("/api/explain", json={"image_id": rec["id"], "methods": "gradcam",
                                            "concept": "warm = red, grene"})
    assert bad.status_code == 400 and "grene" in bad.get_json()["error"]["message"]
    both = client.post("/api/explain", json={"image_id": rec["id"], "methods": "gradcam", "concept": "warm = red",
                                             "target": 1})
    assert both.status_code == 400


@pytest.mark.parametrize(("absolute", "kind"), [(True, "sequential"), (False, "diverging")])
def test_signed_smoothgrad_is_drawn_with_the_diverging_map(client, absolute, kind):
    """SmoothGrad's ``absolute=False`` makes its map signed: the job, the legend and the PNG say so
    (the class attribute says unsigned; reading it drew signed maps with the unsigned colour map)."""
    rec = upload(client, png(RED_BLUE))
    job = client.post("/api/explain", json={"image_id": rec["id"], "methods": ["smoothgrad"], "target": "blue",
                                            "params": {"smoothgrad": {"absolute": absolute, "n_samples": 2}}})
    m = job.get_json()["methods"]["smoothgrad"]
    assert m["signed"] is (not absolute) and m["result"]["signed"] is (not absolute)
    assert m["result"]["legend"]["kind"] == kind
