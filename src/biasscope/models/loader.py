"""``load_model``: one entry point for every kind of model the CLI, API and web accept."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ModelError
from .adapter import IMAGENET_MEAN, IMAGENET_STD, ModelAdapter
from .device import prefers_channels_last, resolve_device, resolve_precision
from .external import is_external_spec
from .files import (
    head_classes,
    is_torchscript,
    load_checkpoint,
    load_labels,
    load_onnx,
    load_state_dict,
    load_torchscript,
    onnx_file_bytes,
)
from .zoo import DEFAULT_MODEL, build_architecture, build_zoo_model, find_target_layer, target_layout

__all__ = ["load_model", "prefers_channels_last", "resolve_device", "resolve_precision"]

FILE_SUFFIXES = (".onnx", ".pt", ".pth", ".ts", ".jit", ".ckpt", ".bin", ".torchscript")


def _triple(v: Sequence[float] | str | None, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if v is None:
        return default
    try:
        vals = tuple(float(s) for s in (v.split(",") if isinstance(v, str) else v))
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or not all(math.isfinite(x) for x in vals):
        raise ModelError(f"expected three comma-separated finite numbers R,G,B (0-1 scale), got {v!r}")
    return vals  # type: ignore[return-value]


def _positive(std: tuple[float, float, float]) -> tuple[float, float, float]:
    if min(std) <= 0:
        raise ModelError(f"normalisation std must be positive in every channel, got {','.join(map(str, std))}")
    return std


def load_model(
    model: str | Path = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    labels: str | Path | Sequence[str] | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | str | None = None,
    device: str | torch.device | None = "cpu",
    download: bool = False,
    precision: str = "fp32",
    target_layer: str | None = None,
    channels_last: bool | None = None,
    backend: str = "auto",
    classes: str | Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    pretrained: str | None = None,
) -> ModelAdapter:
    """Load a classifier: a torchvision name (``resnet18``, ``mobilenet_v2:IMAGENET1K_V1``), an
    architecture plus a state dict (``weights=``), a biasscope checkpoint, ONNX or TorchScript file,
    or a packaged face-attribute model (``gender``, ``age``: a :class:`~biasscope.faces.FaceModelAdapter`
    that finds the face and cuts its chip itself; see :mod:`biasscope.faces.attribute`).

    Preprocessing (input size, mean, std) and class names come from the model where it has them;
    the keyword arguments override them. ``channels_last`` stores conv weights in NHWC layout
    (``None``: on for CPU models built on 2-D convolutions, not ViTs: fp32 forwards at batch 8 measured 1.25x
    (ResNet-18) and 1.3x (MobileNetV2) faster on a 2-core AVX-512 CPU, backward passes unchanged;
    results equal up to float rounding). ``backend`` runs gradient-free fp32 forwards through ONNX
    Runtime where the model exports and matches PyTorch ('auto'), never ('torch') or always
    ('onnxruntime', an error if it cannot); for an ``.onnx`` file it runs the original file first, then an
    export of the converted module; see :mod:`biasscope.models.ort`. ``precision`` sets the dtype of
    gradient-free forwards: 'fp32' (the library default: reproducible), 'bf16'/'fp16' as asked, or
    'auto' (the web app's default): bf16 where the hardware runs it natively, checked against fp32
    on a representative set of photos (calibration and held-out) at warm-up or first use, never on one
    request's images, and dropped for fp32 where they disagree (``ModelAdapter.check_precision``).

    Other libraries (see :mod:`biasscope.models.external`, :mod:`~biasscope.models.timm_hf`):
    ``timm:NAME`` (weights from the local caches or ``weights=``), ``hf:ID`` or a folder saved by
    transformers, and ``clip:ARCH`` with ``pretrained`` (an open_clip tag or file), ``classes``
    (``"doctor,nurse"``, a list or a file) and ``prompts`` (templates with ``{}``, averaged): a
    zero-shot classifier whose class names are ``classes``.
    """
    dev = resolve_device(device)
    spec = str(model)
    face = _face_model(spec, weights=weights, labels=labels, input_size=input_size, mean=mean, std=std)
    if face is not None:
        from ..faces.attribute import load_face_model

        return load_face_model(face, device=dev.type, precision=precision, backend=backend,
                               target_layer=target_layer).adapter
    is_file = spec.lower().endswith(FILE_SUFFIXES) or Path(spec).is_file()
    label_list = list(labels) if isinstance(labels, list | tuple) else (load_labels(labels) if labels else None)
    size, m, s = input_size, mean, std
    layer_hint = None
    supports_hooks = True
    note = ""
    onnx_source = None
    external = is_external_spec(spec)
    if (classes or prompts or pretrained) and not spec.lower().startswith("clip:"):
        raise ModelError("--classes, --prompt and --pretrained are for CLIP models (--model clip:ARCH)")

    if is_file and weights is not None:
        raise ModelError(f"--weights {weights} is for an architecture name (e.g. --model resnet18), but {spec} is "
                         "a model file that holds its own weights; drop --weights")
    if external:
        ext = _build_external(spec, weights=weights, download=download, classes=classes, prompts=prompts,
                              pretrained=pretrained)
        module = ext.module
        label_list = label_list or ext.class_names
        size, m, s = size or ext.input_size, m or ext.mean, s or ext.std
        name, source, note = ext.name, ext.source, ext.note
    elif is_file:
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model file {path} not found")
        name = path.name
        source = str(path)
        if path.suffix.lower() == ".onnx":
            module, onnx_size, diff = load_onnx(path)
            size = size or onnx_size or 224
            note = "ONNX via onnx2torch"
            if diff is not None:
                note += f" (max |diff| vs onnxruntime {diff:.2g})"
            if backend != "torch" and dev.type == "cpu":
                # ONNX Runtime can run the user's own graph instead of re-exporting the conversion
                try:
                    onnx_source = onnx_file_bytes(path)
                except (OSError, ValueError):  # e.g. external weights over 2 GB: the export path remains
                    onnx_source = None
        elif is_torchscript(path):
            module = load_torchscript(path, dev)
            supports_hooks = False
            note = "TorchScript: layer-hook methods (CAMs, guided backprop) are unavailable"
        else:
            ckpt = load_checkpoint(path)
            if ckpt is None:
                try:
                    load_state_dict(path)
                except ModelError:
                    raise ModelError(
                        f"{path} is not a model file biasscope can read: not ONNX (.onnx), TorchScript, a "
                        "biasscope checkpoint or a PyTorch state dict. Give a torchvision name (e.g. resnet18) "
                        "or one of those files"
                    ) from None
                raise ModelError(
                    f"{path} is a state dict, not a full model: give the architecture too, "
                    f"e.g. --model resnet18 --weights {path} --labels labels.txt"
                )
            module = build_architecture(ckpt["arch"], len(ckpt["class_names"]))
            _load_into(module, ckpt["state_dict"], path)
            label_list = label_list or list(ckpt["class_names"])
            size = size or int(ckpt["input_size"])
            m = m or ckpt["mean"]
            s = s or ckpt["std"]
            layer_hint = ckpt["arch"]
            name = f"{ckpt['arch']}:{path.name}"
        n_out = _count_outputs(module, size or 224, dev)
        label_list = label_list or [f"class_{i}" for i in range(n_out)]
    elif weights is not None:
        name = spec.split(":")[0].lower()
        sd = load_state_dict(weights)
        probe = build_architecture(name, 1000)
        n = head_classes(probe, sd) or (len(label_list) if label_list else 1000)
        module = probe if n == 1000 else build_architecture(name, n)
        _load_into(module, sd, Path(weights))
        if label_list is None and n == 1000:
            from torchvision.models import get_model_weights

            label_list = list(get_model_weights(name).DEFAULT.meta["categories"])
        label_list = label_list or [f"class_{i}" for i in range(n)]
        if size is None and name == "inception_v3":
            size = 299
        source = str(weights)
        layer_hint = name
        name = f"{name}:{Path(weights).name}"
    else:
        module, w = build_zoo_model(spec, download=download)
        label_list = label_list or list(w.meta["categories"])
        t = w.transforms()
        size = size or int(t.crop_size[0])
        m = m or tuple(t.mean)
        s = s or tuple(t.std)
        layer_hint = spec.split(":")[0].lower()
        name = layer_hint
        source = f"torchvision {w}"

    module = module.to(dev)
    if channels_last is None:
        channels_last = prefers_channels_last(module, dev) and supports_hooks
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    layer, layer_name = (None, None)
    if supports_hooks:
        layer, layer_name = find_target_layer(module, target_layer, layer_hint)
    adapter = ModelAdapter(
        name=name,
        model=module,
        class_names=label_list,
        input_size=int(size or 224),
        mean=_triple(m, IMAGENET_MEAN),
        std=_positive(_triple(s, IMAGENET_STD)),
        device=dev,
        target_layer=layer,
        target_layer_name=layer_name,
        target_layout=target_layout(layer_hint, layer_name),
        supports_hooks=supports_hooks,
        source=source,
        note=note,
        fast_dtype=resolve_precision(precision, dev),
        check_fast=str(precision).lower() == "auto",
        backend=backend,
        onnx_source=onnx_source,
    )
    n_out = _count_outputs(adapter.model, adapter.input_size, dev)
    if n_out != len(adapter.class_names):
        raise ModelError(f"model {name} has {n_out} outputs but {len(adapter.class_names)} class names were given")
    return adapter


def _face_model(spec: str, **given) -> str | None:
    """The packaged face model ``spec`` names (``gender``, ``age``), or None; refuses options its recipe fixes."""
    from ..faces.attribute import FACE_MODEL_NAMES

    key = FACE_MODEL_NAMES.get(spec.strip().lower())
    if key is None or Path(spec).exists():
        return None
    fixed = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
    if fixed:
        raise ModelError(f"{spec} is a packaged face model whose weights, classes, input size and normalisation "
                         f"come with it (its own recipe); drop {', '.join(fixed)}")
    return key


def _build_external(spec: str, *, weights, download: bool, classes, prompts, pretrained):
    from .external import build_clip
    from .timm_hf import build_hf, build_timm

    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "timm":
        return build_timm(rest, weights=weights, download=download)
    if weights is not None:
        raise ModelError(f"--weights is not used with {kind}: models; give the weights through the model itself")
    if kind == "clip":
        return build_clip(rest, pretrained=pretrained, classes=classes, prompts=prompts, download=download)
    return build_hf(spec, download=download)


def _load_into(module: torch.nn.Module, sd: dict, path: Path) -> None:
    own = module.state_dict()
    sd = {k: v for k, v in sd.items() if not (k.startswith("aux") and k not in own)}
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ModelError(f"{path} does not fit this architecture: {' '.join(first)[:400]}") from None


@torch.no_grad()
def _count_outputs(module: torch.nn.Module, size: int, dev: torch.device) -> int:
    module.eval()
    try:
        out = module(torch.zeros(1, 3, size, size, device=dev))
    except Exception as exc:
        raise ModelError(f"model does not accept a 1x3x{size}x{size} image: {str(exc).splitlines()[0]}") from None
    if isinstance(out, list | tuple):
        out = out[0]
    if out.ndim != 2:
        raise ModelError(f"model output has shape {tuple(out.shape)}; expected (batch, classes)")
    return int(out.shape[1])
