"""The registry says which methods each model can run and why not; the page greys the others out
with that reason (attention rollout needs a ViT, CAMs need layer hooks, guided backprop ReLUs)."""

from __future__ import annotations

import pytest

from tests.explainers.test_attention_rollout import tiny_vit
from tests.fixtures import make_adapter

from .conftest import browser_page


def _vit_adapter():
    adapter = make_adapter(tiny_vit(), input_size=8, num_classes=3, name="tinyvit",
                           target_layer="encoder.layers.encoder_layer_1.ln_1")
    adapter.source = "random-initialised test ViT"
    return adapter


def _rows(client, model):
    return {r["name"]: r for r in client.get(f"/api/explainers?model={model}").get_json()["explainers"]}


def test_explainers_api_says_what_each_model_can_run(make_app):
    client = make_app(EXTRA_MODELS={"tinyvit": _vit_adapter}).test_client()
    vit, cnn, nohooks = _rows(client, "tinyvit"), _rows(client, "colour"), _rows(client, "colour_nohooks")
    assert vit["attention_rollout"]["available"] and vit["gradcam"]["available"] and vit["scorecam"]["available"]
    assert not vit["guided_gradcam"]["available"] and "ReLU" in vit["guided_gradcam"]["reason"]
    assert not cnn["attention_rollout"]["available"]
    assert "needs a vision transformer" in cnn["attention_rollout"]["reason"]
    assert cnn["eigencam"]["available"] and cnn["guided_gradcam"]["available"]
    for cam in ("gradcam", "hirescam", "layercam", "xgradcam", "eigencam", "scorecam"):
        assert not nohooks[cam]["available"] and "no layer hooks" in nohooks[cam]["reason"]
    assert nohooks["integrated_gradients"]["available"]
    # asking anyway is refused with the same reason
    r = client.post("/api/explain", json={"model": "colour", "sample": "coffee", "methods": ["attention_rollout"]})
    assert r.status_code >= 400 and "needs a vision transformer" in r.get_json()["error"]["message"]


def test_explainers_api_for_transformers_models(make_app, tmp_path):
    """A Hugging Face ViT (loaded from a saved folder by biasscope's own loader) can run attention rollout;
    a Swin (windowed attention, no class token) is refused with that reason, in the list and when asked."""
    pytest.importorskip("transformers")
    from biasscope.models import load_model
    from tests.explainers.test_attention_rollout import hf_folder

    vit, swin = hf_folder(tmp_path / "vit"), hf_folder(tmp_path / "swin", "swin")
    client = make_app(EXTRA_MODELS={"hfvit": lambda: load_model(str(vit), backend="torch"),
                                    "hfswin": lambda: load_model(str(swin), backend="torch")}).test_client()
    vit_rows, swin_rows = _rows(client, "hfvit"), _rows(client, "hfswin")
    assert vit_rows["attention_rollout"]["available"] and vit_rows["gradcam"]["available"]
    assert not swin_rows["attention_rollout"]["available"]
    reason = swin_rows["attention_rollout"]["reason"]
    assert "needs a vision transformer" in reason and "transformers swin model without a class token" in reason
    r = client.post("/api/explain", json={"model": "hfswin", "sample": "coffee", "methods": ["attention_rollout"]})
    assert r.status_code >= 400 and "without a class token" in r.get_json()["error"]["message"]
    r = client.post("/api/explain", json={"model": "hfvit", "sample": "coffee", "methods": ["attention_rollout"]})
    assert r.status_code == 200 and r.get_json()["methods"]["attention_rollout"]["status"] == "done", r.get_json()


@pytest.mark.browser
@pytest.mark.slow
def test_page_greys_out_unavailable_methods(make_app):
    from playwright.sync_api import expect

    app = make_app(EXTRA_MODELS={"tinyvit": _vit_adapter})
    with browser_page(app, timeout_ms=30_000) as (base, page, _problems):
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']")
        rollout = page.locator('.method[data-method="attention_rollout"]')
        expect(rollout).to_have_class("method unavailable")
        expect(rollout.locator(".method-check")).to_be_disabled()
        expect(rollout.locator(".method-reason")).to_contain_text("needs a vision transformer")
        expect(page.locator('.method[data-method="gradcam"] .method-check')).to_be_enabled()

        page.select_option("#model-select", "colour_nohooks")
        expect(page.locator('.method[data-method="gradcam"] .method-check')).to_be_disabled()
        expect(page.locator('.method[data-method="gradcam"] .method-check')).not_to_be_checked()
        expect(page.locator('.method[data-method="gradcam"] .method-reason')).to_contain_text("no layer hooks")

        page.select_option("#model-select", "tinyvit")
        expect(rollout.locator(".method-check")).to_be_enabled()
        expect(rollout.locator(".method-reason")).to_have_count(0)
        expect(page.locator('.method[data-method="guided_gradcam"] .method-check')).to_be_disabled()


@pytest.mark.slow
def test_serve_a_clip_model_with_its_classes(make_app):
    """``biasscope serve --model clip:ViT-B-32 --pretrained ... --classes doctor,nurse``: the app lists the
    CLIP model, predicts and explains over its classes (random weights here: mechanics only)."""
    pytest.importorskip("open_clip")
    from biasscope.cli.serve import extra_models
    from biasscope.models import load_model

    spec = "clip:ViT-B-32"
    assert extra_models("resnet18") == {}
    extra = extra_models(spec, pretrained="random", classes="doctor,nurse")
    client = make_app(DEFAULT_MODEL=spec, EXTRA_MODELS=extra).test_client()
    models = client.get("/api/models").get_json()
    assert models["default"] == spec and any(m["name"] == spec and m["ready"] for m in models["models"])
    r = client.post("/api/predict", json={"model": spec, "sample": "coffee", "top": 2})
    assert r.status_code == 200, r.get_json()
    preds = r.get_json()["predictions"]
    assert {p["label"] for p in preds} == {"doctor", "nurse"}
    # the same probabilities as the model loaded directly (the sample photo through the same preprocessing)
    from biasscope.web.samples import load_sample

    direct = load_model(spec, pretrained="random", classes="doctor,nurse", backend="torch")
    want = direct.predict(load_sample("coffee"), top=2)[0]
    for p, q in zip(preds, want):
        assert p["label"] == q.label and p["probability"] == pytest.approx(q.probability, abs=1e-4)
    rows = _rows(client, spec)
    assert rows["attention_rollout"]["available"] and rows["gradcam"]["available"]
    assert not rows["guided_gradcam"]["available"]
