"""CLIP classes typed on the page: POST /api/models/clip-classes derives a model from the served CLIP model
by computing only the class text embeddings; its logits are open_clip's own zero-shot computation for those
classes (random weights here: mechanics only), and bad class lists are refused with a 400."""

from __future__ import annotations

import re

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

SPEC = "clip:ViT-B-32"


@pytest.fixture(scope="module")
def clip_extra():
    from biasscope.cli.serve import extra_models

    adapter = extra_models(SPEC, pretrained="random", classes="doctor,nurse")[SPEC]()
    return {SPEC: lambda: adapter}


@pytest.fixture
def client(make_app, clip_extra):
    return make_app(DEFAULT_MODEL=SPEC, EXTRA_MODELS=clip_extra).test_client()


def _reference_logits(x: torch.Tensor, classes: list[str], prompts: list[str]) -> torch.Tensor:
    torch.manual_seed(0)  # the same random initialisation, built by open_clip directly
    ref = open_clip.create_model("ViT-B-32").eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        text = []
        for c in classes:
            e = ref.encode_text(tok([p.format(c) for p in prompts]))
            e = e / e.norm(dim=-1, keepdim=True)
            text.append(e.mean(0) / e.mean(0).norm())
        img = ref.encode_image(x)
        img = img / img.norm(dim=-1, keepdim=True)
        return ref.logit_scale.exp() * img @ torch.stack(text).T


def test_classes_set_through_the_api_equal_open_clip(client):
    from biasscope.web.app import state

    classes, prompts = ["surgeon", "nurse", "pilot"], ["a photo of a {}.", "a {} at work"]
    r = client.post("/api/models/clip-classes", json={"base": SPEC, "classes": classes, "prompts": prompts})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    name = body["name"]
    assert body["base"] == SPEC and body["classes"] == classes and name.startswith(SPEC + "@")
    # the same request names the same model; it is listed, and its class list is the one given
    again = client.post("/api/models/clip-classes", json={"base": SPEC, "classes": classes, "prompts": prompts})
    assert again.get_json()["name"] == name
    assert any(m["name"] == name and m["ready"] for m in client.get("/api/models").get_json()["models"])
    got_classes = client.get(f"/api/models/{name}/classes").get_json()["classes"]
    assert [c["label"] for c in got_classes] == classes

    with client.application.app_context():
        registry = state().models
        derived, base = registry.get(name), registry.get(SPEC)
    assert derived.model.visual is base.model.visual  # the image tower is shared, not reloaded
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        got = derived.logits(x)
    want = _reference_logits(x, classes, prompts)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

    # predict and explain work with it
    r = client.post("/api/predict", json={"model": name, "sample": "coffee", "top": 3})
    assert r.status_code == 200, r.get_json()
    assert {p["label"] for p in r.get_json()["predictions"]} == set(classes)
    from .conftest import wait_job

    job = client.post("/api/explain", json={"model": name, "sample": "coffee", "methods": ["gradcam"],
                                            "target": "pilot", "faithfulness": False})
    assert job.status_code in (200, 202), job.get_json()
    done = wait_job(client, job.get_json()["id"], timeout=300)
    assert done["status"] == "done" and done["target"] == 2
    assert done["methods"]["gradcam"]["result"]["target"] == 2


def test_class_sets_are_bounded_least_recently_used_first(client):
    from biasscope.web.state import MAX_DERIVED_MODELS

    names = []
    for i in range(MAX_DERIVED_MODELS + 1):
        r = client.post("/api/models/clip-classes", json={"base": SPEC, "classes": f"cat{i}, dog{i}"})
        assert r.status_code == 200, r.get_json()
        names.append(r.get_json()["name"])
    listed = {m["name"] for m in client.get("/api/models").get_json()["models"]}
    assert names[0] not in listed and set(names[1:]) <= listed
    r = client.post("/api/predict", json={"model": names[0], "sample": "coffee"})
    assert r.status_code == 400 and "set its classes again" in r.get_json()["error"]["message"]


@pytest.mark.parametrize("body, says", [
    ({"classes": ["doctor"]}, "2 to 1000"),
    ({"classes": [f"c{i}" for i in range(1001)]}, "2 to 1000"),
    ({"classes": ["doctor", ""]}, "empty"),
    ({"classes": ["doctor", "Doctor"]}, "distinct"),
    ({"classes": ["doctor", "x" * 201]}, "longer than 200"),
    ({"classes": ["doctor", 3]}, "list of strings"),
    ({"classes": None}, "list of strings"),
    ({"classes": ["doctor", "nurse"], "prompts": ["a {} {}"]}, "at most one"),
    ({"classes": ["doctor", "nurse"], "base": "colour"}, "not a CLIP model"),
    ({"classes": ["doctor", "nurse"], "base": "nosuch"}, "unknown model"),
])
def test_invalid_class_lists_are_a_400(client, body, says):
    r = client.post("/api/models/clip-classes", json={"base": SPEC} | body)
    assert r.status_code == 400, r.get_json()
    assert says in r.get_json()["error"]["message"]


@pytest.mark.browser
@pytest.mark.slow
def test_page_lets_the_user_type_clip_classes(make_app, clip_extra):
    """Choosing the CLIP model shows a classes field filled with its classes; typing others and pressing the
    button makes the page predict over exactly those classes; a non-CLIP model hides the field."""
    from playwright.sync_api import expect

    from .conftest import browser_page

    app = make_app(DEFAULT_MODEL=SPEC, EXTRA_MODELS=clip_extra)
    with browser_page(app, timeout_ms=120_000) as (base, page, _problems):
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']")
        expect(page.locator("#clip-classes")).to_be_visible()
        expect(page.locator("#clip-classes-input")).to_have_value("doctor, nurse")
        page.locator("#samples .sample").first.click()
        page.locator("#predictions li.prediction, #error:not(.hidden)").first.wait_for()
        assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
        expect(page.locator("#predictions li.prediction")).to_have_count(2, timeout=120_000)
        page.fill("#clip-classes-input", "surgeon, pilot, chef")
        page.click("#clip-classes-btn")
        expect(page.locator("#model-select")).to_have_value(re.compile(r"^clip:ViT-B-32@"), timeout=120_000)
        expect(page.locator("#predictions li.prediction")).to_have_count(3, timeout=120_000)
        text = page.locator("#predictions").inner_text()
        assert all(c in text for c in ("surgeon", "pilot", "chef")) and "doctor" not in text
        page.select_option("#model-select", "colour")
        expect(page.locator("#clip-classes")).to_be_hidden()


def test_pickled_clip_module_drops_its_text_tower():
    """A pickled CLIP classifier (process pools) carries its image tower and class embeddings only; asking it
    for other classes then says what to do instead of failing obscurely."""
    import pickle

    from biasscope.errors import ModelError
    from biasscope.models.external import ZeroShotCLIP

    text = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    m = ZeroShotCLIP(torch.nn.Linear(3, 4), text, 100.0, lambda c, p: torch.randn(len(c), 4))  # a lambda: unpicklable
    back = pickle.loads(pickle.dumps(m))
    x = torch.randn(5, 3)
    torch.testing.assert_close(back(x), m(x))
    with pytest.raises(ModelError, match="load it again"):
        back.with_classes(["a", "b"])
