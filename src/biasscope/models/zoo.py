"""torchvision classifiers by name, through torchvision's weights API, offline-first.

Weights are looked up in torch hub's cache (``$TORCH_HOME/hub/checkpoints``). Any variant of a
model's weights that is already cached is used (the default variant first); downloading happens
only when the caller asks for it. Otherwise :class:`WeightsMissingError` names the exact file and
folder, and the command that installs it where we know one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from ..errors import ModelError, WeightsMissingError

__all__ = [
    "DEFAULT_MODEL",
    "SUPPORTED_MODELS",
    "TARGET_LAYOUTS",
    "ZooModelInfo",
    "default_target_layer",
    "download_failed_message",
    "find_target_layer",
    "hub_checkpoint_dir",
    "list_zoo_models",
    "resolve_weights",
    "target_layout",
    "zoo_status",
]

DEFAULT_MODEL = "resnet18"

#: Models we document and test, with the dotted path of their default CAM target layer
#: (the last convolutional block, as pytorch-grad-cam recommends).
SUPPORTED_MODELS: dict[str, str] = {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "resnet101": "layer4",
    "vgg11": "features.19",
    "vgg16": "features.29",
    "vgg19": "features.35",
    "mobilenet_v2": "features.18",
    "mobilenet_v3_small": "features.12",
    "mobilenet_v3_large": "features.16",
    "efficientnet_b0": "features.8",
    "efficientnet_b1": "features.8",
    "googlenet": "inception5b",
    "inception_v3": "Mixed_7c",
    "densenet121": "features.norm5",
    "convnext_tiny": "features.7",
    "convnext_small": "features.7",
    "convnext_base": "features.7",
    "convnext_large": "features.7",
    "efficientnet_v2_s": "features.7",
    "efficientnet_v2_m": "features.8",
    "efficientnet_v2_l": "features.8",
    "regnet_y_400mf": "trunk_output",
    "regnet_y_800mf": "trunk_output",
    "regnet_y_1_6gf": "trunk_output",
    "regnet_x_400mf": "trunk_output",
    "regnet_x_1_6gf": "trunk_output",
    # vision transformers: the first LayerNorm of the last encoder block (its patch tokens reach the
    # class token through attention; the block's output tokens would get no gradient but the class
    # token's), as pytorch-grad-cam recommends; tokens are reshaped to a grid (see TARGET_LAYOUTS)
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
    "vit_b_32": "encoder.layers.encoder_layer_11.ln_1",
    "vit_l_16": "encoder.layers.encoder_layer_23.ln_1",
    "vit_l_32": "encoder.layers.encoder_layer_23.ln_1",
    "vit_h_14": "encoder.layers.encoder_layer_31.ln_1",
    # Swin: the final LayerNorm, the (N, H, W, C) map that is average-pooled into the head
    "swin_t": "norm",
    "swin_s": "norm",
    "swin_b": "norm",
    "swin_v2_t": "norm",
    "swin_v2_s": "norm",
    "swin_v2_b": "norm",
    "maxvit_t": "blocks.3",
    "shufflenet_v2_x1_0": "conv5",
    "squeezenet1_1": "features.12",
}

#: How the default target layer's output is laid out, where it is not ``(N, C, h, w)``: 'tokens'
#: ``(N, T, C)`` with class/register tokens first, 'nhwc' channels-last grids. CAM methods reshape
#: both to ``(N, C, h, w)`` (see :func:`biasscope.explainers._cam.to_grid`).
TARGET_LAYOUTS: dict[str, str] = {
    **{n: "tokens" for n in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")},
    **{n: "nhwc" for n in ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b")},
}

#: Known offline sources: model -> (weights enum member, shell command that installs the file).
OFFLINE_FETCH: dict[str, tuple[str, str]] = {
    "mobilenet_v2": ("IMAGENET1K_V1", "biasscope weights fetch mobilenet_v2"),
}


def hub_checkpoint_dir() -> Path:
    """Where torchvision looks for (and caches) weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def list_zoo_models() -> list[str]:
    """All torchvision classification models, documented ones first."""
    others = sorted(set(list_models(module=torchvision.models)) - set(SUPPORTED_MODELS))
    return list(SUPPORTED_MODELS) + others


@dataclass(frozen=True)
class ZooModelInfo:
    name: str
    ready: bool
    weights: str | None  # enum member name in use (if ready)
    file: str  # expected file name of the default weights
    reason: str  # empty if ready
    fix: str  # what to do when not ready

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _weights_enum(name: str):
    try:
        return get_model_weights(name)
    except (ValueError, KeyError):
        raise ModelError(
            f"unknown model {name!r}; choose a torchvision classifier "
            f"(e.g. {', '.join(list(SUPPORTED_MODELS)[:6])}) or a .onnx/.pt/.pth file"
        ) from None


def _split_spec(spec: str) -> tuple[str, str | None]:
    name, _, variant = spec.partition(":")
    return name.strip().lower(), (variant.strip() or None)


def resolve_weights(spec: str, *, download: bool = False):
    """Return the torchvision weights entry to load for ``spec`` (``name`` or ``name:VARIANT``).

    Prefers the requested/default variant; falls back to any cached variant. Raises
    :class:`WeightsMissingError` when nothing is cached and ``download`` is false.
    """
    name, variant = _split_spec(spec)
    enum = _weights_enum(name)
    if variant:
        try:
            wanted = [enum[variant]]
        except KeyError:
            raise ModelError(
                f"{name} has no weights {variant!r}; available: {', '.join(enum.__members__)}"
            ) from None
    else:
        wanted = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    ckpt = hub_checkpoint_dir()
    for w in wanted:
        if (ckpt / os.path.basename(w.url)).is_file():
            return w
    if download:
        return wanted[0]
    raise WeightsMissingError(missing_message(name, wanted[0]))


def missing_message(name: str, weights) -> str:
    fname = os.path.basename(weights.url)
    msg = (
        f"weights for {name} are not on this machine: expected {fname} in "
        f"{hub_checkpoint_dir()}. Copy the file there (it is torchvision's {weights}), "
        f"pass --download to fetch it from {weights.url}, or use --weights FILE"
    )
    if name in OFFLINE_FETCH:
        msg += f"; offline, run: {OFFLINE_FETCH[name][1]}"
    return msg


def zoo_status(name: str) -> ZooModelInfo:
    """Whether ``name`` can be loaded offline right now, and if not, why and how to fix it."""
    enum = _weights_enum(name)
    file = os.path.basename(enum.DEFAULT.url)
    try:
        w = resolve_weights(name)
        return ZooModelInfo(name, True, w._name_, file, "", "")
    except WeightsMissingError as exc:
        fix = OFFLINE_FETCH[name][1] if name in OFFLINE_FETCH else f"biasscope weights fetch {name} --download"
        return ZooModelInfo(name, False, None, file, str(exc), fix)


def build_zoo_model(spec: str, *, download: bool = False) -> tuple[nn.Module, object]:
    """Build ``spec`` with its real weights; returns ``(module, weights_entry)``."""
    name, _ = _split_spec(spec)
    weights = resolve_weights(spec, download=download)
    try:
        model = get_model(name, weights=weights)
    except Exception as exc:  # corrupt cache file, hash mismatch, no network
        file = hub_checkpoint_dir() / os.path.basename(weights.url)
        if not file.is_file():  # the download (asked for with download=True) failed
            raise ModelError(download_failed_message(weights.url, hub_checkpoint_dir(), exc)) from None
        reason = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        raise ModelError(f"could not load {weights} for {name} ({reason}); delete {file} and fetch it again") from None
    return model, weights


def build_architecture(name: str, num_classes: int) -> nn.Module:
    """An untrained torchvision architecture with ``num_classes`` outputs (for --weights FILE)."""
    _weights_enum(name)
    kw: dict = {"num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=False)
    return get_model(name, weights=None, **kw)


#: names of the first LayerNorm in a transformer block (torchvision/open_clip, timm, Hugging Face):
#: the default CAM layer of an undocumented transformer is the last of them
_BLOCK_NORMS = ("ln_1", "norm1", "layernorm_before")


def find_target_layer(model: nn.Module, target_layer: str | None, hint: str | None = None, *,
                      model_name: str | None = None) -> tuple[nn.Module | None, str | None]:
    """The CAM layer named ``target_layer`` (a :class:`ModelError` when the model has no module of that
    name) or, without a name, :func:`default_target_layer` (``hint``: the architecture's name)."""
    if not target_layer:
        return default_target_layer(model, hint)
    modules = dict(model.named_modules())
    if target_layer not in modules:
        raise ModelError(f"model {model_name + ' ' if model_name else ''}has no layer {target_layer!r}; "
                         "give the dotted name of one of its modules (as model.named_modules() lists them)")
    return modules[target_layer], target_layer


def default_target_layer(model: nn.Module, name: str | None = None) -> tuple[nn.Module | None, str | None]:
    """The default CAM layer: the documented one; else, for a transformer (a block LayerNorm after
    the last Conv2d, e.g. a ViT's patch embedding), the first LayerNorm of its last block; else the
    last module holding a Conv2d."""
    modules = dict(model.named_modules())
    if name and name in SUPPORTED_MODELS and SUPPORTED_MODELS[name] in modules:
        path = SUPPORTED_MODELS[name]
        return modules[path], path
    last, last_norm, conv_seen, norm_after_conv = None, None, False, False
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            last, conv_seen, norm_after_conv = path, True, False
        elif path.rsplit(".", 1)[-1] in _BLOCK_NORMS and isinstance(m, nn.LayerNorm):
            last_norm, norm_after_conv = path, True
    if last_norm is not None and (norm_after_conv or not conv_seen):
        return modules[last_norm], last_norm
    if last is None:
        return None, None
    return modules[last], last


def target_layout(name: str | None, path: str | None) -> str:
    """Layout of ``path``'s output for CAM methods: for a documented model's default layer, from
    :data:`TARGET_LAYOUTS` ('nchw' for the convolutional ones), else 'auto' (from the tensor's shape)."""
    if name in SUPPORTED_MODELS and path == SUPPORTED_MODELS[name]:
        return TARGET_LAYOUTS.get(name, "nchw")
    return "auto"


def download_failed_message(url: str, dest_dir: Path, exc: BaseException) -> str:
    """One sentence: the download failed (why), and which file to put where instead."""
    reason = getattr(exc, "reason", None) or exc
    why = str(reason).splitlines()[0][:160] if str(reason).strip() else type(exc).__name__
    fname = os.path.basename(url)
    return (f"downloading {fname} failed ({why}); on a machine with internet download {url} and copy the "
            f"file as {fname} into {dest_dir} (torch hub's cache, $TORCH_HOME/hub/checkpoints)")
