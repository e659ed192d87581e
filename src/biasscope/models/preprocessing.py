"""Model input geometry and normalisation, shared by every adapter.

An image of any size is resized (not cropped) to ``size x size`` so that every model pixel maps back
onto the whole original image; maps computed at model resolution are resized back to ``H x W``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "denormalize", "normalize", "resize_map", "to_unit_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_unit_tensor(images: Sequence[Image.Image] | Image.Image, size: int) -> torch.Tensor:
    """RGB images resized (bilinear) to ``size x size`` as a ``[0, 1]`` float tensor ``(N, 3, size, size)``."""
    if isinstance(images, Image.Image):
        images = [images]
    arrs = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))
            for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)


def _stats(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(tuple(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return m, s


def normalize(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x01 - mean) / std`` per channel of an ``(N, 3, H, W)`` tensor."""
    m, s = _stats(x01, mean, std)
    return (x01 - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``x * std + mean`` per channel: the inverse of :func:`normalize`."""
    m, s = _stats(x, mean, std)
    return x * s + m


def resize_map(m: np.ndarray | torch.Tensor, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize a 2-D map (or ``(N, h, w)`` stack) to ``size=(H, W)`` as float32 numpy."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32) if not torch.is_tensor(m) else m).float()
    squeeze = t.ndim == 2
    if squeeze:
        t = t[None]
    if tuple(t.shape[-2:]) != tuple(size):
        mode = "nearest" if nearest else "bilinear"
        kw = {} if nearest else {"align_corners": False}
        t = F.interpolate(t[:, None], size=size, mode=mode, **kw)[:, 0]
    out = t.cpu().numpy().astype(np.float32)
    return out[0] if squeeze else out
