"""Attention rollout (Abnar & Zuidema 2020) for vision transformers with a class token.

Each layer's attention ``A_l`` (heads fused by mean, max or min; optionally the weakest
``discard_ratio`` of each image's entries dropped, never those from the class token) is mixed with
the residual connection, ``0.5 A_l + 0.5 I``, rows renormalised, and the layers multiplied:
``R = Â_L ... Â_1``. The map is the class token's row of ``R`` over the patch tokens, as a grid.
It is class-agnostic (how information flows to the class token, not evidence for a class): the
same map for every target.

Attention is read with hooks: ``nn.MultiheadAttention`` (torchvision ViT, open_clip) is asked for
per-head weights; timm's ``Attention`` runs its unfused path for the pass and its ``attn_drop``
input is recorded; in a Hugging Face transformers classifier (ViT, DeiT, BEiT, DINOv2, CLIP) the
modules transformers itself records for ``output_attentions`` are hooked, under eager attention (see
:mod:`._hf_attention`). All are restored and the hooks removed afterwards, also after errors.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ExplainerError, MethodUnavailableError
from ..models.adapter import ModelAdapter
from ._cam import token_grid_side
from ._hf_attention import class_token_names, hf_models, model_type, recorded_hf_attention
from .base import Attribution, Explainer, Param, hooked
from .registry import register

__all__ = ["AttentionRollout", "attention_modules", "rollout"]


def _is_timm_attention(m: nn.Module) -> bool:
    return hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Dropout) and hasattr(m, "qkv")


def _hf_source(model: nn.Module) -> list[nn.Module]:
    """The transformers models whose attention :mod:`._hf_attention` reads (empty for other models,
    and for a transformers wrapper of a timm model, whose timm attention modules are hooked)."""
    hf = hf_models(model)
    return [] if any(_is_timm_attention(m) for m in model.modules()) else hf


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The global self-attention modules of ``model`` in forward order (empty if it has none).

    For a transformers model these are the models themselves (:mod:`._hf_attention` finds their
    attention layers); an ``nn.MultiheadAttention`` inside one (SigLIP's pooling head) is not a
    self-attention layer.
    """
    hf = _hf_source(model)
    if hf:
        return hf
    inside = {id(s) for m in hf_models(model) for s in m.modules()}
    return [m for m in model.modules()
            if _is_timm_attention(m) or (isinstance(m, nn.MultiheadAttention) and id(m) not in inside)]


@contextlib.contextmanager
def recorded_attention(model: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Append each attention module's ``(N, heads, T, T)`` weights to ``store`` during the block."""
    owner = threading.get_ident()
    mine = threading.get_ident
    restore: list[nn.Module] = []
    hf = _hf_source(model)
    with hooked([]) as handles:
        if hf:
            with recorded_hf_attention(hf, store, handles):
                yield
            return
        try:
            for m in attention_modules(model):
                if isinstance(m, nn.MultiheadAttention):

                    def pre(_m, args, kwargs):
                        if mine() != owner:
                            return None
                        # need_weights and average_attn_weights are MHA's 5th and 7th parameters
                        a = list(args)
                        for pos, key, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
                            if len(a) > pos:
                                a[pos] = value
                            else:
                                kwargs = {**kwargs, key: value}
                        return tuple(a), kwargs

                    def post(_m, _inputs, output):
                        if mine() == owner:
                            store.append(output[1].detach())

                    handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                    handles.append(m.register_forward_hook(post))
                else:
                    if m.fused_attn:
                        m.fused_attn = False
                        restore.append(m)

                    def drop(_m, inputs, _output):
                        if mine() == owner:
                            store.append(inputs[0].detach())

                    handles.append(m.attn_drop.register_forward_hook(drop))
            yield
        finally:
            for m in restore:
                m.fused_attn = True


def _check_global(store: list[torch.Tensor], n: int, what: str) -> None:
    """Refuse attention that is not one global ``(n, heads, T, T)`` map per layer with the same ``T``
    (windowed attention has a window per row, spatial-reduction attention fewer keys than queries)."""
    shapes = {tuple(a.shape[-2:]) for a in store}
    if any(a.ndim != 4 or a.shape[0] != n for a in store) or len(shapes) > 1 or any(q != k for q, k in shapes):
        raise MethodUnavailableError(
            f"{what} needs global self-attention over the same tokens in every layer; the recorded attention "
            f"has shapes {sorted({tuple(a.shape) for a in store})}"
        )


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout ``(N, T, T)`` of per-layer attentions ``(N, heads, T, T)`` (see the module docstring)."""
    result = None
    for a in attentions:
        a = a.double()
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]
        n, t, _ = fused.shape
        if discard_ratio > 0:
            flat = fused.reshape(n, -1).clone()
            k = int(flat.shape[1] * discard_ratio)
            if k:
                idx = flat.topk(k, dim=1, largest=False).indices
                keep_cls = idx % t != 0  # never drop attention paid to the class token
                flat.scatter_(1, idx, torch.where(keep_cls, 0.0, flat.gather(1, idx)))
            fused = flat.reshape(n, t, t)
        eye = torch.eye(t, dtype=fused.dtype, device=fused.device)
        mixed = 0.5 * fused + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ExplainerError("no attention was recorded in the forward pass")
    return result


@register(aliases=("rollout",))
class AttentionRollout(Explainer):
    name = "attention_rollout"
    order = 80
    label = "Attention rollout"
    signed = False
    requires = frozenset({"attention"})
    description = "Attention flow from the class token to the patches through all layers (ViT; class-agnostic)."
    params = (
        Param("head_fusion", str, "mean", "how each layer's heads are combined", choices=("mean", "max", "min")),
        Param("discard_ratio", float, 0.0, "share of each layer's weakest attentions set to 0", min=0.0, max=0.99),
    )

    @classmethod
    def check_available(cls, adapter: ModelAdapter) -> None:
        if not adapter.supports_hooks:
            raise MethodUnavailableError(f"{cls.label} is unavailable for {adapter.name}: {adapter.note}")
        if not attention_modules(adapter.model):
            raise MethodUnavailableError(
                f"{cls.label} needs a vision transformer with global self-attention and a class token "
                f"(ViT, DeiT, CLIP); {adapter.name} has none"
            )
        hf = _hf_source(adapter.model)
        if hf and not any(class_token_names(m) for m in hf):
            raise MethodUnavailableError(
                f"{cls.label} needs a vision transformer with global self-attention and a class token "
                f"(ViT, DeiT, BEiT, DINOv2, CLIP); {adapter.name} is a transformers "
                f"{', '.join(sorted({model_type(m) for m in hf}))} model without a class token (windowed "
                "attention like Swin's, pooled tokens like SigLIP's, or no attention at all)"
            )

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        adapter = self.adapter
        maps = []
        bs = adapter.batch_size("forward", work=x.shape[0])
        for i in range(0, x.shape[0], bs):
            store: list[torch.Tensor] = []
            with torch.no_grad(), adapter.hooks(), recorded_attention(adapter.model, store):
                adapter.logits(x[i : i + bs].to(adapter.device))
            if not store and _hf_source(adapter.model):
                raise MethodUnavailableError(
                    f"{self.label}: {adapter.name} returned no attention weights in its forward pass (a transformers "
                    "model built with sdpa attention classes: load it with attn_implementation='eager')"
                )
            _check_global(store, min(bs, x.shape[0] - i), f"{self.label} on {adapter.name}")
            r = rollout(store, self.config["head_fusion"], self.config["discard_ratio"])
            tokens = r.shape[-1]
            g = token_grid_side(tokens, x.shape[-1])
            if tokens - g * g < 1:
                raise MethodUnavailableError(
                    f"{self.label} needs a class token; {adapter.name}'s attention has {tokens} tokens, "
                    f"all of them patches"
                )
            maps.append(r[:, 0, tokens - g * g :].reshape(-1, g, g).float().cpu())
            self.report((i + bs) / x.shape[0])
        return Attribution(maps=torch.cat(maps))
