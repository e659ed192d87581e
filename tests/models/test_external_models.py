"""timm, Hugging Face transformers and open_clip CLIP models through ``load_model``.

Pretrained weights cannot be downloaded here, so every test uses random-initialised models (timm with
``pretrained=False``, open_clip with ``pretrained='random'``, transformers from a tiny config saved to a
temporary folder): they check the mechanics (weights found in the local caches, preprocessing, class
names, logits equal to the library's own computation, CAMs), not what a trained model predicts.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from biasscope.errors import ModelError, WeightsMissingError
from biasscope.explainers._cam import to_grid
from biasscope.models import load_model

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def _img(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- timm
@pytest.fixture(scope="module")
def timm_vit():
    torch.manual_seed(0)
    return timm.create_model(TIMM_NAME, pretrained=False).eval()


def _fake_hf_cache(root, repo: str, filename: str, write) -> None:
    """The Hugging Face hub cache layout: ``models--ORG--NAME/{refs/main, snapshots/REV/FILE}``."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snap = folder / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    write(snap / filename)


def test_timm_weights_from_local_hf_cache_and_clear_message_when_absent(tmp_path, monkeypatch, timm_vit):
    import huggingface_hub.constants
    from safetensors.torch import save_file
    from timm.data import ImageNetInfo, resolve_data_config

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsMissingError) as err:
        load_model(f"timm:{TIMM_NAME}")
    msg = str(err.value)
    assert "model.safetensors" in msg and str(tmp_path / "hub" / f"models--timm--{TIMM_NAME}") in msg
    assert "--download" in msg

    _fake_hf_cache(tmp_path / "hub", f"timm/{TIMM_NAME}", "model.safetensors",
                   lambda p: save_file({k: v.contiguous() for k, v in timm_vit.state_dict().items()}, str(p)))
    adapter = load_model(f"timm:{TIMM_NAME}", backend="torch")
    assert adapter.name == f"timm:{TIMM_NAME}" and "model.safetensors" in adapter.source
    data = resolve_data_config({}, model=timm_vit)
    assert (adapter.input_size, adapter.mean, adapter.std) == (224, tuple(data["mean"]), tuple(data["std"]))
    assert adapter.class_names[1] == ImageNetInfo().index_to_description(1) and adapter.num_classes == 1000
    x = adapter.preprocess(_img(224))
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), timm_vit(x), rtol=1e-4, atol=1e-5)
    assert adapter.target_layer_name == "blocks.11.norm1"  # the last block's first LayerNorm


def test_timm_state_dict_file_and_cams(tmp_path, timm_vit):
    from pytorch_grad_cam import GradCAM as RefGradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from biasscope.explainers import get_explainer

    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    adapter = load_model("timm:vit_tiny_patch16_224", weights=tmp_path / "vit.pth", backend="torch")
    adapter.set_batch_sizes(forward=4, backward=4)
    x = adapter.preprocess(_img(224, 1))
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), timm_vit(x), rtol=1e-4, atol=1e-5)
    ours = get_explainer("gradcam")(adapter).attribute(x, torch.tensor([5])).maps.numpy()

    def reshape(t):
        return t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).transpose(2, 3).transpose(1, 2)

    with RefGradCAM(model=adapter.model, target_layers=[adapter.target_layer], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(5)])[0]
    mine = scale_cam_image(scale_cam_image(ours, (224, 224)), (224, 224))[0]
    assert ours.max() > 0 and np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.99
    with pytest.raises(ModelError, match="timm has no model"):
        load_model("timm:no_such_model_xyz")


# ---------------------------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vit")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3,
                                 id2label={0: "doctor", 1: "nurse", 2: "surgeon"},
                                 label2id={"doctor": 0, "nurse": 1, "surgeon": 2})
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def test_hf_folder_uses_processor_and_id2label(hf_folder):
    adapter = load_model(str(hf_folder), backend="torch")
    assert adapter.class_names == ["doctor", "nurse", "surgeon"]
    assert adapter.input_size == 32
    np.testing.assert_allclose(adapter.mean, (0.4, 0.5, 0.6))
    np.testing.assert_allclose(adapter.std, (0.2, 0.25, 0.3))
    assert adapter.target_layer_name.endswith(".1.layernorm_before")  # the last block (names vary by version)
    # probabilities equal transformers' own pipeline (its processor, its model) on the same image
    ref_model = transformers.ViTForImageClassification.from_pretrained(hf_folder).eval()
    proc = transformers.ViTImageProcessor.from_pretrained(hf_folder)
    img = _img(32, 3)
    with torch.no_grad():
        want = torch.softmax(ref_model(**proc(images=img, return_tensors="pt")).logits, 1)
    got = adapter.probabilities(adapter.preprocess(img))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert isinstance(adapter.logits(adapter.preprocess(img)), torch.Tensor)  # a plain logits module


def test_hf_gradcam_matches_pytorch_grad_cam(hf_folder):
    from pytorch_grad_cam import GradCAM as RefGradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from biasscope.explainers import get_explainer

    adapter = load_model(str(hf_folder), backend="torch")
    adapter.set_batch_sizes(forward=4, backward=4)
    x = adapter.preprocess(_img(32, 4))
    ours = get_explainer("gradcam")(adapter).attribute(x, torch.tensor([2])).maps.numpy()

    def reshape(t):
        return t[:, 1:, :].reshape(t.size(0), 4, 4, t.size(2)).transpose(2, 3).transpose(1, 2)

    with RefGradCAM(model=adapter.model, target_layers=[adapter.target_layer], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(2)])[0]
    mine = scale_cam_image(scale_cam_image(ours, (32, 32)), (32, 32))[0]
    assert ours.max() > 0 and np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.99


def test_hf_missing_model_names_the_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsMissingError) as err:
        load_model("hf:nobody/no-such-vit")
    assert "models--nobody--no-such-vit" in str(err.value) and "--download" in str(err.value)


# ---------------------------------------------------------------------------------------------- CLIP
@functools.cache
def clip_adapter(prompts: tuple[str, ...] | None = None):
    torch.manual_seed(0)
    return load_model("clip:ViT-B-32", pretrained="random", classes="doctor,nurse", prompts=prompts,
                      backend="torch")


def test_clip_zero_shot_logits_are_scaled_cosine_similarity():
    prompts = ("a photo of a {}.", "a portrait of a {} at work.")
    adapter = clip_adapter(prompts)
    assert adapter.class_names == ["doctor", "nurse"] and "mechanics only" in adapter.note
    assert adapter.target_layer_name == "visual.transformer.resblocks.11.ln_1"
    torch.manual_seed(0)  # the same random initialisation, built by open_clip directly
    ref = open_clip.create_model("ViT-B-32").eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    x = adapter.preprocess(_img(64, 5))
    with torch.no_grad():
        text = []
        for c in ("doctor", "nurse"):
            e = ref.encode_text(tok([p.format(c) for p in prompts]))
            e = e / e.norm(dim=-1, keepdim=True)
            text.append(e.mean(0) / e.mean(0).norm())
        img = ref.encode_image(x)
        img = img / img.norm(dim=-1, keepdim=True)
        want = ref.logit_scale.exp() * img @ torch.stack(text).T
        got = adapter.logits(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert adapter.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_clip_options_and_messages(tmp_path):
    with pytest.raises(ModelError, match="at least two classes"):
        load_model("clip:ViT-B-32", pretrained="random", classes="doctor")
    with pytest.raises(ModelError, match="needs --pretrained"):
        load_model("clip:ViT-B-32", classes="doctor,nurse")
    with pytest.raises(ModelError, match="for CLIP models"):
        load_model("resnet18", classes="doctor,nurse")
    with pytest.raises(WeightsMissingError) as err:
        load_model("clip:ViT-B-32", pretrained="laion2b_s34b_b79k", classes="doctor,nurse")
    assert "open_clip_model.safetensors" in str(err.value) and "models--laion--CLIP-ViT-B-32" in str(err.value)
    f = tmp_path / "classes.txt"
    f.write_text("female doctor\nmale nurse\n")
    from biasscope.models.external import parse_classes

    assert parse_classes(str(f)) == ["female doctor", "male nurse"]
    assert parse_classes(" doctor , nurse,") == ["doctor", "nurse"]


@pytest.mark.slow
def test_cli_predict_and_explain_with_clip_classes(tmp_path):
    import json

    from click.testing import CliRunner

    from biasscope.cli import main

    _img(64, 6).save(tmp_path / "p.png")
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "p.png"), "--model", "clip:ViT-B-32", "--pretrained",
                                    "random", "--classes", "doctor,nurse", "--prompt", "a photo of a {}.", "--json",
                                    "--backend", "torch"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    preds = out["images"][0]["predictions"]
    assert {p["label"] for p in preds} == {"doctor", "nurse"}
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0, abs=1e-5)
    assert out["model"]["name"] == "clip:ViT-B-32" and out["model"]["num_classes"] == 2
    res = CliRunner().invoke(main, ["explain", str(tmp_path / "p.png"), "--model", "clip:ViT-B-32", "--pretrained",
                                    "random", "--classes", "doctor,nurse", "--method", "gradcam,attention_rollout",
                                    "--target", "nurse", "--no-faithfulness", "--backend", "torch",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for method in ("gradcam", "attention_rollout"):
        assert summary["methods"][method]["target_name"] == "nurse"
        heat = np.load(tmp_path / "out" / f"{method}.npy")
        assert heat.shape == (64, 64) and heat.max() > 0


# ---------------------------------------------------------------------------------------------- zoo transformers
@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_32", "swin_v2_t", "maxvit_t", "convnext_small", "efficientnet_v2_s",
                                  "regnet_x_400mf"])
def test_new_zoo_models_default_layers_give_grids(name):
    from biasscope.models.zoo import SUPPORTED_MODELS, build_architecture, default_target_layer, target_layout

    model = build_architecture(name, 10).eval()
    layer, path = default_target_layer(model, name)
    assert path == SUPPORTED_MODELS[name]
    seen = {}
    h = layer.register_forward_hook(lambda _m, _i, o: seen.__setitem__("o", o))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    h.remove()
    grid = to_grid(seen["o"], target_layout(name, path), 1, 224)
    assert grid.shape[-2:] == (7, 7), (name, tuple(seen["o"].shape))


def test_gradient_methods_work_unchanged_on_a_transformers_model(hf_folder):
    # Integrated Gradients' completeness (sum of attributions = logit difference from the baseline)
    # holds on the wrapped transformers ViT: gradients flow through the plain logits module
    from biasscope.explainers import get_explainer

    adapter = load_model(str(hf_folder), backend="torch")
    adapter.set_batch_sizes(forward=64, backward=64)
    x = adapter.preprocess([_img(32, 7), _img(32, 8)])
    attr = get_explainer("integrated_gradients")(adapter, steps=64).attribute(x, torch.tensor([0, 2]))
    for c in attr.checks:
        assert abs(c["logit_difference"]) > 1e-3
        assert c["completeness_relative"] < 1e-2, c
