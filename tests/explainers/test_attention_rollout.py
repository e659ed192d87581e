"""Attention rollout (Abnar & Zuidema 2020): the forward pass of a tiny random torchvision ViT
rewritten in numpy gives each layer's attention, and the rollout is multiplied out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasscope.errors import MethodUnavailableError
from biasscope.explainers import get_explainer
from tests.fixtures import HandConvNet, leftover_hooks, make_adapter


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


def rollout_by_hand(atts: list[np.ndarray], fusion: str, discard: float) -> np.ndarray:
    R = np.eye(5)
    for a in atts:
        f = {"mean": a.mean(0), "max": a.max(0), "min": a.min(0)}[fusion].copy()
        k = int(25 * discard)
        if k:
            order = np.argsort(f.ravel(), kind="stable")[:k]
            for flat in order:
                i, j = divmod(int(flat), 5)
                if j != 0:  # attention paid to the class token is kept
                    f[i, j] = 0.0
        m = 0.5 * f + 0.5 * np.eye(5)
        m = m / m.sum(1, keepdims=True)
        R = m @ R
    return R[0, 1:].reshape(2, 2)


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
