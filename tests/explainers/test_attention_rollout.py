"""Attention rollout (Abnar & Zuidema 2020): the forward pass of a tiny random torchvision ViT
rewritten in numpy gives each layer's attention, and the rollout is multiplied out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasscope.errors import MethodUnavailableError
from biasscope.explainers import get_explainer
from tests.fixtures import HandConvNet, f32_tol, leftover_hooks, make_adapter


def tiny_vit(seed: int = 0):
    """torchvision's VisionTransformer: 8x8 input, 4x4 patches (2x2 grid + class token), 2 layers,
    2 heads of width 3; weights drawn with a large spread so attention is far from uniform."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=6, mlp_dim=8,
                              num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.8)
    return model.eval()


def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def attentions_by_hand(model, x: np.ndarray) -> list[np.ndarray]:
    """Per-layer ``(heads, T, T)`` softmax attention of ``model`` on one image ``(3, 8, 8)``, in numpy."""
    P = {k: v.double().numpy() for k, v in model.state_dict().items()}
    W = P["conv_proj.weight"]  # (E, 3, 4, 4)
    patches = [x[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] for i in range(2) for j in range(2)]
    tokens = np.stack([np.einsum("echw,chw->e", W, p) + P["conv_proj.bias"] for p in patches])
    h = np.concatenate([P["class_token"][0], tokens]) + P["encoder.pos_embedding"][0]
    E, heads = h.shape[1], 2
    d = E // heads
    out = []
    for layer in range(2):
        pre = f"encoder.layers.encoder_layer_{layer}."
        z = _ln(h, P[pre + "ln_1.weight"], P[pre + "ln_1.bias"])
        qkv = z @ P[pre + "self_attention.in_proj_weight"].T + P[pre + "self_attention.in_proj_bias"]
        q, k, v = qkv[:, :E], qkv[:, E : 2 * E], qkv[:, 2 * E :]
        att, ctx = [], []
        for hd in range(heads):
            s = q[:, hd * d : (hd + 1) * d] @ k[:, hd * d : (hd + 1) * d].T / np.sqrt(d)
            s = np.exp(s - s.max(1, keepdims=True))
            a = s / s.sum(1, keepdims=True)
            att.append(a)
            ctx.append(a @ v[:, hd * d : (hd + 1) * d])
        out.append(np.stack(att))
        h = h + np.concatenate(ctx, 1) @ P[pre + "self_attention.out_proj.weight"].T \
            + P[pre + "self_attention.out_proj.bias"]
        y = _ln(h, P[pre + "ln_2.weight"], P[pre + "ln_2.bias"])
        y = _gelu(y @ P[pre + "mlp.0.weight"].T + P[pre + "mlp.0.bias"])
        h = h + y @ P[pre + "mlp.3.weight"].T + P[pre + "mlp.3.bias"]
    return out


def rollout_by_hand(atts: list[np.ndarray], fusion: str, discard: float, leading: int = 1) -> np.ndarray:
    """The class token's (token 0) rollout over the patches, the tokens after the ``leading`` ones."""
    t = atts[0].shape[-1]
    R = np.eye(t)
    for a in atts:
        f = {"mean": a.mean(0), "max": a.max(0), "min": a.min(0)}[fusion].copy()
        k = int(t * t * discard)
        if k:
            order = np.argsort(f.ravel(), kind="stable")[:k]
            for flat in order:
                i, j = divmod(int(flat), t)
                if j != 0:  # attention paid to the class token is kept
                    f[i, j] = 0.0
        m = 0.5 * f + 0.5 * np.eye(t)
        m = m / m.sum(1, keepdims=True)
        R = m @ R
    g = int(np.sqrt(t - leading))
    return R[0, leading:].reshape(g, g)


@pytest.mark.parametrize(("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.4)])
def test_rollout_equals_hand_computation(fusion, discard):
    model = tiny_vit()
    adapter = make_adapter(model, input_size=8, num_classes=3, batch_size=2)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    cls = get_explainer("rollout")
    maps = cls(adapter, head_fusion=fusion, discard_ratio=discard).attribute(x, torch.tensor([0, 1, 2])).maps
    assert maps.shape == (3, 2, 2)
    for i in range(3):
        atts = attentions_by_hand(model, x[i].double().numpy())
        assert max(float(np.abs(a - 0.2).max()) for a in atts) > 0.2  # attention is far from uniform
        expected = rollout_by_hand(atts, fusion, discard)
        np.testing.assert_allclose(maps[i].numpy(), expected, rtol=1e-4, atol=1e-6)
    assert leftover_hooks(model) == []
    # the model's own forward is unchanged afterwards (need_weights=False again: no weights returned)
    assert model.encoder.layers[0].self_attention(torch.zeros(1, 5, 6), torch.zeros(1, 5, 6),
                                                  torch.zeros(1, 5, 6), need_weights=False)[1] is None


def test_rollout_reads_timm_attention_and_restores_fused_path():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).eval()
    fused = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    adapter = make_adapter(model, input_size=32, num_classes=3)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = get_explainer("attention_rollout")(adapter).attribute(x, torch.tensor([0])).maps[0].numpy()
    # the oracle: timm's own unfused attention, recomputed from its qkv projections
    atts, store = [], {}
    hooks = [b.norm1.register_forward_hook(lambda m, i, o, b=b: store.__setitem__(id(b), o)) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for b in model.blocks:
        z = store[id(b)]
        B, N, C = z.shape
        qkv = b.attn.qkv(z).reshape(B, N, 3, b.attn.num_heads, C // b.attn.num_heads).permute(2, 0, 3, 1, 4)
        a = (qkv[0] * b.attn.scale) @ qkv[1].transpose(-2, -1)
        atts.append(a.softmax(-1)[0].double().numpy())
    R = np.eye(atts[0].shape[-1])
    for a in atts:
        m = 0.5 * a.mean(0) + 0.5 * np.eye(len(R))
        R = (m / m.sum(1, keepdims=True)) @ R
    np.testing.assert_allclose(got, R[0, 1:].reshape(2, 2), rtol=1e-4, atol=1e-7)
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused
    assert leftover_hooks(model) == []


def test_rollout_is_unavailable_without_attention():
    adapter = make_adapter(HandConvNet(), input_size=4, num_classes=2, target_layer="conv")
    cls = get_explainer("attention_rollout")
    assert "needs a vision transformer" in cls.availability(adapter)
    with pytest.raises(MethodUnavailableError, match="needs a vision transformer"):
        cls(adapter)


def test_no_hook_left_after_success_error_and_cancel():
    from biasscope.errors import CancelledError

    model = tiny_vit()
    forward = model.forward
    state = {"explode": False}

    def exploding(x):
        out = forward(x)  # every attention hook has fired
        if state["explode"]:
            raise RuntimeError("boom inside forward")
        return out

    model.forward = exploding
    adapter = make_adapter(model, input_size=8, num_classes=3, batch_size=1)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1])
    cls = get_explainer("attention_rollout")
    first = cls(adapter).attribute(x, t).maps
    state["explode"] = True
    with pytest.raises(RuntimeError, match="boom"):
        cls(adapter).attribute(x, t)
    state["explode"] = False
    assert leftover_hooks(model) == []

    def cancel(_fraction):
        raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        cls(adapter).run(x, t, progress=cancel)
    assert leftover_hooks(model) == []
    torch.testing.assert_close(cls(adapter).attribute(x, t).maps, first)


# ---------------------------------------------------------------------------------------------- transformers
def hf_folder(folder, kind: str = "vit"):
    """A tiny random transformers classifier (32x32 input, 8x8 patches: a 4x4 grid; 2 layers, 2 heads)
    saved with ``save_pretrained``; DeiT has a class and a distillation token. Query and key weights are
    scaled up so attention is far from uniform."""
    transformers = pytest.importorskip("transformers")
    cfg_cls, model_cls = {"vit": (transformers.ViTConfig, transformers.ViTForImageClassification),
                          "deit": (transformers.DeiTConfig, transformers.DeiTForImageClassification),
                          "swin": (transformers.SwinConfig, transformers.SwinForImageClassification),
                          "convnext": (transformers.ConvNextConfig, transformers.ConvNextForImageClassification)}[kind]
    kw = {"swin": dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4),
          "convnext": dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)}.get(kind, dict(
              image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64))
    torch.manual_seed(0)
    model = model_cls(cfg_cls(num_labels=3, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "query.weight", "key.weight")):
                p.mul_(10)
    model.save_pretrained(folder)
    return folder


def hf_adapter(folder):
    """``folder`` through biasscope's own transformers loader (the real wrapper), as transformers loads
    it by default (sdpa attention, which returns no probabilities)."""
    from biasscope.models import load_model

    adapter = load_model(str(folder), backend="torch")
    adapter.set_batch_sizes(forward=2, backward=2)
    adapter.model.model.config._attn_implementation = "sdpa"
    return adapter, adapter.model.model


def transformers_attentions(folder, x: torch.Tensor) -> list[torch.Tensor]:
    """The oracle: a second copy of the model, asked by transformers' own API with eager attention."""
    import transformers

    ref = transformers.AutoModelForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return list(ref(pixel_values=x, output_attentions=True).attentions)


def _x(n: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("kind", "leading"), [("vit", 1), ("deit", 2)])
def test_hf_rollout_equals_transformers_own_attentions(tmp_path, kind, leading):
    from biasscope.explainers.attention_rollout import recorded_attention

    folder = hf_folder(tmp_path, kind)
    adapter, hf = hf_adapter(folder)
    x = _x()
    want = transformers_attentions(folder, x)
    assert len(want) == 2 and want[0].shape == (3, 2, 16 + leading, 16 + leading)
    assert max(float((a - a.mean(-1, keepdim=True)).abs().max()) for a in want) > 0.2  # far from uniform
    store: list[torch.Tensor] = []
    with torch.no_grad(), recorded_attention(adapter.model, store):
        adapter.logits(x)
    assert len(store) == len(want)
    for got, w in zip(store, want, strict=True):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-6)
    cls = get_explainer("attention_rollout")
    assert cls.availability(adapter) is None
    for fusion, discard in [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.4)]:
        maps = cls(adapter, head_fusion=fusion, discard_ratio=discard).attribute(x, torch.tensor([0, 1, 2])).maps
        assert maps.shape == (3, 4, 4)
        for i in range(3):
            expected = rollout_by_hand([a[i].double().numpy() for a in want], fusion, discard, leading)
            np.testing.assert_allclose(maps[i].numpy(), expected, rtol=1e-4, atol=1e-6)
    # the state is as before: sdpa again, no hook left (transformers' own lazily added ones included)
    assert hf.config._attn_implementation == "sdpa"
    assert leftover_hooks(adapter.model) == []


def test_hf_logits_unchanged_while_recording(tmp_path):
    from biasscope.explainers.attention_rollout import recorded_attention

    adapter, _ = hf_adapter(hf_folder(tmp_path))
    x = _x(4, 1)
    with torch.no_grad():
        plain = adapter.logits(x)
        with recorded_attention(adapter.model, []):
            recording = adapter.logits(x)
        after = adapter.logits(x)
    np.testing.assert_allclose(recording.numpy(), plain.numpy(), rtol=0, atol=f32_tol(plain, factor=64))
    # the same path again: equal up to kernels' alignment-dependent round-off (MKL without CNR)
    torch.testing.assert_close(after, plain, rtol=0, atol=f32_tol(plain, factor=64))


def test_hf_state_restored_after_an_error_mid_forward_and_other_threads_left_alone(tmp_path):
    import threading

    adapter, hf = hf_adapter(hf_folder(tmp_path))
    x, t = _x(2, 2), torch.tensor([0, 1])
    cls = get_explainer("attention_rollout")
    first = cls(adapter).attribute(x, t).maps
    with torch.no_grad():
        plain = adapter.logits(x)
    seen: dict = {}

    def other_thread():  # a plain forward on the same model while the recording pass runs
        with torch.no_grad():
            seen["logits"] = adapter.model(x)

    def mid_forward(_m, _i, _o):
        if threading.current_thread() is threading.main_thread() and "logits" not in seen:
            seen["impl"] = hf.config._attn_implementation
            th = threading.Thread(target=other_thread)
            th.start()
            th.join()
            if seen.get("explode"):
                raise RuntimeError("boom inside forward")

    first_layer = next(m for m in hf.modules() if type(m).__name__ == "ViTLayer")  # names vary by version
    handle = first_layer.register_forward_hook(mid_forward)
    try:
        again = cls(adapter).attribute(x, t).maps  # the other thread's layers are not recorded
        torch.testing.assert_close(again, first, rtol=0, atol=f32_tol(first, factor=64))
        np.testing.assert_allclose(seen["logits"].numpy(), plain.numpy(), rtol=0, atol=f32_tol(plain, factor=64))
        seen.clear()
        seen["explode"] = True
        with pytest.raises(RuntimeError, match="boom"):
            cls(adapter).attribute(x, t)
    finally:
        handle.remove()
    assert seen["impl"] == "eager"  # switched for the pass
    assert hf.config._attn_implementation == "sdpa" and leftover_hooks(adapter.model) == []
    torch.testing.assert_close(cls(adapter).attribute(x, t).maps, first, rtol=0, atol=f32_tol(first, factor=64))


def test_hf_without_recordable_attention_modules_uses_output_attentions(tmp_path, monkeypatch):
    # transformers before 4.54 declares no ``_can_record_outputs``: the model is asked for output_attentions
    from transformers.models.vit import modeling_vit

    from biasscope.explainers.attention_rollout import recorded_attention

    folder = hf_folder(tmp_path)
    adapter, hf = hf_adapter(folder)
    x = _x(2, 3)
    want = transformers_attentions(folder, x)  # before the patch: building a model records its class's specs
    monkeypatch.setattr(modeling_vit.ViTPreTrainedModel, "_can_record_outputs", None)
    store: list[torch.Tensor] = []
    with torch.no_grad(), recorded_attention(adapter.model, store):
        adapter.logits(x)
    assert len(store) == len(want) == 2
    for got, w in zip(store, want, strict=True):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-6)
    assert hf.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", ["swin", "convnext"])
def test_hf_models_without_global_attention_and_class_token_are_refused(tmp_path, kind):
    adapter, _ = hf_adapter(hf_folder(tmp_path, kind))
    cls = get_explainer("attention_rollout")
    reason = cls.availability(adapter)
    assert reason and "needs a vision transformer" in reason and f"transformers {kind} model without a class token" \
        in reason
    with pytest.raises(MethodUnavailableError, match="without a class token"):
        cls(adapter)


def test_hf_model_returning_no_weights_and_windowed_attention_are_refused_clearly(tmp_path):
    transformers = pytest.importorskip("transformers")
    from biasscope.explainers._hf_attention import attention_layers
    from biasscope.explainers.attention_rollout import _check_global
    from biasscope.models.timm_hf import HFLogits

    with pytest.raises(MethodUnavailableError, match="global self-attention"):  # Swin: a batch per window
        _check_global([torch.rand(8, 1, 16, 16), torch.rand(2, 2, 16, 16)], 2, "rollout")
    torch.manual_seed(0)  # data2vec-vision built with sdpa classes returns None for output_attentions
    model = transformers.Data2VecVisionForImageClassification(transformers.Data2VecVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3)).eval()
    if attention_layers(model) or model.config._attn_implementation != "sdpa":
        pytest.skip("this transformers builds data2vec-vision's attention per call")
    adapter = make_adapter(HFLogits(model), input_size=32, num_classes=3, name="d2v")
    with pytest.raises(MethodUnavailableError, match="returned no attention weights"):
        get_explainer("attention_rollout")(adapter).attribute(_x(1), torch.tensor([0]))
    assert model.config._attn_implementation == "sdpa" and leftover_hooks(model) == []
