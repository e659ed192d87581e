"""Bad inputs: every refusal is a clear JSON error with the right status, never a traceback."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from biasscope.images import MSG_EMPTY, MSG_NOT_IMAGE, MSG_TRUNCATED

from .conftest import png, two_colour

RED_BLUE = two_colour((255, 0, 0), (0, 0, 255))


def post_file(client, data: bytes, name: str = "x.png", url: str = "/api/images", **fields):
    return client.post(url, data={"image": (io.BytesIO(data), name), **fields}, content_type="multipart/form-data")


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}
    assert body["error"]["status"] == status
    assert "Traceback" not in r.get_data(as_text=True)
    return body["error"]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width x height``, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"", "empty.png", MSG_EMPTY),
        (b"hello, I am plain text, not a picture", "notes.png", MSG_NOT_IMAGE),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "vector.jpg", MSG_NOT_IMAGE),
        (b"%PDF-1.4 fake", "doc.jpeg", MSG_NOT_IMAGE),
    ],
)
def test_not_an_image(client, data, name, message):
    err = error_of(post_file(client, data, name), 400)
    assert err["code"] == "image" and message in err["message"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(client, fmt):
    data = png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), fmt)
    err = error_of(post_file(client, data[: len(data) // 2]), 400)
    assert MSG_TRUNCATED in err["message"]


def test_decompression_bombs_are_refused(make_app):
    c = make_app(MAX_PIXELS=1_000_000).test_client()
    # a claimed 100000 x 100000 image in a few dozen bytes: refused from the header, never decoded
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 200
    err = error_of(post_file(c, bomb), 413)
    assert err["code"] == "image_too_large" and "decompression bomb" in err["message"]
    # a real, highly compressible 2000 x 2000 PNG (a few kB) above the configured pixel limit
    flat = png(np.zeros((2000, 2000, 3), np.uint8))
    assert len(flat) < 100_000
    err = error_of(post_file(c, flat), 413)
    assert "4,000,000 pixels; the limit is 1,000,000" in err["message"]


def test_oversize_uploads(make_app):
    c = make_app(MAX_UPLOAD_BYTES=50_000).test_client()
    big = png(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    assert len(big) > 120_000
    # larger than the whole request limit: Flask refuses it before reading
    err = error_of(post_file(c, big), 413)
    assert err["code"] == "payload_too_large" and "0.0477 MB" in err["message"]
    # just above the file limit but within the request allowance: the image loader refuses it
    err = error_of(post_file(c, big[:50_010]), 413)
    assert err["code"] == "image_too_large" and "limit is 50,000" in err["message"]


def test_content_type_is_sniffed_not_taken_from_name(client):
    gif = png(RED_BLUE, "GIF")
    r = post_file(client, gif, "definitely.jpg")
    assert r.status_code == 201
    assert post_file(client, png(RED_BLUE, "BMP"), "noextension").status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"methods": ["gradcam"], "model": "no_such_model"}, 400, "unknown model 'no_such_model'"),
        ({"methods": ["no_such_method"]}, 400, "unknown method 'no_such_method'"),
        ({"methods": []}, 400, "no explanation method given"),
        ({"methods": 5}, 400, "'methods' must be a list"),
        ({"methods": ["ig"], "params": {"ig": {"bogus": 1}}}, 400, "has no parameter(s) bogus"),
        ({"methods": ["ig"], "params": {"ig": {"steps": 1}}}, 400, "steps must be >= 2"),
        ({"methods": ["ig"], "params": {"ig": {"steps": "many"}}}, 400, "steps must be int"),
        ({"methods": ["ig"], "params": {"ig": {"baseline": "purple"}}}, 400, "baseline must be one of"),
        ({"methods": ["gradcam"], "params": {"ig": {"steps": 4}}}, 400, "not among the chosen methods"),
        ({"methods": ["gradcam"], "params": {"ig": 4}}, 400, "'params' must map"),
        ({"methods": ["gradcam"], "target": 3}, 400, "class index 3 out of range 0..2"),
        ({"methods": ["gradcam"], "target": "stethoscope"}, 400, "unknown class 'stethoscope'"),
        ({"methods": ["gradcam"], "target": True}, 400, "'target' must be a class index"),
        ({"methods": ["gradcam"], "target": [1]}, 400, "'target' must be a class index"),
        ({"methods": ["gradcam"], "faithfulness": "maybe"}, 400, "'faithfulness' must be true or false"),
        ({"methods": ["gradcam"], "image_id": "deadbeef"}, 404, "image 'deadbeef' not found"),
        ({"methods": ["gradcam"], "sample": "nope"}, 404, "unknown sample 'nope'"),
    ],
)
@pytest.mark.parametrize("url", ["/api/explain", "/api/jobs"])
def test_bad_explain_requests(client, url, body, status, needle):
    if "image_id" not in body and "sample" not in body:
        body = body | {"sample": "coffee"}
    err = error_of(client.post(url, json=body), status)
    assert needle in err["message"]


def test_missing_image_and_bad_bodies(client):
    err = error_of(client.post("/api/predict", json={}), 400)
    assert "no image given" in err["message"]
    err = error_of(client.post("/api/predict", data="{not json", content_type="application/json"), 400)
    assert "must be a JSON object" in err["message"]
    err = error_of(client.post("/api/predict", json=[1, 2]), 400)
    assert "must be a JSON object" in err["message"]
    err = error_of(client.post("/api/predict", json={"sample": "coffee", "top": 0}), 400)
    assert "'top' must be between 1 and 3" in err["message"]
    err = error_of(client.post("/api/predict", json={"sample": "coffee", "top": "x"}), 400)
    assert "'top' must be an integer" in err["message"]
    err = error_of(client.post("/api/images", data={"params": "{oops"}, content_type="multipart/form-data"), 400)
    assert "'params' must be a JSON object" in err["message"]


def test_unknown_routes_and_methods(client):
    err = error_of(client.get("/api/nothing/here"), 404)
    assert err["code"] == "not_found"
    err = error_of(client.get("/api/predict"), 405)
    assert err["code"] == "method_not_allowed" and "GET is not allowed" in err["message"]
    assert error_of(client.get("/api/jobs/nope"), 404)["code"] == "not_found"
    assert error_of(client.post("/api/jobs/nope/cancel"), 404)["code"] == "not_found"
    assert error_of(client.get("/api/images/nope.png"), 404)["code"] == "not_found"
    page = client.get("/no/such/page")
    assert page.status_code == 404 and page.mimetype == "text/html" and "no such page" in page.get_data(as_text=True)


def test_internal_errors_are_hidden(make_app):
    def broken():
        raise RuntimeError("secret detail /home/someone/model.pt")

    app = make_app(EXTRA_MODELS={"broken": broken})
    c = app.test_client()
    r = c.post("/api/predict", json={"model": "broken", "sample": "coffee"})
    err = error_of(r, 500)
    assert err["code"] == "internal" and "secret" not in r.get_data(as_text=True)
    # the server keeps answering
    assert c.get("/api/health").status_code == 200


def test_slow_methods_become_jobs(client):
    """/api/explain never runs a slow method in the request thread: it queues a job (202, Location)."""
    from biasscope.explainers import list_explainers

    slow = [e for e in list_explainers() if e.slow]
    assert slow, "LIME, Kernel SHAP and occlusion are declared slow"
    for cls in slow:
        params = {"occlusion": {"window": 8, "stride": 4}}.get(cls.name, {})  # the colour model is 16 x 16
        r = client.post("/api/explain", json={"sample": "coffee", "methods": [cls.name], "faithfulness": False,
                                              "params": {cls.name: params}})
        assert r.status_code == 202, r.get_data(as_text=True)
        body = r.get_json()
        assert r.headers["Location"] == f"/api/jobs/{body['id']}"
        assert body["queued_because"].startswith(f"{cls.label} is slow: follow GET /api/jobs/{body['id']}")
        client.post(f"/api/jobs/{body['id']}/cancel")


# ------------------------------------------------------------------ hostile bodies and parameters
def strict_json(r) -> object:
    """The body parsed as standard JSON: NaN/Infinity (which browsers refuse) fail the test."""
    import json

    def refuse(name):
        raise AssertionError(f"response contains {name}: {r.get_data(as_text=True)[:200]}")

    return json.loads(r.get_data(as_text=True), parse_constant=refuse)


@pytest.mark.parametrize("url", ["/api/images", "/api/predict", "/api/explain", "/api/jobs"])
@pytest.mark.parametrize("body", ["[" * 100_000, '{"a":' * 100_000, "[" * 40 + "]" * 40,
                                  '{"sample": "coffee", "params": ' + "[" * 50 + "]" * 50 + "}"])
def test_deeply_nested_json_is_a_400(client, url, body):
    err = error_of(client.post(url, data=body, content_type="application/json"), 400)
    assert "levels deep" in err["message"] and "32" in err["message"]


def test_nested_params_in_a_form_field_is_a_400(client):
    r = client.post("/api/explain", data={"sample": "coffee", "methods": "gradcam", "params": "[" * 100_000},
                    content_type="multipart/form-data")
    assert "levels deep" in error_of(r, 400)["message"]


@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_refused(client, const):
    body = '{"sample": "coffee", "methods": ["smoothgrad"], "params": {"smoothgrad": {"noise_level": CONST}}}'
    body = body.replace("CONST", const)
    err = error_of(client.post("/api/explain", data=body, content_type="application/json"), 400)
    assert "not valid JSON" in err["message"] and const.lstrip("-") in err["message"]


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("gradient_shap", {"stdev": "nan"}, "stdev must be float in [0, 10] (a finite number), got 'nan'"),
        ("gradient_shap", {"stdev": "inf"}, "stdev must be float in [0, 10]"),
        ("gradient_shap", {"stdev": 1e308}, "stdev must be <= 10, got 1e+308"),
        ("gradient_shap", {"stdev": "-Infinity"}, "stdev must be float"),
        ("lime", {"kernel_width": "NaN"}, "kernel_width must be float in [0.001, 100]"),
        ("lime", {"kernel_width": 1e308}, "kernel_width must be <= 100"),
        ("smoothgrad", {"noise_level": "inf"}, "noise_level must be float in [0, 1]"),
        ("smoothgrad", {"noise_level": True}, "noise_level must be float"),
        ("ig", {"steps": 3.7}, "steps must be int in [2, 1000] (a whole number), got 3.7"),
        ("ig", {"steps": "3.7"}, "steps must be int in [2, 1000]"),
        ("ig", {"steps": True}, "steps must be int"),
        ("ig", {"steps": [4]}, "steps must be int"),
        ("smoothgrad", {"absolute": "maybe"}, "absolute must be true or false, got 'maybe'"),
        ("smoothgrad", {"absolute": "false"}, "absolute must be true or false"),
        ("smoothgrad", {"absolute": 0}, "absolute must be true or false"),
        ("ig", {"baseline": 5}, "baseline must be text, got 5"),
        ("ig", {"seed": 2**63}, f"seed must be <= 4294967295, got {2**63}"),
        ("ig", {"seed": 2**64 + 1}, "seed must be <= 4294967295"),
        ("smoothgrad", {"seed": -1}, "seed must be >= 0"),
        ("lime", {"seed": 10**400}, "seed must be <= 4294967295, got 100000... (401 digits)"),
    ],
)
def test_bad_parameter_values_are_refused(client, method, params, needle):
    body = {"sample": "coffee", "methods": [method], "params": {method: params}}
    for url in ("/api/explain", "/api/jobs"):
        err = error_of(client.post(url, json=body), 400)
        assert err["code"] == "explainer" and needle in err["message"], err["message"]


def test_whole_numbers_and_booleans_are_accepted_as_given(client):
    """4.0 is 4 steps (not a truncation); numbers typed in the page's fields arrive as text; IG with a
    black baseline on the colour model is its hand-derived map whatever the number of steps."""
    from .conftest import expected_cam

    img = two_colour((200, 40, 0), (0, 90, 250))
    up = post_file(client, png(img)).get_json()
    for steps in (4.0, "6", 5):
        body = {"image_id": up["id"], "methods": ["ig"], "target": "red", "faithfulness": False, "heatmaps": True,
                "params": {"ig": {"steps": steps, "seed": 2**32 - 1}}}
        job = strict_json(client.post("/api/explain", json=body))
        m = job["methods"]["integrated_gradients"]
        assert m["status"] == "done" and m["result"]["params"]["steps"] == int(float(steps))
        heat = np.asarray(m["result"]["model_heatmap"])
        want = expected_cam(img, 0)
        assert np.allclose(heat, want, atol=1e-4 * float(np.abs(want).max()))
    body = {"image_id": up["id"], "methods": ["smoothgrad"], "faithfulness": False,
            "params": {"smoothgrad": {"absolute": False, "n_samples": 2}}}
    job = strict_json(client.post("/api/explain", json=body))
    assert job["methods"]["smoothgrad"]["result"]["params"]["absolute"] is False


def test_no_response_contains_nan_or_infinity(make_app):
    """A model whose outputs are NaN: predictions and explanations come back as strict JSON (null)."""
    import torch

    from .conftest import colour_adapter

    def nan_adapter():
        a = colour_adapter(name="nan")
        inner = a.model.fc

        class NaNHead(torch.nn.Module):
            def forward(self, x):
                return inner(x) * float("nan")

        a.model.fc = NaNHead()
        return a

    c = make_app(EXTRA_MODELS={"nan": nan_adapter}).test_client()
    r = c.post("/api/predict", json={"model": "nan", "sample": "coffee"})
    body = strict_json(r)
    assert r.status_code == 200 and all(p["probability"] is None for p in body["predictions"])
    r = c.post("/api/explain", json={"model": "nan", "sample": "coffee", "methods": ["gradcam", "ig"]})
    body = strict_json(r)
    assert r.status_code == 200
    job = c.get(f"/api/jobs/{body['id']}")
    strict_json(job)
    strict_json(c.get(f"/api/jobs/{body['id']}/result.json"))


def test_two_image_parts_are_refused(client):
    a, b = png(RED_BLUE), png(two_colour((0, 255, 0), (0, 0, 0)))
    for url in ("/api/images", "/api/predict"):
        r = client.post(url, data={"image": [(io.BytesIO(a), "a.png"), (io.BytesIO(b), "b.png")]},
                        content_type="multipart/form-data")
        assert "2 'image' parts" in error_of(r, 400)["message"]


def test_missing_weights_409_names_the_cache_not_server_paths(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    c = make_app().test_client()
    r = c.post("/api/predict", json={"model": "resnet18", "sample": "coffee"})
    err = error_of(r, 409)
    assert "$TORCH_HOME/hub/checkpoints" in err["message"] and "resnet18-f37072fd.pth" in err["message"]
    assert str(tmp_path) not in r.get_data(as_text=True)
    models = c.get("/api/models")
    row = next(m for m in models.get_json()["models"] if m["name"] == "resnet18")
    assert "$TORCH_HOME/hub/checkpoints" in row["reason"] and str(tmp_path) not in models.get_data(as_text=True)


# ------------------------------------------------------------------ audit routes: paths
LONG = "a" * 256  # one byte over the file systems' 255-byte limit per name


@pytest.fixture
def data_app(make_app, tmp_path):
    root = tmp_path / "data"
    (root / "set").mkdir(parents=True)
    Image.fromarray(RED_BLUE).save(root / "set" / "one.png")
    (root / "set" / "manifest.csv").write_text("path,label,group\none.png,red,a\n../../escape.png,red,b\n"
                                               "x\x00y.png,red,a\n" + LONG + ".png,red,a\n")
    return make_app(DATA_ROOT=str(root)), root


@pytest.mark.parametrize(("path", "needle"), [
    (LONG, "name of 256 bytes; names are at most 255 bytes"),
    (f"set/{LONG}", "name of 256 bytes; names are at most 255 bytes"),
    (f"set/{LONG}/manifest.csv", "name of 256 bytes; names are at most 255 bytes"),
    ("é" * 128 + "/m.csv", "name of 256 bytes; names are at most 255 bytes"),
    ("/".join(["d"] * 2100), "is 4199 bytes long; paths are at most 4096 bytes"),
])
def test_path_components_over_255_bytes_are_a_400(data_app, path, needle):
    app, _ = data_app
    c = app.test_client()
    for r in (c.get("/api/files", query_string={"path": path}),
              c.post("/api/manifests/inspect", json={"manifest": path}),
              c.post("/api/audits", json={"manifest": path, "groups": ["group"], "models": ["colour"]})):
        err = error_of(r, 400)
        assert needle in err["message"]


def test_manifest_problems_name_paths_relative_to_the_data_root(data_app):
    app, root = data_app
    c = app.test_client()
    r = c.post("/api/manifests/inspect", json={"manifest": "set/manifest.csv"})
    body = r.get_json()
    assert r.status_code == 200 and body["valid"] is False
    assert body["message"] == "manifest set/manifest.csv has 3 problem(s)"
    assert body["problems"] == [
        "line 3: path '../../escape.png' is outside the manifest's root set",
        "line 4: path 'x\\x00y.png' contains a NUL character, which no file name can hold",
        f"line 5: path '{LONG}.png' cannot be used: File name too long",
    ]
    r = c.post("/api/audits", json={"manifest": "set/manifest.csv", "groups": ["group"], "models": ["colour"]})
    err = error_of(r, 400)
    assert err["message"].startswith("manifest set/manifest.csv has 3 problem(s)")
    for resp in (r, c.post("/api/manifests/inspect", json={"manifest": "set/manifest.csv"})):
        assert str(root) not in resp.get_data(as_text=True)


def test_waitress_refuses_bodies_over_the_apps_limit_unread(make_app):
    """A Content-Length over the app's limit is answered 413 from the headers: the server does not wait
    for (and buffer) a body it would refuse. Without the aligned limit waitress waits for all 1 GB."""
    import socket

    from biasscope.cli.serve import make_server

    from .conftest import serving

    app = make_app(MAX_UPLOAD_BYTES=100_000)
    server = make_server(app, "127.0.0.1", 0, threads=1)
    assert server.adj.max_request_body_size == app.config["MAX_CONTENT_LENGTH"]
    with serving(server):
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=60) as sock:
            sock.sendall(b"POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 1000000000\r\n\r\n" + b"x" * 1000)
            reply = b""
            while chunk := sock.recv(65536):  # waitress closes the connection after its answer
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
