"""Why two faces match: attributions of the match score on each aligned chip, and face-part shares.

The explained quantity is the pair's score ``s(A, B) = cos(f(A), f(B))``; each image gets its own
heatmap on its aligned chip (the pixels the matcher saw):

- ``occlusion`` (any model, dlib's included): slide a ``patch`` square (step ``stride``) over chip A,
  fill it with the chip's mean colour, and record ``s(A, B) - s(A_occluded, B)``; every pixel gets
  the mean drop of the windows covering it (as Captum's ``Occlusion``). The same for chip B against
  the intact A. All occluded chips of one image go to the model as one batch.
- ``gradient`` (torch models): gradient x input of ``s`` with respect to each normalised chip,
  summed over colour channels.

Face parts (:data:`biasscope.faces.FACE_PARTS`) are drawn on each chip from the face's 68
landmarks mapped into the chip, and a heatmap's *share* on a part is the part's positive mass over
the chip's positive mass (``nan`` when nothing is positive): "the hair band carries 30% of what
makes these two photos similar".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ExplainerError
from ..faces.chips import FaceChip
from ..faces.detect import Face
from ..faces.parts import FACE_PARTS, face_part_masks
from .models import EmbeddingModel, TorchEmbeddingModel, cosine_similarity

__all__ = [
    "EXPLAIN_METHODS",
    "PairExplanation",
    "chip_part_masks",
    "explain_pair",
    "part_shares",
]

EXPLAIN_METHODS = ("occlusion", "gradient")
MSG_NO_GRADIENT = "the 'gradient' explanation needs a torch embedding model; {name} is not one: use 'occlusion'"


@dataclass
class PairExplanation:
    """Heatmaps ``(s, s)`` of the match score on each chip, and their face-part shares."""

    score: float
    heat_a: np.ndarray
    heat_b: np.ndarray
    shares_a: dict[str, float]
    shares_b: dict[str, float]
    method: str
    areas_a: dict[str, float] | None = None  # each part's share of the chip's pixels
    areas_b: dict[str, float] | None = None

    @property
    def shares(self) -> dict[str, float]:
        """Mean of the two images' shares per part (``nan`` parts ignored)."""
        out = {}
        for p in self.shares_a:
            v = [x for x in (self.shares_a[p], self.shares_b[p]) if not math.isnan(x)]
            out[p] = float(np.mean(v)) if v else math.nan
        return out


def chip_part_masks(chip: FaceChip) -> dict[str, np.ndarray]:
    """Face-part masks ``(s, s)`` on the chip, from the face's 68 landmarks mapped into it."""
    lm = chip.image_to_chip.apply(chip.face.landmarks)
    s = chip.size
    return face_part_masks((s, s), Face(box=(0, 0, s - 1, s - 1), landmarks=lm))


def part_shares(heatmap: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of the positive attribution mass on each part (``nan`` everywhere if none is positive)."""
    pos = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    total = float(pos.sum())
    if total <= 0:
        return {p: math.nan for p in masks}
    return {p: float(pos[m].sum() / total) for p, m in masks.items()}


def _windows(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def _occlusion(model: EmbeddingModel, chip: np.ndarray, other_emb: np.ndarray, patch: int,
               stride: int) -> np.ndarray:
    s = chip.shape[0]
    patch = min(patch, s)
    fill = chip.reshape(-1, 3).mean(0).round().astype(np.uint8)
    starts = _windows(s, patch, stride)
    variants, boxes = [], []
    for y in starts:
        for x in starts:
            v = chip.copy()
            v[y : y + patch, x : x + patch] = fill
            variants.append(v)
            boxes.append((y, x))
    emb = model.embed([chip, *variants])  # the intact chip in the same batch: drops free of batch-size rounding
    sims = cosine_similarity(emb, np.broadcast_to(other_emb, emb.shape))
    drops = sims[0] - sims[1:]
    total = np.zeros((s, s))
    count = np.zeros((s, s))
    for (y, x), d in zip(boxes, drops):
        total[y : y + patch, x : x + patch] += d
        count[y : y + patch, x : x + patch] += 1
    return total / np.maximum(count, 1)


def _gradient(model: TorchEmbeddingModel, chip_a: np.ndarray, chip_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = model.to_tensor([chip_a, chip_b]).detach().requires_grad_(True)
    emb = model.torch_embed(x)
    s = torch.nn.functional.cosine_similarity(emb[0:1], emb[1:2]).sum()
    (grad,) = torch.autograd.grad(s, x)
    heat = (grad * x).sum(1).detach().double().cpu().numpy()
    return heat[0], heat[1]


def explain_pair(
    model: EmbeddingModel,
    chip_a: FaceChip,
    chip_b: FaceChip,
    *,
    method: str = "occlusion",
    patch: int | None = None,
    stride: int | None = None,
) -> PairExplanation:
    """Attribute the match score of two chips to each chip's pixels, and to its face parts.

    ``patch`` defaults to a sixth of the chip side and ``stride`` to ``patch`` (occlusion only).
    """
    if method not in EXPLAIN_METHODS:
        raise ExplainerError(f"unknown pair explanation {method!r}; choose from {', '.join(EXPLAIN_METHODS)}")
    a = np.ascontiguousarray(np.asarray(chip_a.image.convert("RGB")))
    b = np.ascontiguousarray(np.asarray(chip_b.image.convert("RGB")))
    emb = model.embed([a, b])
    score = float(cosine_similarity(emb[0], emb[1]))
    if method == "gradient":
        if not isinstance(model, TorchEmbeddingModel):
            raise ExplainerError(MSG_NO_GRADIENT.format(name=model.name))
        ha, hb = _gradient(model, a, b)
    else:
        p = patch or max(2, a.shape[0] // 6)
        st = stride or p
        ha = _occlusion(model, a, emb[1], p, st)
        hb = _occlusion(model, b, emb[0], p, st)
    ma, mb = chip_part_masks(chip_a), chip_part_masks(chip_b)
    return PairExplanation(
        score=score,
        heat_a=ha.astype(np.float32),
        heat_b=hb.astype(np.float32),
        shares_a=part_shares(ha, ma),
        shares_b=part_shares(hb, mb),
        method=method,
        areas_a={p: float(m.mean()) for p, m in ma.items()},
        areas_b={p: float(m.mean()) for p, m in mb.items()},
    )


def shares_table(rows: Sequence[dict]) -> dict[str, list[float]]:
    """``{part: [share of each explained pair]}`` from records with a ``shares`` dict."""
    return {p: [r["shares"].get(p, math.nan) for r in rows] for p in FACE_PARTS}


__all__ += ["shares_table"]
