"""A synthetic data set with a planted group-dependent shortcut.

Each 32x32 image has a background tint that shows its group (``a`` bluish, ``b`` orange) and a
central patch whose colour carries the label, with noise: the patch's red-green balance is
``0.5 + 0.15 * s`` with ``s ~ N(+1, 1)`` for ``red`` and ``N(-1, 1)`` for ``green``, so even the
best possible classifier is right only ~84% of the time from the patch alone.

The *skewed* training sample is balanced in group ``a`` but 90% ``green`` in group ``b``: there the
group tint itself predicts the label, and a model that learns that shortcut calls most ``red``
images of group ``b`` ``green``. On a balanced test set that shows as lower accuracy for ``b``.
Balancing label x group (or reweighting by inverse frequency) removes the shortcut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
TINT = {"a": (0.35, 0.45, 0.65), "b": (0.75, 0.55, 0.30)}
LABELS = ("green", "red")

#: training cells (label, group) -> count: group b is small and mostly 'green'
SKEWED = {("green", "a"): 240, ("red", "a"): 240, ("green", "b"): 180, ("red", "b"): 20}
#: balanced held-out test cells
BALANCED = {(lab, g): 150 for lab in LABELS for g in ("a", "b")}


def make_image(label: str, group: str, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((SIZE, SIZE, 3), np.float64)
    img[:] = TINT[group]
    s = (1.0 if label == "red" else -1.0) + rng.normal()
    v = float(np.clip(0.5 + 0.15 * s, 0.0, 1.0))
    lo, hi = SIZE * 5 // 16, SIZE * 11 // 16
    img[lo:hi, lo:hi] = (v, 1.0 - v, 0.5)
    img += rng.normal(0.0, 0.05, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


def write_set(folder: Path, cells: dict[tuple[str, str], int], *, seed: int, name: str = "manifest.csv",
              extra_rows: list[str] | None = None) -> Path:
    """Write the images of ``cells`` as PNGs and a manifest ``path,label,group``; returns the CSV."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,group"]
    for (lab, g), n in sorted(cells.items()):
        for i in range(n):
            rel = f"img/{lab}_{g}_{i:04d}.png"
            (folder / "img").mkdir(exist_ok=True)
            Image.fromarray(make_image(lab, g, rng)).save(folder / rel)
            lines.append(f"{rel},{lab},{g}")
    lines += extra_rows or []
    csv = folder / name
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv
