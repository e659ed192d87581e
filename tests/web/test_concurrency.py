"""Many requests at once on one shared model give the same answers as one at a time."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.fixtures import leftover_hooks

from .conftest import expected_cam, live_server, png

N = 24


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _upload(base: str, data: bytes) -> str:
    boundary = "----biasscope-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(base + "/api/images", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["id"]


def test_concurrent_explanations_equal_serial_and_hand_values(make_app):
    """24 simultaneous Grad-CAM + IG requests (different images and target classes) on one model,
    through waitress: each equals its serial result and the hand-derived map (no cross-talk)."""
    app = make_app()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    adapter = app.extensions["biasscope"].models.get("colour")
    with live_server(app, threads=N) as base:
        ids = [_upload(base, png(im)) for im in images]
        cases = [(i % len(images), i % 3) for i in range(N)]

        def run(case):
            img, cls = case
            return _post(base, "/api/explain", {"image_id": ids[img], "methods": ["gradcam", "ig"], "target": cls,
                                                "heatmaps": True, "faithfulness": False,
                                                "params": {"ig": {"steps": 6}}})

        serial = [run(c) for c in cases]
        with ThreadPoolExecutor(N) as pool:
            concurrent = list(pool.map(run, cases))
    for (img, cls), s, c in zip(cases, serial, concurrent):
        want = expected_cam(images[img], cls)
        for m in ("gradcam", "integrated_gradients"):
            a = np.array(s["methods"][m]["result"]["model_heatmap"])
            b = np.array(c["methods"][m]["result"]["model_heatmap"])
            assert c["methods"][m]["result"]["target"] == cls
            scale = float(np.abs(want).max())  # float32 round-off relative to the map's scale
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * scale)
            np.testing.assert_allclose(b, want, atol=2e-5 * scale)
    assert leftover_hooks(adapter.model) == []


@pytest.mark.slow
def test_concurrent_requests_on_real_mobilenet(make_app, mobilenet):
    """24 simultaneous predictions and Grad-CAMs of real photos on the real MobileNetV2."""
    from skimage import data

    app = make_app(EXTRA_MODELS={"mobilenet_v2": lambda: mobilenet}, DEFAULT_MODEL="mobilenet_v2")
    photos = {"coffee": data.coffee()[::4, ::4], "chelsea": data.chelsea()[::4, ::4]}
    with live_server(app, threads=N) as base:
        ids = {k: _upload(base, png(v)) for k, v in photos.items()}
        names = ["coffee", "chelsea"] * (N // 2)

        def predict(name):
            return _post(base, "/api/predict", {"image_id": ids[name]})["predictions"]

        def cam(name):
            r = _post(base, "/api/explain", {"image_id": ids[name], "methods": ["gradcam"], "heatmaps": True,
                                             "faithfulness": False})
            return np.array(r["methods"]["gradcam"]["result"]["model_heatmap"])

        serial_pred = {k: predict(k) for k in photos}
        serial_cam = {k: cam(k) for k in photos}
        with ThreadPoolExecutor(N) as pool:
            preds = list(pool.map(predict, names))
            cams = list(pool.map(cam, names[:12]))
    assert serial_pred["coffee"][0]["label"] == "espresso"
    assert serial_pred["chelsea"][0]["label"] in ("Egyptian cat", "tabby", "tiger cat")
    for name, p in zip(names, preds):
        assert [q["index"] for q in p] == [q["index"] for q in serial_pred[name]]
        np.testing.assert_allclose([q["probability"] for q in p], [q["probability"] for q in serial_pred[name]],
                                   atol=1e-5)
    for name, c in zip(names, cams):
        np.testing.assert_allclose(c, serial_cam[name], atol=1e-5)
    assert leftover_hooks(mobilenet.model) == []
