"""Bad inputs: every refusal is a clear JSON error with the right status, never a traceback."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

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


def test_slow_methods_are_refused_synchronously(client):
    from biasscope.explainers import list_explainers

    slow = [e for e in list_explainers() if e.slow]
    if not slow:
        pytest.skip("no slow method registered yet")
    err = error_of(client.post("/api/explain", json={"sample": "coffee", "methods": [slow[0].name]}), 400)
    assert "POST /api/jobs" in err["message"]
