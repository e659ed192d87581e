"""timm (``timm:NAME``) and Hugging Face transformers (``hf:ID`` or a saved folder) image classifiers.

Both load offline from the caches already on the machine (or a weights file the user names) and
download only with ``download=True``; see :mod:`biasscope.models.external` for what they share.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, WeightsMissingError
from .external import ExternalModel, _hf_cached, _hf_folder, _load_sd, _require

__all__ = ["HFLogits", "build_hf", "build_timm"]


# ---------------------------------------------------------------------------------------------- timm
def build_timm(name: str, *, weights: str | Path | None = None, download: bool = False) -> ExternalModel:
    """A timm classifier by name (``vit_small_patch16_224.augreg_in21k_ft_in1k``), its weights from
    ``weights`` (a state dict file), the local HF hub cache or torch hub's cache; preprocessing and
    class names from timm's pretrained config."""
    timm = _require("timm")
    from timm.data import resolve_data_config

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # timm raises several kinds for unknown names
        cfg = None
    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ModelError(f"timm has no model {base!r}; see timm.list_models() for the names")
    source, note = "", ""
    if weights is not None:
        sd = _load_sd(weights)
        head = next((v for k, v in reversed(list(sd.items())) if k.endswith("weight") and v.ndim == 2), None)
        model = timm.create_model(name, pretrained=False, num_classes=int(head.shape[0]) if head is not None else 1000)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{weights} does not fit timm:{name}: {str(exc).splitlines()[0][:300]}") from None
        source = str(weights)
    else:
        if cfg is None:
            raise ModelError(f"timm:{name} has no pretrained weights; give a state dict with --weights FILE")
        local = None
        if cfg.hf_hub_id:
            local = _hf_cached(cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin"))
        if local is None and cfg.url:
            from .zoo import hub_checkpoint_dir

            cand = hub_checkpoint_dir() / os.path.basename(cfg.url)
            local = str(cand) if cand.is_file() else None
        if local is not None:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": local})
            source = local
        elif download:
            model = timm.create_model(name, pretrained=True)
            source = f"timm {name} (downloaded)"
        else:
            where = (
                f"model.safetensors (or pytorch_model.bin) of {cfg.hf_hub_id} in {_hf_folder(cfg.hf_hub_id)}"
                if cfg.hf_hub_id
                else f"{os.path.basename(cfg.url)} in torch hub's cache"
            )
            raise WeightsMissingError(
                f"weights for timm:{name} are not on this machine: expected {where}. Copy the file there, "
                "pass --download to fetch it, or give a state dict with --weights FILE"
            )
    model.eval()
    data = resolve_data_config({}, model=model)
    size = int(data["input_size"][-1])
    return ExternalModel(
        module=model,
        class_names=_timm_class_names(model),
        input_size=size,
        mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        name=f"timm:{name}",
        source=source,
        note=note,
    )


def _timm_class_names(model: nn.Module) -> list[str]:
    n = int(model.num_classes)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    names = cfg.get("label_names")
    if names and len(names) == n:
        return list(names)
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            if info.num_classes() == n:
                return [info.index_to_description(i) for i in range(n)]
    except Exception:  # older timm: no label metadata
        pass
    return [f"class_{i}" for i in range(n)]


# ---------------------------------------------------------------------------------------------- transformers
class HFLogits(nn.Module):
    """A transformers image classifier as a plain module: ``pixel_values -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def build_hf(spec: str, *, download: bool = False) -> ExternalModel:
    """A transformers image classifier from a local folder or hub id, with its image processor's
    size, mean and std and its ``id2label``."""
    transformers = _require("transformers")
    local = Path(spec).is_dir()
    ident = spec if local else spec.split(":", 1)[1]
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            ident, local_files_only=not download, attn_implementation="eager"
        )
    except OSError as exc:
        where = ident if local else f"{_hf_folder(ident)} (Hugging Face hub cache)"
        raise WeightsMissingError(
            f"the transformers model {ident} is not on this machine: expected config.json and "
            f"model.safetensors (or pytorch_model.bin) in {where}. Pass --download to fetch it, or give a "
            f"local folder saved with save_pretrained ({str(exc).splitlines()[0][:200]})"
        ) from None
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(ident, local_files_only=not download)
    except (OSError, ValueError):
        proc = None
    size, mean, std = _hf_preprocessing(proc, model)
    cfg = model.config
    n = int(cfg.num_labels)
    id2label = {int(k): v for k, v in (cfg.id2label or {}).items()}
    names = [str(id2label.get(i, f"class_{i}")) for i in range(n)]
    note = "" if proc is not None else "no image processor found: ImageNet mean/std and the config's image_size"
    display = Path(ident).name if local else f"hf:{ident}"
    return ExternalModel(HFLogits(model).eval(), names, size, mean, std, display, ident, note)


def _hf_preprocessing(proc, model) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    from .adapter import IMAGENET_MEAN, IMAGENET_STD

    size = getattr(model.config, "image_size", 224)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if proc is not None:
        s = getattr(proc, "size", None) or {}
        s = s if isinstance(s, dict) else dict(s)
        size = s.get("height") or s.get("shortest_edge") or s.get("width") or size
        crop = getattr(proc, "crop_size", None)
        if getattr(proc, "do_center_crop", False) and crop:
            crop = crop if isinstance(crop, dict) else dict(crop)
            size = crop.get("height", size)
        if getattr(proc, "do_normalize", True):
            mean = tuple(proc.image_mean) if proc.image_mean is not None else mean
            std = tuple(proc.image_std) if proc.image_std is not None else std
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if isinstance(size, list | tuple):
        size = size[0]
    return int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]
