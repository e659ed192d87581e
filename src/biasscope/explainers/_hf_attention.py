"""Per-layer attention of Hugging Face transformers image classifiers (ViT, DeiT, BEiT, DINOv2, CLIP...).

Each layer's ``(N, heads, T, T)`` attention probabilities are read, in forward order, from the modules
transformers itself records for ``output_attentions=True`` (hooks on them, removed afterwards); with a
transformers that does not declare them, the model is called with ``output_attentions=True`` instead.
Only the eager attention path returns probabilities (sdpa and flash return none; transformers 5 then
silently records nothing), so each config of the model is switched to ``eager`` for the pass and
switched back afterwards, also after errors. The switch is counted per
config: passes that overlap in several threads keep eager until the last one ends. Other threads'
plain forwards during the pass run eager too, which computes the same attention.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "attention_layers",
    "class_token_names",
    "eager_attention",
    "hf_models",
    "model_type",
    "recorded_hf_attention",
]

#: parameter names (suffixes) of a class token: transformers ViT/DeiT/BEiT/DINOv2 (``cls_token``),
#: CLIP (``class_embedding``), torchvision (``class_token``)
CLASS_TOKEN_SUFFIXES = ("cls_token", "class_embedding", "class_token")


def _pretrained_class() -> type | None:
    # an instance can only exist once transformers.modeling_utils is imported: never import it here
    mod = sys.modules.get("transformers.modeling_utils")
    return getattr(mod, "PreTrainedModel", None)


def hf_models(model: nn.Module) -> list[nn.Module]:
    """The outermost transformers ``PreTrainedModel`` modules inside ``model`` (empty if none)."""
    base = _pretrained_class()
    if base is None:
        return []
    out: list[nn.Module] = []
    inside: set[int] = set()
    for m in model.modules():
        if id(m) in inside or not isinstance(m, base):
            continue
        out.append(m)
        inside.update(id(s) for s in m.modules())
    return out


def class_token_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s class-token parameters (``vit.embeddings.cls_token``...)."""
    return [n for n, _ in model.named_parameters() if n.split(".")[-1] in CLASS_TOKEN_SUFFIXES]


def model_type(model: nn.Module) -> str:
    """The transformers ``model_type`` of ``model``'s config (``vit``, ``swin``...), else its class name."""
    return str(getattr(getattr(model, "config", None), "model_type", "") or type(model).__name__)


def _configs(models: list[nn.Module]) -> list:
    """Every config the modules of ``models`` hold, and their sub-configs, without repeats."""
    seen: set[int] = set()
    out: list = []

    def add(cfg) -> None:
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation"):
            return
        seen.add(id(cfg))
        out.append(cfg)
        for key in getattr(cfg, "sub_configs", None) or {}:
            add(getattr(cfg, key, None))

    for top in models:
        for m in top.modules():
            add(getattr(m, "config", None))
    return out


def _get(cfg):
    return vars(cfg).get("_attn_implementation_internal", cfg._attn_implementation)


def _set(cfg, value) -> None:
    # the stored value itself: the property's setter also overwrites sub-configs (transformers 5)
    if "_attn_implementation_internal" in vars(cfg):
        cfg._attn_implementation_internal = value
    else:
        cfg._attn_implementation = value


_lock = threading.Lock()
#: id(config) -> [config, passes using it, its attention implementation before the first of them]
_users: dict[int, list] = {}


@contextlib.contextmanager
def eager_attention(models: list[nn.Module]) -> Iterator[None]:
    """Run ``models`` with transformers' eager attention during the block; restore each config after."""
    configs = _configs(models)
    with _lock:
        for cfg in configs:
            entry = _users.setdefault(id(cfg), [cfg, 0, _get(cfg)])
            entry[1] += 1
            _set(cfg, "eager")
    try:
        yield
    finally:
        with _lock:
            for cfg in configs:
                entry = _users[id(cfg)]
                entry[1] -= 1
                if entry[1] == 0:
                    del _users[id(cfg)]
                    _set(cfg, entry[2])


def _attention_specs(model: nn.Module) -> list[tuple]:
    """``(class, class-name suffix, output index, layer name)`` of the modules whose output transformers
    records as ``attentions`` for ``model`` (its ``_can_record_outputs``, transformers >= 4.54)."""
    spec = (getattr(type(model), "_can_record_outputs", None) or {}).get("attentions")
    out = []
    for s in spec if isinstance(spec, list) else [spec] if spec is not None else []:
        if isinstance(s, type):
            out.append((s, None, 1, None))
        elif isinstance(s, str):
            out.append((None, s, 1, None))
        else:  # an OutputRecorder
            out.append((s.target_class, s.class_name, s.index, s.layer_name))
    return out


def attention_layers(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """``(module, index)``: the modules whose ``output[index]`` is a layer's attention probabilities,
    found as transformers finds them for ``output_attentions`` (each sub-model's own specs apply to
    the modules under it); empty where the installed transformers or the model declares none."""
    base = _pretrained_class()
    found: list[tuple[nn.Module, int]] = []

    def walk(module: nn.Module, name: str, specs: list[tuple]) -> None:
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}", _attention_specs(child) if base and isinstance(child, base) else specs)
        for target, suffix, index, layer in specs:
            matches = (target is not None and isinstance(module, target)) or (
                suffix is not None and name.endswith(suffix))
            if matches and (layer is None or f".{layer.strip('.')}." in name + "."):
                found.append((module, index))
                return

    walk(model, "", _attention_specs(model))
    return found


@contextlib.contextmanager
def recorded_hf_attention(models: list[nn.Module], store: list[torch.Tensor], hooks: list) -> Iterator[None]:
    """Append each layer's ``(N, heads, T, T)`` attention of ``models`` to ``store`` during the block.

    The attention modules transformers itself records for ``output_attentions`` are hooked (see
    :func:`attention_layers`); where none are declared (transformers before 4.54) the models are called
    with ``output_attentions=True`` and the ``attentions`` of their outputs are read. (Asking a model
    that declares them for ``output_attentions`` would make transformers 5 add its own hooks for good.)
    Only calls made by the thread that entered the block are changed and recorded; the hook handles
    go to ``hooks`` (removed by the caller).
    """
    owner = threading.get_ident()
    mine = threading.get_ident

    def layer_hook(index: int):
        def hook(_m, _args, output):
            if mine() == owner:
                a = output[index] if isinstance(output, tuple | list) else output
                if a is not None:
                    store.append(a.detach())

        return hook

    def pre(_m, args, kwargs):
        if mine() != owner:
            return None
        return args, {**kwargs, "output_attentions": True}

    def post(_m, _args, _kwargs, output):
        if mine() == owner:
            # None where a layer's implementation returns no weights (an sdpa class chosen when the model was built)
            store.extend(a.detach() for a in getattr(output, "attentions", None) or () if a is not None)

    layers = [la for m in models for la in attention_layers(m)]
    for module, index in layers:
        hooks.append(module.register_forward_hook(layer_hook(index)))
    if not layers:
        for m in models:
            hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(m.register_forward_hook(post, with_kwargs=True))
    with eager_attention(models):
        yield
