"""Face verification audits in the web app: start, follow, results equal to a direct run, path safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps

pytest.importorskip("dlib", reason="needs the faces extra: pip install 'biasscope[faces]'")


@pytest.fixture(scope="module")
def face_root(tmp_path_factory) -> Path:
    import matplotlib.cbook as cb
    from skimage import data

    root = tmp_path_factory.mktemp("faceroot")
    (root / "faces").mkdir()
    with Image.open(cb.get_sample_data("grace_hopper.jpg", asfileobj=False)) as g:
        photos = {"astronaut": Image.fromarray(data.astronaut()), "hopper": g.convert("RGB")}
    rows = ["path,identity,group"]
    for name, im in photos.items():
        w, h = im.size
        for k, v in (("orig", im), ("flip", ImageOps.mirror(im)), ("crop", im.crop((w // 10, h // 12, w, h)))):
            v.save(root / "faces" / f"{name}_{k}.png")
            rows.append(f"{name}_{k}.png,{name},g")
    (root / "faces" / "identities.csv").write_text("\n".join(rows) + "\n")
    return root


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()["error"]


def test_verification_run_in_the_web_app_equals_a_direct_run(make_app, face_root, tmp_path):
    from biasscope.audit.store import json_safe
    from biasscope.verify import VerifyOptions, run_verify_audit

    app = make_app(DATA_ROOT=str(face_root), RUNS_DIR=str(tmp_path / "runs"))
    client = app.test_client()
    page = client.get("/audits").get_data(as_text=True)
    assert 'id="verify-section"' in page and "verify.js" in page
    with client.get("/static/verify.js") as js:
        assert js.status_code == 200 and b"/api/verify-audits" in js.data
    r = client.post("/api/verify-audits", json={"manifest": "faces/identities.csv", "groups": "group",
                                                "far": 0.1, "name": "faces1"})
    assert r.status_code == 202, r.get_data(as_text=True)
    app.extensions["biasscope_verify"].futures["faces1"].result(timeout=600)
    got = client.get("/api/verify-audits/faces1").get_json()
    assert got["status"] == "done" and got["summary"]["n_genuine"] == 6 and got["summary"]["n_impostor"] == 9
    direct = run_verify_audit(face_root / "faces" / "identities.csv", out=tmp_path / "direct", groups=["group"],
                              options=VerifyOptions(far=0.1), plots=False)
    assert got["metrics"]["groupings"] == json.loads(json.dumps(json_safe(direct.metrics["groupings"])))
    assert [r["id"] for r in client.get("/api/verify-audits").get_json()["runs"]] == ["faces1"]
    with client.get("/api/verify-audits/faces1/report.html") as rep:
        assert rep.status_code == 200 and "default-src 'none'" in rep.headers["Content-Security-Policy"]
        assert "Face verification" in rep.get_data(as_text=True)


def test_verification_inputs_are_checked(make_app, face_root, tmp_path, client):
    app = make_app(DATA_ROOT=str(face_root), RUNS_DIR=str(tmp_path / "runs"))
    c = app.test_client()
    assert "'..'" in _error(c.post("/api/verify-audits", json={"manifest": "../x.csv"}), 400)["message"]
    assert "absolute" in _error(c.post("/api/verify-audits", json={"manifest": "/etc/passwd"}), 400)["message"]
    assert "'far'" in _error(c.post("/api/verify-audits", json={"manifest": "faces/identities.csv",
                                                                "far": 2}), 400)["message"]
    assert "group" in _error(c.post("/api/verify-audits", json={"manifest": "faces/identities.csv",
                                                                "groups": "ethnicity"}), 400)["message"]
    _error(c.get("/api/verify-audits/nope"), 404)
    # without a data root, verification audits are disabled like classifier audits
    assert "--data-root" in _error(client.get("/api/verify-audits"), 409)["message"]


def test_a_foreign_verification_run_is_listed_but_not_served(make_app, face_root, tmp_path):
    import shutil

    from biasscope.verify import VerifyOptions, run_verify_audit

    outside = tmp_path / "outside"
    shutil.copytree(face_root / "faces", outside)
    runs = tmp_path / "runs"
    run_verify_audit(outside / "identities.csv", out=runs / ".verify" / "foreign", groups=["group"],
                     options=VerifyOptions(far=0.1, n_boot=100))
    root = tmp_path / "root"
    root.mkdir()
    c = make_app(DATA_ROOT=str(root), RUNS_DIR=str(runs)).test_client()
    listed = c.get("/api/verify-audits").get_json()["runs"]
    assert [(r["id"], r["status"]) for r in listed] == [("foreign", "error")]
    for url in ("/api/verify-audits/foreign", "/api/verify-audits/foreign/report.html"):
        resp = c.get(url)
        assert resp.status_code == 403 and b"astronaut" not in resp.data
        resp.close()
    assert c.post("/api/verify-audits/foreign/cancel").status_code == 403


def test_verification_audit_from_the_audits_page(make_app, face_root, tmp_path):
    """Start a verification audit from the page's section, follow it to 'done', open its report."""
    from playwright.sync_api import expect

    from .conftest import browser_page

    app = make_app(DATA_ROOT=str(face_root), RUNS_DIR=str(tmp_path / "runs"))
    with browser_page(app, viewport={"width": 1300, "height": 1000}, timeout_ms=120_000) as (base, page, problems):
        page.goto(base + "/audits")
        expect(page.locator("#verify-none")).to_be_visible()
        page.fill("#verify-manifest", "faces/identities.csv")
        page.fill("#verify-groups", "group")
        page.fill("#verify-far", "0.1")
        page.fill("#verify-name", "page-run")
        page.click("#verify-start")
        row = page.locator("#verify-runs tbody tr", has_text="page-run")
        expect(page.locator("#verify-message")).to_have_text("started page-run")
        expect(row.locator(".status")).to_have_text("done", timeout=120_000)
        summary = page.evaluate("() => fetch('/api/verify-audits/page-run').then(r => r.json())")["summary"]
        cells = row.locator("td").all_inner_texts()
        assert cells[5] == f"{summary['n_genuine']} / {summary['n_impostor']}" == "6 / 9"
        assert cells[3].startswith(f"{summary['threshold']:.4f} @ FAR 0.1")
        with page.expect_popup() as pop:
            row.get_by_role("link", name="report").click()
        report = pop.value
        expect(report.locator("h2")).to_have_text("Face verification")
    assert problems == []


def test_cancel_then_resume_in_the_web_app(make_app, face_root, tmp_path):
    """Cancel while the (blocked) model embeds; the stored batch stays; starting the run again resumes."""
    import threading
    from types import SimpleNamespace

    import numpy as np

    from biasscope.verify import ChipRecipe, EmbeddingModel

    class Gate(EmbeddingModel):
        def __init__(self) -> None:
            self.name, self.recipe = "gate", ChipRecipe(size=8)
            self.entered, self.proceed, self.calls = threading.Event(), threading.Event(), []

        def chip(self, image, *, face=None):
            return SimpleNamespace(image=image.resize((8, 8)))

        def embed(self, chips):
            self.calls.append(len(chips))
            self.entered.set()
            assert self.proceed.wait(60)
            return np.array([np.asarray(c, dtype=float).reshape(-1, 3).mean(0) for c in chips])

    app = make_app(DATA_ROOT=str(face_root), RUNS_DIR=str(tmp_path / "runs"))
    vm = app.extensions["biasscope_verify"]
    gate = Gate()
    vm._model = gate
    c = app.test_client()
    body = {"manifest": "faces/identities.csv", "groups": "group", "far": 0.1, "name": "gated"}
    assert c.post("/api/verify-audits", json=body).status_code == 202
    assert gate.entered.wait(60)
    assert c.post("/api/verify-audits/gated/cancel").status_code == 200
    gate.proceed.set()
    vm.futures["gated"].result(timeout=60)
    assert c.get("/api/verify-audits/gated").get_json()["status"] == "cancelled"
    assert gate.calls == [6]
    assert c.post("/api/verify-audits", json=body).status_code == 202  # the same name resumes
    vm.futures["gated"].result(timeout=60)
    got = c.get("/api/verify-audits/gated").get_json()
    assert got["status"] == "done" and got["summary"]["n_genuine"] == 6
    assert gate.calls == [6]  # nothing embedded twice
