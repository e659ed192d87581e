"""Sliding-window occlusion (Zeiler & Fergus 2014), defined as Captum's ``Occlusion``.

A ``window x window`` square (all channels) slides over the model input with ``stride``; windows
start at ``0, stride, 2 stride, ...`` while the previous one did not reach the border, so the last
one may be cut off by the border (as in Captum). Each window is replaced by a baseline and the
drop ``f(x) - f(occluded)`` of the target output is added to every pixel it covers; a pixel's
attribution is the mean drop over the windows covering it. All occluded images are batched.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ExplainerError
from ..models.adapter import ModelAdapter
from ._baselines import BASELINES, make_baseline
from .base import SEED_MAX, Attribution, Explainer, Param
from .registry import register

__all__ = ["Occlusion", "window_starts"]

OUTPUTS = ("probability", "logit")


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``ceil((size - window) / stride) + 1`` windows (Captum)."""
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def _window_masks(size: int, window: int, stride: int) -> torch.Tensor:
    """``(windows, size)`` bool: which positions along one axis each window covers."""
    starts = torch.tensor(window_starts(size, window, stride)).view(-1, 1)
    pos = torch.arange(size).view(1, -1)
    return (pos >= starts) & (pos < starts + window)


@register(aliases=("occlude",))
class Occlusion(Explainer):
    name = "occlusion"
    label = "Occlusion"
    signed = True
    slow = True
    params = (
        Param("window", int, 32, "side of the occluding square, in model-input pixels", min=1, max=4096),
        Param("stride", int, 16, "step between windows, in model-input pixels (at most the window)", min=1, max=4096),
        Param("fill", str, "black", "what the window shows", choices=BASELINES),
        Param("output", str, "probability", "which output drops are measured on", choices=OUTPUTS),
        Param("seed", int, 0, "random seed (noise fill)", min=0, max=SEED_MAX),
    )
    description = "Mean drop of the class score when a sliding square around each pixel is covered."

    def __init__(self, adapter: ModelAdapter, **params: Any) -> None:
        super().__init__(adapter, **params)
        s, w, st = adapter.input_size, self.config["window"], self.config["stride"]
        if w > s:
            raise ExplainerError(f"occlusion window {w} is larger than the model input {s}x{s}; use window <= {s}")
        if st > w and w < s:
            raise ExplainerError(f"occlusion stride {st} is larger than the window {w}: pixels would be skipped")

    def _scores(self, imgs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Target probability or logit (float64, CPU) for a batch of normalised images."""
        if self.config["output"] == "probability":
            p = self.adapter.probabilities(imgs)
            return p.gather(1, targets.view(-1, 1).cpu()).squeeze(1).double()
        adapter = self.adapter
        outs = []
        bs = adapter.batch_size()
        with torch.no_grad(), adapter.autocast(adapter.fast_forwards(imgs)):
            for i in range(0, imgs.shape[0], bs):
                logits = adapter.logits(imgs[i : i + bs]).float().cpu()
                outs.append(Explainer.target_logits(logits, targets[i : i + bs].cpu()))
        return torch.cat(outs).double()

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        cfg = self.config
        x = x.detach().float().cpu()
        n, _, h, w_ = x.shape
        win, stride = cfg["window"], cfg["stride"]
        base = make_baseline(self.adapter, x, cfg["fill"], generator=self.generator())
        rows = _window_masks(h, win, stride)
        cols = _window_masks(w_, win, stride)
        # window p = (a, b) covers rows[a] x cols[b]
        win_masks = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(-1, h, w_)  # (P, h, w)
        n_win = win_masks.shape[0]
        self.report(0.0)
        full = self._scores(x, targets)
        chunk = max(self.adapter.batch_size(), 32)
        drops = torch.empty(n, n_win, dtype=torch.float64)
        for i in range(n):
            for j in range(0, n_win, chunk):
                m = win_masks[j : j + chunk, None]  # (c, 1, h, w)
                imgs = torch.where(m, base[i : i + 1], x[i : i + 1])
                tgt = targets[i : i + 1].expand(m.shape[0])
                drops[i, j : j + chunk] = full[i] - self._scores(imgs, tgt)
                self.report((i + min(1.0, (j + chunk) / n_win)) / n)
        # mean over covering windows: separable sums R^T D C / (R^T 1 1^T C)
        r, c = rows.double(), cols.double()
        d = drops.view(n, rows.shape[0], cols.shape[0])
        total = torch.einsum("ah,nab,bw->nhw", r, d, c)
        count = torch.outer(r.sum(0), c.sum(0))
        maps = (total / count).float()
        checks = [{"windows": n_win, "score": float(full[i]), "max_drop": float(drops[i].max())} for i in range(n)]
        self.report(1.0)
        return Attribution(maps=maps, checks=checks)
