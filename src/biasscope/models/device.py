"""Where and how a model runs: the device, the reduced precision of gradient-free forwards, the memory layout.

Shared by :func:`~biasscope.models.loader.load_model` and the packaged face models
(:func:`biasscope.faces.attribute.load_face_model`), which build their adapters themselves.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError

__all__ = ["prefers_channels_last", "resolve_device", "resolve_precision"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for gradient-free forwards: 'fp32' (none), 'bf16', 'fp16' or 'auto'.

    'auto' picks bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AMX), else fp32
    (on CPUs with AVX-512 bf16 but no AMX, bf16 ran slower than fp32 here). ``load_model`` checks an
    'auto' choice against fp32 on representative photos before relying on it.
    """
    p = (precision or "fp32").lower()
    if p == "fp32":
        return None
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        if device.type != "cuda":
            raise ModelError("fp16 is only supported on CUDA; use bf16 on CPU")
        return torch.float16
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        return torch.bfloat16 if "amx_bf16" in flags else None
    raise ModelError(f"unknown precision {precision!r}; use fp32, bf16, fp16 or auto")


def prefers_channels_last(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether NHWC weights are the faster default: CPU models built on 2-D convolutions (oneDNN).

    A model whose only convolution is a patch embedding (ViT, Swin, CLIP's image tower) gains nothing
    and pays for layout conversions: ViT-B/32 forwards (batch 8, 2-core CPU) were 1.2x slower in NHWC.
    """
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    return device.type == "cpu" and convs > 1
