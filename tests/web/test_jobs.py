"""Background jobs: progress, results per method, cancellation, expiry and bounded memory."""

from __future__ import annotations

import gc
import io
import os
import time
import tracemalloc

import numpy as np
from PIL import Image

from .conftest import colour_adapter, png, two_colour, wait_job

RED_BLUE = two_colour((255, 0, 0), (0, 0, 255))


def slow_app(make_app, delay: float = 0.02, **config):
    """The colour model with ``delay`` seconds per forward pass: IG with many steps takes seconds."""
    return make_app(EXTRA_MODELS={"slow": lambda: colour_adapter(delay, name="slow")}, DEFAULT_MODEL="slow", **config)


def image_id(client) -> str:
    r = client.post("/api/images", data={"image": (io.BytesIO(png(RED_BLUE)), "rb.png")},
                    content_type="multipart/form-data")
    return r.get_json()["id"]


def test_results_appear_per_method_and_progress_grows(make_app):
    c = slow_app(make_app).test_client()
    body = {"image_id": image_id(c), "methods": ["gradcam", "integrated_gradients"],
            "params": {"integrated_gradients": {"steps": 400}}, "faithfulness": False}
    job = c.post("/api/jobs", json=body).get_json()
    assert job["status"] in ("queued", "running") and job["progress"] < 1
    # Grad-CAM's result is served while IG is still running
    mid = wait_job(c, job["id"], until=lambda j: j["methods"]["integrated_gradients"]["progress"] > 0.1)
    assert mid["status"] == "running"
    assert mid["methods"]["gradcam"]["status"] == "done" and "result" in mid["methods"]["gradcam"]
    assert mid["methods"]["integrated_gradients"]["status"] == "running"
    assert "result" not in mid["methods"]["integrated_gradients"]
    assert 0.5 < mid["progress"] < 1.0
    assert c.get(mid["methods"]["gradcam"]["result"]["heatmap_url"]).status_code == 200
    assert mid["predictions"][0]["label"] in ("red", "blue")
    # progress grows while the method runs: wait for two increases (event-driven, no fixed sleep)
    seen = [mid["methods"]["integrated_gradients"]["progress"]]
    for _ in range(2):
        last = seen[-1]
        j = wait_job(c, job["id"], timeout=120,
                     until=lambda j, last=last: j["methods"]["integrated_gradients"]["progress"] > last)
        seen.append(j["methods"]["integrated_gradients"]["progress"])
    assert seen == sorted(seen) and seen[-1] > seen[0]
    c.post(f"/api/jobs/{job['id']}/cancel")
    wait_job(c, job["id"])


def test_cancel_running_and_queued_jobs(make_app):
    adapter = colour_adapter(0.02, name="slow")
    app = make_app(EXTRA_MODELS={"slow": lambda: adapter}, DEFAULT_MODEL="slow", JOB_WORKERS=1)
    c = app.test_client()
    iid = image_id(c)
    body = {"image_id": iid, "methods": ["integrated_gradients", "gradcam"], "faithfulness": False,
            "params": {"integrated_gradients": {"steps": 1000}}}
    running = c.post("/api/jobs", json=body).get_json()
    queued = c.post("/api/jobs", json=body).get_json()
    wait_job(c, running["id"], until=lambda j: j["methods"]["integrated_gradients"]["progress"] > 0)
    assert c.get(f"/api/jobs/{queued['id']}").get_json()["status"] == "queued"
    # a queued job is cancelled at once
    q = c.post(f"/api/jobs/{queued['id']}/cancel").get_json()
    assert q["status"] == "cancelled" and all(m["status"] == "cancelled" for m in q["methods"].values())
    # a running one stops at its next progress report: counted in forward passes, not seconds, so a
    # loaded machine cannot fail it. IG at 1000 steps in batches of 8 is 125 forwards; after the
    # cancel at most the batch in flight and the one before its progress report run.
    at_cancel = adapter.model.calls
    c.post(f"/api/jobs/{running['id']}/cancel")
    done = wait_job(c, running["id"], timeout=120)
    assert adapter.model.calls - at_cancel <= 2
    assert adapter.model.calls < 125
    assert done["status"] == "cancelled" and done["progress"] < 1
    assert done["methods"]["integrated_gradients"]["status"] == "cancelled"
    assert done["methods"]["gradcam"]["status"] == "cancelled"
    assert "result" not in done["methods"]["integrated_gradients"]
    # the worker is free again: a new job runs to the end
    after = c.post("/api/jobs", json={"image_id": iid, "methods": ["gradcam"]}).get_json()
    assert wait_job(c, after["id"])["status"] == "done"


def test_queue_is_bounded(make_app):
    app = slow_app(make_app, JOB_WORKERS=1, MAX_PENDING_JOBS=2)
    c = app.test_client()
    body = {"image_id": image_id(c), "methods": ["integrated_gradients"], "faithfulness": False,
            "params": {"integrated_gradients": {"steps": 1000}}}
    ids = [c.post("/api/jobs", json=body).get_json()["id"] for _ in range(2)]
    r = c.post("/api/jobs", json=body)
    assert r.status_code == 503 and "busy" in r.get_json()["error"]["message"]
    for i in ids:
        c.post(f"/api/jobs/{i}/cancel")
    for i in ids:
        wait_job(c, i)
    assert c.post("/api/jobs", json={"image_id": body["image_id"], "methods": ["gradcam"]}).status_code == 202


class _Clock:
    """The jobs module's ``time`` with a hand-moved ``time()``: expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_results_expire(make_app, monkeypatch):
    import biasscope.web.jobs as jobs_module

    clock = _Clock()
    monkeypatch.setattr(jobs_module, "time", clock)
    c = make_app(JOB_TTL_S=30).test_client()
    job = c.post("/api/explain", json={"image_id": image_id(c), "methods": ["gradcam"]}).get_json()
    clock.now += 29
    assert c.get(f"/api/jobs/{job['id']}").status_code == 200
    clock.now += 2
    r = c.get(f"/api/jobs/{job['id']}")
    assert r.status_code == 404 and "expire" in r.get_json()["error"]["message"]


def test_images_are_bounded_private_and_cleaned_up(make_app):
    app = make_app(MAX_IMAGES=4)
    c = app.test_client()
    store = app.extensions["biasscope"].images
    assert os.stat(store.root).st_mode & 0o777 == 0o700
    ids = [image_id(c) for _ in range(10)]
    assert len(store) == 4 and len(os.listdir(store.root)) == 4
    assert c.get(f"/api/images/{ids[0]}.png").status_code == 404
    assert c.get(f"/api/images/{ids[-1]}.png").status_code == 200
    root = store.root
    app.extensions["biasscope"].close()
    assert not os.path.exists(root)


def test_memory_stays_bounded_over_many_requests(make_app):
    app = make_app(MAX_JOBS=5, MAX_IMAGES=5)
    st = app.extensions["biasscope"]
    c = app.test_client()
    rng = np.random.default_rng(0)
    photos = [png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]

    def round_trip(i: int) -> None:
        r = c.post("/api/explain", data={"image": (io.BytesIO(photos[i % 4]), "p.png"), "methods": "gradcam",
                                         "faithfulness": "false"}, content_type="multipart/form-data")
        assert r.status_code == 200
        c.get(r.get_json()["methods"]["gradcam"]["result"]["overlay_url"]).close()

    for i in range(10):  # warm up caches
        round_trip(i)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            round_trip(i)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(st.jobs) <= 5 and len(st.images) <= 5 and len(os.listdir(st.images.root)) <= 5
    # each request keeps ~35 kB of results (heatmaps, PNGs): ~3.5 MB if nothing were evicted
    assert growth < 1_000_000, growth


def test_result_memory_budget(make_app):
    app = make_app(MAX_RESULT_BYTES=1, MAX_JOBS=100)
    c = app.test_client()
    iid = image_id(c)
    first = c.post("/api/explain", json={"image_id": iid, "methods": ["gradcam"]}).get_json()
    c.post("/api/explain", json={"image_id": iid, "methods": ["gradcam"]})
    # the older finished job was dropped to respect the budget
    assert c.get(f"/api/jobs/{first['id']}").status_code == 404


def test_a_job_preprocesses_and_forwards_the_image_once(make_app):
    """k methods cost one forward for the predictions and targets plus each method's own forwards
    (counted on the colour model's ``calls``); before, every method forwarded the image again."""
    import torch

    from biasscope.explainers import get_explainer

    methods = ["gradcam", "gradcampp", "integrated_gradients"]
    params = {"integrated_gradients": {"steps": 4}}
    adapter = colour_adapter(name="counted")
    # each method alone on the preprocessed image, red (class 0) as the target: its own forwards
    x = adapter.preprocess(Image.fromarray(RED_BLUE))
    own = []
    for m in methods:
        before = adapter.model.calls
        get_explainer(m)(adapter, **params.get(m, {})).run(x, torch.tensor([0]))
        own.append(adapter.model.calls - before)
    assert own == [1, 1, 2]  # a CAM: one forward; IG: its 4 path points in one batch of 8, and f(x), f(b)
    c = make_app(EXTRA_MODELS={"counted": lambda: adapter}, DEFAULT_MODEL="counted").test_client()
    body = {"image_id": image_id(c), "methods": methods, "params": params, "faithfulness": False, "target": 0}
    before = adapter.model.calls
    job = wait_job(c, c.post("/api/jobs", json=body).get_json()["id"])
    assert job["status"] == "done" and [m["status"] for m in job["methods"].values()] == ["done"] * 3
    assert adapter.model.calls - before == 1 + sum(own)
    assert job["predictions"][0]["label"] in ("red", "blue")
    assert abs(job["predictions"][0]["probability"] - job["methods"]["gradcam"]["result"]["target_probability"]) < 1e-6
