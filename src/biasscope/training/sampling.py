"""Sampling strategies that create or remove group imbalance on purpose, and loss reweighting.

All of them act on the training part only (the validation split keeps the manifest's mix):

- ``as-is``: every training image once per epoch.
- ``skew``: a fixed subset whose group shares equal given proportions (e.g. a census-like mix),
  as large as the data allows; inside each group the label mix is kept.
- ``balanced-group`` / ``balanced-label-group``: each epoch draws ``len(train)`` images with
  replacement, every group (or label x group cell) equally likely.
- loss reweighting ``group`` / ``label-group``: each image's loss is weighted by
  ``N / (K * n_cell)`` (inverse frequency, mean weight 1), every cell then weighs the same in total.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from ..errors import BiasscopeError
from .data import Example

__all__ = [
    "REWEIGHT_MODES",
    "SAMPLING_STRATEGIES",
    "Reweight",
    "Sampling",
    "balanced_weights",
    "cell_key",
    "draw_epoch",
    "inverse_frequency_weights",
    "parse_proportions",
    "skew_subset",
    "underrepresented_groups",
]

Sampling = Literal["as-is", "skew", "balanced-group", "balanced-label-group"]
Reweight = Literal["none", "group", "label-group"]
SAMPLING_STRATEGIES: tuple[str, ...] = ("as-is", "skew", "balanced-group", "balanced-label-group")
REWEIGHT_MODES: tuple[str, ...] = ("none", "group", "label-group")

MSG_BAD_PROPORTIONS = "proportions must be GROUP=SHARE pairs with positive shares, got {text!r}"
MSG_UNKNOWN_GROUPS = "proportions name group(s) {names} that are not in the training data (groups: {groups})"
MSG_EMPTY_GROUP = "group {group!r} has no training images; it cannot get a share of {share:.3g}"


def cell_key(e: Example, by: str) -> tuple:
    """The stratum of an example: ``(group,)`` for ``group``, ``(label, group)`` for ``label-group``."""
    if by == "group":
        return (e.group,)
    if by == "label-group":
        return (e.y, e.group)
    raise BiasscopeError(f"unknown stratum {by!r}; use 'group' or 'label-group'")


def parse_proportions(text: str | Mapping[str, float]) -> dict[str, float]:
    """``"a=0.7,b=0.3"`` (or a mapping) -> shares normalised to sum to one."""
    if isinstance(text, Mapping):
        items = [(str(k), float(v)) for k, v in text.items()]
    else:
        items = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            k, sep, v = part.rpartition("=")
            try:
                items.append((k.strip(), float(v)))
            except ValueError:
                raise BiasscopeError(MSG_BAD_PROPORTIONS.format(text=text)) from None
            if not sep or not k.strip():
                raise BiasscopeError(MSG_BAD_PROPORTIONS.format(text=text))
    if not items or any(v <= 0 or not math.isfinite(v) for _, v in items):
        raise BiasscopeError(MSG_BAD_PROPORTIONS.format(text=text))
    total = sum(v for _, v in items)
    return {k: v / total for k, v in items}


def _largest_remainder(total: int, shares: Mapping, caps: Mapping) -> dict:
    """Integer counts summing to ``total`` proportional to ``shares``, never above ``caps``."""
    raw = {k: total * s for k, s in shares.items()}
    out = {k: min(math.floor(v), caps[k]) for k, v in raw.items()}
    order = sorted(shares, key=lambda k: (-(raw[k] - math.floor(raw[k])), str(k)))
    left = total - sum(out.values())
    for k in order:
        if left <= 0:
            break
        if out[k] < caps[k]:
            out[k] += 1
            left -= 1
    return out


def skew_subset(
    examples: Sequence[Example], indices: Sequence[int], proportions: Mapping[str, float], *, seed: int
) -> list[int]:
    """The largest subset of ``indices`` whose group shares equal ``proportions``.

    Groups not named get no images. Within a group the images are chosen by a seeded permutation
    per label, keeping the group's label mix (largest-remainder rounding).
    """
    by_group: dict[str, list[int]] = {}
    for i in indices:
        by_group.setdefault(examples[i].group, []).append(i)
    unknown = sorted(set(proportions) - set(by_group))
    if unknown:
        raise BiasscopeError(MSG_UNKNOWN_GROUPS.format(names=", ".join(unknown), groups=", ".join(sorted(by_group))))
    size = min(math.floor(len(by_group[g]) / p + 1e-9) for g, p in proportions.items())
    counts = _largest_remainder(size, proportions, {g: len(by_group[g]) for g in proportions})
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for g in sorted(proportions):
        members = by_group[g]
        if counts[g] == 0:
            continue
        by_label: dict[int, list[int]] = {}
        for i in members:
            by_label.setdefault(examples[i].y, []).append(i)
        shares = {y: len(v) / len(members) for y, v in by_label.items()}
        per_label = _largest_remainder(counts[g], shares, {y: len(v) for y, v in by_label.items()})
        for y in sorted(by_label):
            pool = by_label[y]
            perm = rng.permutation(len(pool))
            chosen.extend(pool[j] for j in perm[: per_label[y]])
    return sorted(chosen)


def balanced_weights(examples: Sequence[Example], indices: Sequence[int], by: str) -> np.ndarray:
    """Sampling probability of each of ``indices`` so that every stratum is equally likely."""
    keys = [cell_key(examples[i], by) for i in indices]
    counts = Counter(keys)
    w = np.array([1.0 / (len(counts) * counts[k]) for k in keys], dtype=np.float64)
    return w / w.sum()


def inverse_frequency_weights(examples: Sequence[Example], indices: Sequence[int], by: str) -> np.ndarray:
    """Per-image loss weights ``N / (K * n_cell)``: mean one, each of the K cells sums to ``N / K``."""
    keys = [cell_key(examples[i], by) for i in indices]
    counts = Counter(keys)
    n, k = len(keys), len(counts)
    return np.array([n / (k * counts[c]) for c in keys], dtype=np.float64)


def draw_epoch(
    indices: Sequence[int], probabilities: np.ndarray | None, generator: torch.Generator
) -> list[int]:
    """The order of one epoch: a permutation, or ``len(indices)`` weighted draws with replacement."""
    n = len(indices)
    if probabilities is None:
        order = torch.randperm(n, generator=generator).tolist()
    else:
        p = torch.as_tensor(probabilities, dtype=torch.float64)
        order = torch.multinomial(p, n, replacement=True, generator=generator).tolist()
    return [indices[j] for j in order]


def underrepresented_groups(examples: Sequence[Example], indices: Sequence[int]) -> list[str]:
    """Groups whose share of ``indices`` is below the uniform share ``1 / n_groups``."""
    counts = Counter(examples[i].group for i in indices)
    if len(counts) < 2:
        return []
    uniform = 1.0 / len(counts)
    n = sum(counts.values())
    return sorted(g for g, c in counts.items() if c / n < uniform - 1e-12)
