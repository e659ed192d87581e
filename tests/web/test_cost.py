"""/api/explain answers cheap requests in the request thread and queues dear ones as jobs.

The rule (``MAX_SYNC_COST``, in estimated forward passes; a backward pass counts two): the estimate is
1 (prediction) + each method's :meth:`Explainer.cost` + 42 per method with faithfulness. Slow methods
are always queued. The oracles: the estimate is computed by hand from the declared costs, a request
on either side of the bound is answered 200 or 202, and a queued IG still equals its hand-derived map.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from biasscope.explainers import get_explainer

from .conftest import colour_adapter, expected_cam, png, two_colour, wait_job

IMG = two_colour((230, 20, 0), (10, 60, 240))


def _upload(client) -> str:
    r = client.post("/api/images", data={"image": (io.BytesIO(png(IMG)), "x.png")}, content_type="multipart/form-data")
    return r.get_json()["id"]


def test_declared_costs():
    size = 224
    assert get_explainer("gradcam").cost({}, size) == 3  # a forward and a backward
    assert get_explainer("ig").cost({"steps": 50}, size) == 151
    assert get_explainer("smoothgrad").cost({"n_samples": 25}, size) == 75
    assert get_explainer("gradient_shap").cost({"n_samples": 50}, size) == 150
    assert get_explainer("guided_gradcam").cost({}, size) == 6


@pytest.mark.parametrize(("steps", "faithfulness", "cost", "status"), [
    (132, False, 398, 200),  # 1 + (3 * 132 + 1)
    (133, False, 401, 202),  # 1 + (3 * 133 + 1)
    (118, True, 398, 200),   # 1 + (3 * 118 + 1) + 42
    (119, True, 401, 202),   # 1 + (3 * 119 + 1) + 42
])
def test_requests_on_either_side_of_the_bound(make_app, steps, faithfulness, cost, status):
    c = make_app(MAX_SYNC_COST=400).test_client()
    body = {"image_id": _upload(c), "methods": ["ig"], "target": "red", "faithfulness": faithfulness,
            "params": {"ig": {"steps": steps}}}
    r = c.post("/api/explain", json=body)
    assert r.status_code == status, r.get_data(as_text=True)
    if status == 202:
        assert r.get_json()["queued_because"].startswith(
            f"the estimated cost ({cost} forward passes) is above this server's bound of 400: follow GET /api/jobs/")
    job = r.get_json() if status == 200 else wait_job(c, r.get_json()["id"])
    assert job["status"] == "done"
    heat = c.get(f"/api/jobs/{job['id']}/result.json").get_json()
    got = np.asarray(heat["methods"]["integrated_gradients"]["result"]["model_heatmap"])
    want = expected_cam(IMG, 0)
    assert np.allclose(got, want, atol=1e-4 * float(np.abs(want).max()))


def test_ig_at_1000_steps_is_a_job_with_progress_cancel_and_the_exact_map(make_app):
    """IG at 1,000 steps held a request thread for 38 s on ResNet-18; now it is queued (202) at once.
    The colour model sleeps 0.05 s per forward and IG runs 8 points per batch, so the job needs at
    least 125 x 0.05 s: it cannot be done when the 202 comes back (a lower bound, not a timing bet)."""
    app = make_app(EXTRA_MODELS={"slow": lambda: colour_adapter(0.05, name="slow")}, DEFAULT_MODEL="slow")
    c = app.test_client()
    iid = _upload(c)
    body = {"image_id": iid, "methods": ["ig"], "target": "red", "faithfulness": False,
            "params": {"ig": {"steps": 1000}}}
    r = c.post("/api/explain", json=body)
    assert r.status_code == 202 and r.headers["Location"] == f"/api/jobs/{r.get_json()['id']}"
    first = r.get_json()
    assert first["status"] in ("queued", "running")
    assert c.get("/api/health").status_code == 200  # answered while the job runs
    mid = wait_job(c, first["id"], until=lambda j: j["methods"]["integrated_gradients"]["progress"] > 0)
    assert 0 < mid["methods"]["integrated_gradients"]["progress"] <= 1
    c.post(f"/api/jobs/{first['id']}/cancel")
    assert wait_job(c, first["id"])["status"] in ("cancelled", "done")
    # the same request on the fast model runs to the end: the queued result is the hand-derived map
    fast = make_app().test_client()
    r = fast.post("/api/explain", json=body | {"image_id": _upload(fast)})
    assert r.status_code == 202
    job = wait_job(fast, r.get_json()["id"])
    assert job["status"] == "done"
    doc = fast.get(f"/api/jobs/{job['id']}/result.json").get_json()
    heat = np.asarray(doc["methods"]["integrated_gradients"]["result"]["model_heatmap"])
    want = expected_cam(IMG, 0)
    assert np.allclose(heat, want, atol=1e-4 * float(np.abs(want).max()))
