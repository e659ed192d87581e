"""Audits through the web API: the data root (nothing outside it can be read through any route),
starting an audit, progress, cancel and resume, the dashboard data, and drill-down to an image.

Oracles: the web audit is a thin shell, so its metrics equal a direct ``run_audit`` on the same
manifest and options; per-group accuracy equals the per-image CSV's group means; an interrupted and
resumed run equals an uninterrupted one; overlays are the stored heatmaps."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from biasscope.audit import AuditConfig, load_manifest, run_audit
from tests.audit.synth import CONCEPTS, make_adapter, write_dataset

STATS = {"n_boot": 200, "n_perm": 200, "min_group_size": 2}
BODY = {"manifest": "synth/manifest.csv", "models": ["biased"], "groups": ["gender"], "methods": ["gradcam"],
        "concepts": "doctor = stethoscope, lab coat\nnurse = scrubs", "n_boot": 200, "n_perm": 200,
        "min_group_size": 2, "stereotypical": "doctor:male, nurse:female"}


@pytest.fixture(autouse=True)
def _fixed_batch_size(monkeypatch):
    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "32")


class Slow(torch.nn.Module):
    """The synthetic model, slowed down so that a run can be watched and cancelled."""

    def __init__(self, inner: torch.nn.Module, delay: float) -> None:
        super().__init__()
        self.inner = inner
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.inner(x)


def slow_adapter(delay: float = 0.15):
    a = make_adapter(2.0, "slow")
    a.model = Slow(a.model, delay)
    a.target_layer = a.model.inner.conv
    return a


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataroot")
    write_dataset(root / "synth", n_per_cell=5, seed=1)
    return root


@pytest.fixture
def audit_app(make_app, data_root, tmp_path):
    return make_app(DATA_ROOT=str(data_root), RUNS_DIR=str(tmp_path / "runs"),
                    EXTRA_MODELS={"biased": lambda: make_adapter(2.0, "biased"), "slow": slow_adapter})


def wait_audit(client, run_id: str, timeout: float = 120.0, until=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/audits/{run_id}").get_json()
        assert "error" not in r or "status" in r, r
        if until(r) if until else r["status"] in ("done", "error", "cancelled"):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"audit did not finish in {timeout}s: {r}")
        time.sleep(0.1)


def error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body["error"]) == {"code", "message", "status"} and body["error"]["status"] == status
    return body["error"]


def test_audits_disabled_without_data_root(client):
    assert client.get("/api/audits").get_json() == {"enabled": False, "message": pytest.approx(
        client.get("/api/audits").get_json()["message"]), "runs": []}
    e = error(client.post("/api/audits", json=BODY), 409)
    assert e["code"] == "audits_disabled" and "--data-root" in e["message"]
    for url in ("/api/files", "/api/audits/x/metrics.json", "/api/audits/x/images/0/image.png"):
        assert error(client.get(url), 409)["code"] == "audits_disabled"
    page = client.get("/audits").get_data(as_text=True)
    assert "Audits are disabled" in page and "--data-root" in page


def test_start_follow_and_dashboard_equal_a_direct_run(audit_app, data_root, tmp_path):
    client = audit_app.test_client()
    r = client.post("/api/audits", json=BODY | {"name": "web-run"})
    assert r.status_code == 202 and r.headers["Location"] == "/api/audits/web-run"
    info = wait_audit(client, "web-run")
    assert info["status"] == "done" and info["progress"] == 1.0 and info["has_metrics"]
    assert info["manifest"]["path"] == "synth/manifest.csv" and "root" not in info["manifest"]
    listed = client.get("/api/audits").get_json()
    assert [x["id"] for x in listed["runs"]] == ["web-run"] and listed["runs"][0]["status"] == "done"

    web = client.get("/api/audits/web-run/metrics.json").get_json()
    m = load_manifest(data_root / "synth" / "manifest.csv", groups=["gender"])
    cfg = AuditConfig(groups=["gender"], methods=["gradcam"], concepts=CONCEPTS)
    direct = run_audit(m, [make_adapter(2.0, "biased")], tmp_path / "direct", cfg,
                       metrics_options=STATS | {"stereotypical": ["doctor:male", "nurse:female"]}).metrics
    wm, dm = web["models"]["biased"], direct["models"]["biased"]
    assert wm["groupings"]["gender"]["by_group"] == dm["groupings"]["gender"]["by_group"]
    assert wm["groupings"]["gender"]["gaps"] == dm["groupings"]["gender"]["gaps"]
    assert wm["bias_score"] == dm["bias_score"] and wm["groupings"]["gender"]["regions"] == dm["groupings"]["gender"][
        "regions"]
    csv = pd.read_csv(io.BytesIO(client.get("/api/audits/web-run/per_image.csv").data))
    for g, sub in csv.groupby("gender"):
        assert wm["groupings"]["gender"]["by_group"][g]["accuracy"] == pytest.approx(sub["correct"].mean())
        assert wm["groupings"]["gender"]["by_group"][g]["n"] == len(sub)

    # telling images: misclassified first, then by rising p(true)
    rows = client.get("/api/audits/web-run/images?order=telling&limit=50").get_json()["rows"]
    assert len(rows) == 20
    key = [(bool(r["correct"]), r["p_true"]) for r in rows]
    assert key == sorted(key)
    females = client.get("/api/audits/web-run/images?where.gender=female").get_json()
    assert females["total"] == 10 and {r["gender"] for r in females["rows"]} == {"female"}

    # drill-down: the record, the original image and the stored heatmap's overlay
    iid = rows[0]["image_id"]
    d = client.get(f"/api/audits/web-run/images/{iid}").get_json()
    assert d["path"] == rows[0]["path"] and d["results"]["biased"]["p_true"] == pytest.approx(rows[0]["p_true"])
    assert set(d["results"]["biased"]["shares"]["gradcam"]) == {"tool", "hair"}
    img = Image.open(io.BytesIO(client.get(d["image_url"]).data))
    orig = Image.open(data_root / "synth" / d["path"]).convert("RGB")
    assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(orig))
    ov = client.get(d["results"]["biased"]["overlays"]["gradcam"])
    assert ov.status_code == 200 and Image.open(io.BytesIO(ov.data)).size == orig.size
    ov2 = client.get(d["results"]["biased"]["overlays"]["gradcam"] + "&alpha=0")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ov2.data)).convert("RGB")), np.asarray(orig))
    reg = np.asarray(Image.open(io.BytesIO(client.get(d["regions_url"]).data)).convert("RGB"))
    assert (reg != np.asarray(orig)).any()  # the region boxes are drawn
    # full-resolution explanation through the explanation job machinery
    job = client.post(d["explain_url"], json={"model": "biased", "methods": ["gradcam"]})
    assert job.status_code == 202
    from .conftest import wait_job

    done = wait_job(client, job.get_json()["id"])
    assert done["status"] == "done"
    assert done["methods"]["gradcam"]["result"]["target"] == d["results"]["biased"]["target_index"]
    rep = client.get("/api/audits/web-run/report.html")
    assert rep.status_code == 200 and b"biasscope audit" in rep.data and "script-src" not in rep.headers[
        "Content-Security-Policy"]
    page = client.get("/audits/web-run").get_data(as_text=True)
    assert 'data-run="web-run"' in page and "audits.js" in page


def test_cancel_then_resume_equals_uninterrupted(audit_app, data_root, tmp_path):
    client = audit_app.test_client()
    body = BODY | {"models": ["slow"], "name": "slow-run", "batch_size": 2, "methods": []}
    assert client.post("/api/audits", json=body).status_code == 202
    wait_audit(client, "slow-run", until=lambda r: (r.get("job") or {}).get("progress", {}).get("done", 0) >= 4)
    assert error(client.post("/api/audits", json=body), 409)["code"] == "run_busy"
    assert client.post("/api/audits/slow-run/cancel").status_code == 200
    info = wait_audit(client, "slow-run", until=lambda r: r["status"] == "cancelled")
    assert info["resumable"] and 0 < info["progress"] < 1
    r = client.post("/api/audits/slow-run/resume", json={})
    assert r.status_code == 202
    info = wait_audit(client, "slow-run", until=lambda r: r["status"] in ("done", "error"))
    assert info["status"] == "done"
    web = pd.read_csv(io.BytesIO(client.get("/api/audits/slow-run/per_image.csv").data))
    m = load_manifest(data_root / "synth" / "manifest.csv", groups=["gender"])
    run_audit(m, [make_adapter(2.0, "slow")], tmp_path / "ref", AuditConfig(groups=["gender"], concepts=CONCEPTS),
              metrics_options=STATS)
    ref = pd.read_csv(tmp_path / "ref" / "per_image.csv")
    assert len(web) == len(ref) == 20 and web["image_id"].is_unique
    assert np.allclose(web.sort_values("image_id")["p_true"], ref.sort_values("image_id")["p_true"], atol=1e-6)


def test_input_errors_are_uniform(audit_app):
    client = audit_app.test_client()
    assert "neither concepts nor classes" in error(client.post("/api/audits", json=BODY | {"concepts": ""}), 400)[
        "message"]
    assert "unknown group column" in error(client.post("/api/audits", json=BODY | {"groups": ["age"]}), 400)["message"]
    assert "unknown model" in error(client.post("/api/audits", json=BODY | {"models": ["nope"]}), 400)["message"]
    assert "face parts" in error(client.post("/api/audits", json=BODY | {"exclude_flags": ["blurry"]}), 400)["message"]
    msg = error(client.post("/api/audits", json=BODY | {"stereotypical": "doctor:male, nurse:other"}), 400)["message"]
    assert "'nurse:other': the manifest has no row with gender = 'other'" in msg
    runs = Path(audit_app.config["RUNS_DIR"])
    assert not runs.exists() or not any(runs.iterdir())  # refused runs leave nothing behind
    assert error(client.post("/api/audits", json=BODY | {"manifest": "synth/none.csv"}), 404)["code"] == "not_found"
    assert error(client.get("/api/audits/nope"), 404)["code"] == "not_found"
    assert error(client.get("/api/audits/..%2F..%2Fetc"), 404)
    assert error(client.post("/api/audits/nope/cancel"), 409)
    ins = client.post("/api/manifests/inspect", json={"manifest": "synth/manifest.csv"}).get_json()
    assert ins["valid"] and ins["n_images"] == 20 and ins["values"]["gender"] == ["female", "male"]
    assert ins["region_names"] == ["tool", "hair"]


def test_token_auth_covers_audit_routes(make_app, data_root, tmp_path):
    app = make_app(DATA_ROOT=str(data_root), RUNS_DIR=str(tmp_path / "r"), TOKEN="s3cret")
    c = app.test_client()
    assert error(c.get("/api/audits"), 401)["code"] == "unauthorized"
    assert c.get("/api/audits", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_nothing_outside_the_data_root_can_be_read(make_app, data_root, tmp_path):
    outside = tmp_path / "outside"
    write_dataset(outside, n_per_cell=1, seed=3)
    secret = outside / "img" / os.listdir(outside / "img")[0]
    root = tmp_path / "root"
    (root / "ok" / "img").mkdir(parents=True)
    # a manifest inside the root that links to an image outside it, and a link to an outside manifest
    (root / "ok" / "img" / "leak.png").symlink_to(secret)
    (root / "ok" / "manifest.csv").write_text("path,label,gender\nimg/leak.png,doctor,female\n")
    (root / "link.csv").symlink_to(outside / "manifest.csv")
    (root / "linkdir").symlink_to(outside)
    runs = tmp_path / "runs"
    # a run made elsewhere (CLI) on the outside data, copied into the runs directory
    m = load_manifest(outside / "manifest.csv", groups=["gender"])
    run_audit(m, [make_adapter(2.0, "biased")], runs / "foreign", AuditConfig(groups=["gender"], concepts=CONCEPTS,
                                                                             methods=["gradcam"]),
              metrics_options=STATS)
    app = make_app(DATA_ROOT=str(root), RUNS_DIR=str(runs),
                   EXTRA_MODELS={"biased": lambda: make_adapter(2.0, "biased")})
    c = app.test_client()
    start = BODY | {"name": "x"}
    assert "absolute" in error(c.post("/api/audits", json=start | {"manifest": str(outside / "manifest.csv")}), 400)[
        "message"]
    assert "'..'" in error(c.post("/api/audits", json=start | {"manifest": "../outside/manifest.csv"}), 400)["message"]
    assert error(c.post("/api/audits", json=start | {"manifest": "ok/../../outside/manifest.csv"}), 400)
    e = error(c.post("/api/audits", json=start | {"manifest": "link.csv"}), 403)
    assert "outside the data root" in e["message"]
    assert error(c.post("/api/audits", json=start | {"manifest": "linkdir/manifest.csv"}), 403)
    assert error(c.post("/api/manifests/inspect", json={"manifest": "link.csv"}), 403)
    leak = c.post("/api/manifests/inspect", json={"manifest": "ok/manifest.csv"}).get_json()
    assert not leak["valid"] and "outside the manifest's root" in leak["problems"][0]
    assert error(c.post("/api/audits", json=start | {"manifest": "ok/manifest.csv"}), 400)
    assert error(c.get("/api/files?path=../"), 400) and error(c.get("/api/files?path=/etc"), 400)
    assert error(c.get("/api/files?path=linkdir"), 403)
    listing = c.get("/api/files").get_json()
    assert [d["name"] for d in listing["folders"]] == ["ok"] and listing["manifests"] == []
    # the foreign run is listed but none of its content is served, by any route
    runs_listed = c.get("/api/audits").get_json()["runs"]
    assert runs_listed == [{"id": "foreign", "name": "foreign", "status": "error",
                            "files_allowed": False, "error": runs_listed[0]["error"]}]
    secret_bytes = secret.read_bytes()
    served = 0
    for rule in app.url_map.iter_rules():
        if "run_id" not in rule.arguments or "GET" not in rule.methods:
            continue
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda mt: {"run_id": "foreign", "image_id": "0",
                                                      "name": "m0_gradcam_gender_group.png"}[mt.group(1)], rule.rule)
        for q in ("", "?model=biased&method=gradcam"):
            resp = c.get(url + q)
            assert resp.status_code == 403, (url, resp.status_code)
            assert secret_bytes not in resp.data and b"doctor" not in resp.data
            served += 1
    assert served >= 20
    for post_url in ("/api/audits/foreign/resume", "/api/audits/foreign/images/0/explain"):
        assert error(c.post(post_url, json={"model": "biased"}), 403)
    # a run inside the root whose image is later swapped for a link to the outside: refused at read time
    (root / "good" / "img").mkdir(parents=True)
    Image.open(secret).save(root / "good" / "img" / "a.png")
    Image.open(secret).save(root / "good" / "img" / "b.png")
    (root / "good" / "manifest.csv").write_text("path,label,gender\nimg/a.png,doctor,female\nimg/b.png,nurse,male\n")
    assert c.post("/api/audits", json=start | {"manifest": "good/manifest.csv", "name": "good",
                                           "stereotypical": "doctor:female"}).status_code == 202
    assert wait_audit(c, "good")["status"] == "done"
    assert c.get("/api/audits/good/images/0/image.png").status_code == 200
    (root / "good" / "img" / "a.png").unlink()
    (root / "good" / "img" / "a.png").symlink_to(secret)
    for u in ("image.png", "overlay.png?model=biased&method=gradcam", "regions.png"):
        assert "outside the data root" in error(c.get(f"/api/audits/good/images/0/{u}"), 403)["message"]
    assert error(c.post("/api/audits/good/images/0/explain", json={"model": "biased"}), 403)


@pytest.mark.slow
def test_face_parts_audit_in_the_dashboard_data(make_app, tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("onnx2torch")
    from biasscope.faces import FacesUnavailableError, load_face_model
    from tests.audit.test_audit_faces import write_face_manifest

    try:
        fam = load_face_model("gender")
    except FacesUnavailableError as exc:
        pytest.skip(str(exc))
    root = tmp_path / "root"
    write_face_manifest(root / "faces")
    app = make_app(DATA_ROOT=str(root), EXTRA_MODELS={"gender": lambda: fam.adapter})
    c = app.test_client()
    r = c.post("/api/audits", json={"manifest": "faces/manifest.csv", "models": ["gender"], "groups": ["source"],
                                    "methods": ["gradcam"], "face_parts": True, "exclude_flags": ["tiny_face"],
                                    "n_boot": 100, "n_perm": 100, "min_group_size": 1, "name": "faces"})
    assert r.status_code == 202, r.get_json()
    info = wait_audit(c, "faces", timeout=300)
    assert info["status"] == "done" and info["config"]["face_parts"] is True
    assert (root / ".biasscope-runs" / "faces" / "metrics.json").is_file()  # default runs directory
    mm = c.get("/api/audits/faces/metrics.json").get_json()["models"]["gender"]
    assert mm["faces"]["quality"]["source"]["lfw"]["flags"]["blurry"]["count"] == 5
    assert "share:gradcam:eyes" in mm["groupings"]["source"]["regions"]["by_group"]["photo"]
    sheet = mm["faces"]["heatmaps"]["gradcam"]["groupings"]["source"]["group"]["file"].split("/")[-1]
    png = c.get(f"/api/audits/faces/faces/{sheet}")
    assert png.status_code == 200 and Image.open(io.BytesIO(png.data)).width >= 280
    assert error(c.get("/api/audits/faces/faces/..%2Fmetrics.json"), 404)
    d = c.get("/api/audits/faces/images/0").get_json()
    assert d["results"]["gender"]["face"]["flags"] == [] and d["results"]["gender"]["face"]["has_landmarks"]
    tinted = np.asarray(Image.open(io.BytesIO(c.get(d["regions_url"]).data)).convert("RGB"), dtype=int)
    orig = np.asarray(Image.open(root / "faces" / d["path"]).convert("RGB"), dtype=int)
    assert (np.abs(tinted - orig).sum(-1) > 30).mean() > 0.2  # face parts tinted


def test_stored_run_states_are_reported_in_the_job_vocabulary(audit_app, data_root, tmp_path):
    """A run store says complete / interrupted, or still 'running' when its server was killed; the API
    says done, or error with a reason and 'resumable' (nothing outside queued/running/done/error/cancelled)."""
    from biasscope.audit.store import RunStore
    from biasscope.jobs import JobStatus
    from biasscope.web.audits import MSG_STOPPED

    m = load_manifest(data_root / "synth" / "manifest.csv", groups=["gender"])
    run_audit(m, [make_adapter(2.0, "biased")], tmp_path / "runs" / "old",
              AuditConfig(groups=["gender"], methods=[], concepts=CONCEPTS), finalize=False)
    client, store = audit_app.test_client(), RunStore(tmp_path / "runs" / "old")
    seen = {}
    for stored in ("complete", "interrupted", "running", "cancelled", "done", "error"):
        store.set_meta("status", stored)
        info = client.get("/api/audits/old").get_json()
        listed = client.get("/api/audits").get_json()["runs"]
        assert [r["status"] for r in listed] == [info["status"]]
        seen[stored] = (info["status"], info["resumable"], info.get("error"))
    assert seen == {"complete": ("done", False, None), "interrupted": ("error", True, MSG_STOPPED),
                    "done": ("done", False, None), "error": ("error", True, MSG_STOPPED),
                    "running": ("error", True, MSG_STOPPED), "cancelled": ("cancelled", True, None)}
    assert {s for s, _, _ in seen.values()} <= {str(s) for s in JobStatus}


def test_min_effect_and_faithfulness_from_the_form_are_stored_and_used(audit_app, tmp_path):
    """The form's minimum effect per kind and explanation-quality switch reach the run: its stored options
    carry them (kinds not given keep the defaults), and faithfulness AUCs are computed."""
    from biasscope.audit.metrics import DEFAULT_MIN_EFFECT, effect_kind
    from biasscope.audit.store import RunStore

    client = audit_app.test_client()
    body = BODY | {"name": "strict", "min_effect": {"accuracy": 0.2, "share": "0.3", "removal": ""},
                   "faithfulness": True}
    assert client.post("/api/audits", json=body).status_code == 202
    assert wait_audit(client, "strict")["status"] == "done"
    store = RunStore(tmp_path / "runs" / "strict")
    want = DEFAULT_MIN_EFFECT | {"accuracy": 0.2, "share": 0.3}
    assert store.get_meta("metrics_options")["min_effect"] == want
    assert store.get_meta("config")["faithfulness"] is True
    metrics = client.get("/api/audits/strict/metrics.json").get_json()
    used = metrics["run"]["metrics_options"]["min_effect"]
    assert used == want
    gender = metrics["models"]["biased"]["groupings"]["gender"]
    assert gender["faithfulness"]["cells"]
    gaps = list(gender["gaps"].values())
    assert gaps and all(g["min_effect"] == used[effect_kind(g["metric"])] for g in gaps)
    assert {g["min_effect"] for g in gaps} >= {0.2}
    # the page offers both
    page = client.get("/audits").get_data(as_text=True)
    assert 'id="faithfulness"' in page and all(f'data-kind="{k}"' in page for k in DEFAULT_MIN_EFFECT)


@pytest.mark.parametrize("bad", [{"accuracy": 1.5}, {"accuracy": -0.1}, {"accuracy": "nan"}, {"accuracy": True},
                                 {"colour": 0.1}, [0.1], "accuracy=0.1"])
def test_invalid_min_effect_is_a_400(audit_app, bad):
    msg = error(audit_app.test_client().post("/api/audits", json=BODY | {"min_effect": bad}), 400)["message"]
    assert "min_effect" in msg


def test_image_listing_pages_through_the_store_like_the_full_table(audit_app, tmp_path):
    """GET /api/audits/{run}/images reads one page in SQLite; the oracle is the full per-image table filtered
    and sorted in pandas (what the route did before): same total, same rows in the same order, page by page."""
    from biasscope.audit import per_image_frame

    client = audit_app.test_client()
    body = BODY | {"name": "pages", "models": ["biased", "slow"], "methods": []}
    assert client.post("/api/audits", json=body).status_code == 202
    assert wait_audit(client, "pages")["status"] == "done"
    full = per_image_frame(tmp_path / "runs" / "pages")
    assert len(full) == 40

    def expected(where: dict[str, str], order: str) -> list[tuple[str, int]]:
        df = full
        for col, value in where.items():
            df = df[df[col].astype(str) == value]
        if order == "telling":
            df = df.assign(_wrong=~df["correct"].fillna(True).astype(bool), _p=df["p_true"].fillna(1.0))
            df = df.sort_values(["_wrong", "_p"], ascending=[False, True], kind="stable")
        return list(zip(df["model"], df["image_id"].astype(int)))

    cases = [({}, "telling"), ({}, "manifest"), ({"gender": "female"}, "telling"),
             ({"correct": "False"}, "manifest"), ({"gender": "female", "correct": "True"}, "telling"),
             ({"label": "doctor", "model": "slow"}, "telling")]
    for where, order in cases:
        want = expected(where, order)
        got, offset = [], 0
        while True:
            q = "&".join([f"order={order}", f"offset={offset}", "limit=7"]
                         + [f"where.{k}={v}" for k, v in where.items()])
            page = client.get(f"/api/audits/pages/images?{q}").get_json()
            assert page["total"] == len(want) and page["offset"] == offset and page["limit"] == 7, page
            got += [(r["model"], r["image_id"]) for r in page["rows"]]
            offset += 7
            if offset >= page["total"]:
                break
        assert got == want, (where, order)
    assert 0 < len(expected({"correct": "False"}, "manifest")) < 40  # the flag filter keeps some rows, not all
    totals = {v: client.get(f"/api/audits/pages/images?where.correct={v}").get_json()["total"]
              for v in ("True", "true", "1", "False", "0", "maybe")}
    assert totals["True"] == totals["true"] == totals["1"] == 40 - totals["False"] == 40 - totals["0"]
    assert totals["maybe"] == 0
    # one model's rows, and a row's values are the table's
    page = client.get("/api/audits/pages/images?model=biased&order=manifest&limit=500").get_json()
    sub = full[full["model"] == "biased"]
    assert page["total"] == len(sub) == 20
    for r, (_, row) in zip(page["rows"], sub.iterrows(), strict=True):
        assert r["path"] == row["path"] and r["correct"] == row["correct"]
        assert r["p_true"] == pytest.approx(row["p_true"])
    # bounds and unknown columns: the uniform 400
    for q, msg in [("limit=501", "'limit' must be between 1 and 500, got 501"),
                   ("order=random", "'order' must be telling or manifest"),
                   ("where.share:gradcam:tool=0.5", "no column 'share:gradcam:tool' to filter on")]:
        r = client.get(f"/api/audits/pages/images?{q}")
        assert r.status_code == 400 and msg in r.get_json()["error"]["message"], r.get_json()
