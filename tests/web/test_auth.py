"""Token auth: bound to a non-loopback address, every route answers 401 without the token."""

from __future__ import annotations

import re

import pytest

from biasscope.web import create_app, is_loopback


@pytest.mark.parametrize(
    ("host", "loop"),
    [("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("example.org", False)],
)
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_no_token_needed_on_loopback(client, app):
    assert app.config["TOKEN"] is None
    assert client.get("/api/health").status_code == 200


def _concrete_urls(app) -> list[tuple[str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: {"filename": "app.css"}.get(m.group(1), "x"), rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, url))
    return out


def test_every_route_requires_the_token_off_loopback(make_app):
    app = make_app(HOST="0.0.0.0")
    token = app.config["TOKEN"]
    assert token and len(token) >= 24  # generated
    c = app.test_client()
    urls = _concrete_urls(app)
    assert len(urls) >= 20 and ("GET", "/static/app.css") in urls
    for method, url in urls:
        r = c.open(url, method=method)
        assert r.status_code == 401, (method, url)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        if url.startswith("/api"):
            assert r.get_json()["error"]["code"] == "unauthorized"
        r.close()
    # wrong tokens too
    for bad in ("", "x", token[:-1], token + "x"):
        assert c.get("/api/health", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        assert c.get(f"/api/health?token={bad}").status_code == 401
    # with the token, the same routes answer normally (no 401)
    for method, url in urls:
        r = c.open(url, method=method, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code != 401, (method, url)
        r.close()
    assert c.get("/api/health", headers={"X-Biasscope-Token": token}).status_code == 200
    assert c.get(f"/api/health?token={token}").status_code == 200


def test_url_token_becomes_a_cookie_for_the_page(make_app):
    app = make_app(HOST="0.0.0.0", TOKEN="s3cret-token-for-tests")
    c = app.test_client()
    r = c.get("/?token=s3cret-token-for-tests&x=1")
    assert r.status_code == 302 and r.headers["Location"] == "/?x=1"
    cookie = r.headers["Set-Cookie"]
    assert "biasscope_token=s3cret-token-for-tests" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # the browser now sends the cookie with every request the page makes
    assert c.get("/").status_code == 200
    assert c.get("/api/models").status_code == 200
    c2 = app.test_client()
    assert c2.get("/").status_code == 401


def test_flask_factory_without_arguments():
    app = create_app()
    try:
        assert app.config["HOST"] == "127.0.0.1" and app.config["TOKEN"] is None
        assert app.config["DEFAULT_MODEL"] == "resnet18"
    finally:
        app.extensions["biasscope"].close()
