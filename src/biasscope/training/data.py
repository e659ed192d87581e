"""Training data: manifest rows as examples, the stratified validation split, image tensors.

The manifest is the audit's (:func:`biasscope.audit.load_manifest`): ``path``, ``label`` and
attribute columns. Training reads the class from ``target`` (``label`` or any attribute column) and
the group from one attribute column. Rows whose ``synthetic`` column is true were made by a
generator (:mod:`.generative`): they may be trained on but never validated or evaluated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..audit.manifest import Manifest, ManifestRow, load_manifest
from ..errors import BiasscopeError, ManifestError

__all__ = [
    "SYNTHETIC_COLUMN",
    "Example",
    "examples_from_manifest",
    "exclude_synthetic",
    "is_synthetic",
    "load_tensors",
    "load_training_manifest",
    "stratified_split",
]

#: Manifest column that marks generated images (``1``/``true``/``yes``).
SYNTHETIC_COLUMN = "synthetic"
_TRUE = frozenset({"1", "true", "yes", "y", "t"})

MSG_UNKNOWN_TARGET = "unknown target column {col!r}; use 'label' or one of: {cols}"
MSG_ONE_CLASS = "training needs at least two classes in column {col!r}; found only {found}"
MSG_VAL_TOO_SMALL = (
    "the validation split is empty: {n} real images with val_fraction={frac}; "
    "add images or raise val_fraction"
)


@dataclass(frozen=True)
class Example:
    """One training image: where it is, its class index, its group, and whether it is synthetic."""

    index: int  # position among the examples (== manifest row position)
    file: Path
    path: str
    label: str
    y: int
    group: str
    synthetic: bool


def is_synthetic(row: ManifestRow) -> bool:
    """Whether a manifest row was produced by a generator (its ``synthetic`` cell is true)."""
    return row.attributes.get(SYNTHETIC_COLUMN, "").strip().lower() in _TRUE


def exclude_synthetic(manifest: Manifest) -> Manifest:
    """The manifest without synthetic rows (re-numbered), for validation and evaluation."""
    rows = [r for r in manifest.rows if not is_synthetic(r)]
    if not rows:
        raise ManifestError("the manifest has no real (non-synthetic) images to evaluate on")
    if len(rows) == len(manifest.rows):
        return manifest
    rows = [replace(r, image_id=i) for i, r in enumerate(rows)]
    return replace(manifest, rows=rows, fingerprint=manifest.fingerprint + ":real-only")


def load_training_manifest(
    source: str | Path | Manifest, *, group: str, target: str = "label", root: str | Path | None = None
) -> Manifest:
    """Load (or check) a manifest that has the ``group`` column and the ``target`` column."""
    m = source if isinstance(source, Manifest) else load_manifest(source, groups=[group], root=root)
    if group not in m.attribute_columns:
        raise ManifestError(f"unknown group column {group!r}; attribute columns are: "
                            f"{', '.join(m.attribute_columns) or '(none)'}")
    if target != "label" and target not in m.attribute_columns:
        raise ManifestError(MSG_UNKNOWN_TARGET.format(col=target, cols=", ".join(m.attribute_columns) or "(none)"))
    return m


def examples_from_manifest(
    manifest: Manifest, *, group: str, target: str = "label", classes: Sequence[str] | None = None
) -> tuple[list[Example], list[str]]:
    """Examples and the sorted class names (or ``classes`` when given, e.g. a model's)."""
    def cls_of(r: ManifestRow) -> str:
        return r.label if target == "label" else r.attributes.get(target, "")

    found = sorted({cls_of(r) for r in manifest.rows})
    names = list(classes) if classes is not None else found
    if classes is None and len(names) < 2:
        raise BiasscopeError(MSG_ONE_CLASS.format(col=target, found=", ".join(names) or "none"))
    lookup = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(found) - set(lookup))
    if unknown:
        raise BiasscopeError(f"classes {', '.join(unknown)} are not among the model's classes {', '.join(names)}")
    empty = [r.line for r in manifest.rows if not r.attributes.get(group, "").strip() or not cls_of(r).strip()]
    if empty:
        raise ManifestError(f"rows without a {target!r} or {group!r} value", [f"line {ln}" for ln in empty])
    ex = [
        Example(index=i, file=r.file, path=r.path, label=cls_of(r), y=lookup[cls_of(r)],
                group=r.attributes[group], synthetic=is_synthetic(r))
        for i, r in enumerate(manifest.rows)
    ]
    return ex, names


def stratified_split(
    examples: Sequence[Example], *, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split example indices into train and validation, stratified by label x group.

    Each label x group cell of the real images gives ``round(val_fraction * n)`` images to
    validation (at least one where the cell has two or more, and never the whole cell), chosen by a
    seeded permutation. Synthetic images always go to training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise BiasscopeError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    cells: dict[tuple[int, str], list[int]] = {}
    for e in examples:
        if not e.synthetic:
            cells.setdefault((e.y, e.group), []).append(e.index)
    val: list[int] = []
    for key in sorted(cells):
        idx = cells[key]
        k = round(val_fraction * len(idx))
        if val_fraction > 0 and len(idx) >= 2:
            k = max(1, k)
        k = min(k, len(idx) - 1)
        perm = rng.permutation(len(idx))
        val.extend(idx[j] for j in perm[:k])
    if val_fraction > 0 and not val:
        raise BiasscopeError(MSG_VAL_TOO_SMALL.format(n=sum(map(len, cells.values())), frac=val_fraction))
    vset = set(val)
    train = [e.index for e in examples if e.index not in vset]
    return train, sorted(val)


def load_tensors(examples: Sequence[Example], size: int) -> torch.Tensor:
    """Load every image once (through :func:`biasscope.load_image`) as ``(N, 3, size, size)`` uint8.

    Images are resized (not cropped) to the square input, exactly as
    :meth:`biasscope.ModelAdapter.preprocess` does, so training and evaluation see the same pixels.
    """
    from ..images import load_image

    out = torch.empty((len(examples), 3, size, size), dtype=torch.uint8)
    for i, e in enumerate(examples):
        img = load_image(e.file).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out
