"""Generative augmentation: a user's own image generator adds synthetic images for chosen groups.

biasscope ships no generator. You supply any callable that follows :class:`ImageGenerator`, for
example a wrapper around a diffusion pipeline you have::

    def my_generator(*, group: str, label: str, n: int, seed: int) -> list[PIL.Image.Image]:
        g = torch.Generator().manual_seed(seed)
        return pipe([f"a photo of a {group} {label}"] * n, generator=g).images

    from biasscope.training import add_synthetic_images
    augmented = add_synthetic_images("train.csv", my_generator, {"female": 200}, "runs/aug", group="gender")
    train(augmented, "runs/aug/model", TrainConfig(group="gender"))

Each returned image is validated with :func:`biasscope.load_image`, written as PNG under
``out_dir/synthetic/`` and appended to the manifest with ``synthetic=1`` (real rows get ``0``).
Training puts synthetic rows in the training split only; the validation split, ``compare`` and the
audit's evaluation of a held-out manifest exclude them (:func:`~biasscope.training.exclude_synthetic`).

From the CLI, ``biasscope train ... --generator my_module:my_generator --synthesize female=200``
imports the callable (your own code, on your ``PYTHONPATH``) and does the same before training.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..audit.manifest import Manifest, ManifestRow, load_manifest, write_manifest
from ..errors import BiasscopeError
from .data import SYNTHETIC_COLUMN, is_synthetic

__all__ = [
    "AUGMENTED_MANIFEST",
    "ImageGenerator",
    "add_synthetic_images",
    "load_generator",
    "parse_counts",
]

AUGMENTED_MANIFEST = "manifest_augmented.csv"
MSG_GENERATOR_COUNT = "generator returned {got} image(s) for group {group!r}, label {label!r}; {n} were asked for"


@runtime_checkable
class ImageGenerator(Protocol):
    """Makes ``n`` synthetic images of class ``label`` for group ``group``, reproducibly from ``seed``.

    Returns PIL images or ``HxWx3`` uint8 arrays (any size; they are resized for training like
    every other image).
    """

    def __call__(self, *, group: str, label: str, n: int, seed: int) -> Sequence[Image.Image | np.ndarray]:
        ...


def parse_counts(items: Sequence[str] | Mapping[str, int]) -> dict[str, int]:
    """``["female=200", "old=50"]`` -> ``{"female": 200, "old": 50}`` (images per label for that group)."""
    if isinstance(items, Mapping):
        out = {str(k): int(v) for k, v in items.items()}
    else:
        out = {}
        for item in items:
            for part in str(item).split(","):
                if not part.strip():
                    continue
                k, sep, v = part.rpartition("=")
                if not sep or not k.strip() or not v.strip().isdigit():
                    raise BiasscopeError(f"{part!r}: expected GROUP=N (images per label)")
                out[k.strip()] = int(v)
    if any(v < 0 for v in out.values()):
        raise BiasscopeError("synthetic image counts must not be negative")
    return out


def load_generator(spec: str) -> ImageGenerator:
    """Import ``module:attribute`` (your own code). A class or factory without the generator
    signature is called once without arguments to build the generator."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise BiasscopeError(f"generator {spec!r}: expected MODULE:CALLABLE, e.g. my_gen:generate")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise BiasscopeError(f"cannot import generator module {mod_name!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BiasscopeError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise BiasscopeError(f"generator {spec!r} is not callable")
    return obj  # type: ignore[return-value]


def add_synthetic_images(
    manifest: str | Path | Manifest,
    generator: ImageGenerator,
    counts: Mapping[str, int],
    out_dir: str | Path,
    *,
    group: str,
    target: str = "label",
    labels: Sequence[str] | None = None,
    seed: int = 0,
    root: str | Path | None = None,
) -> Manifest:
    """Ask ``generator`` for ``counts[group_value]`` images of every label (or ``labels``) of each
    named group, save them, and return the manifest with the synthetic rows appended and marked.

    The manifest is also written to ``out_dir/manifest_augmented.csv`` with paths relative to the
    common folder of the original images and ``out_dir``; reload it with
    ``load_manifest(csv, root=<that folder>)`` (stored as ``manifest.root`` of the returned value).
    ``seed`` is passed on as ``seed + k`` for the k-th (group, label) request, in sorted order.
    """
    from ..images import load_image

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, groups=[group], root=root)
    if group not in m.attribute_columns:
        raise BiasscopeError(f"unknown group column {group!r}")
    values = set(m.group_values(group))
    unknown = sorted(set(counts) - values)
    if unknown:
        raise BiasscopeError(f"group value(s) {', '.join(unknown)} are not in column {group!r} "
                             f"(values: {', '.join(sorted(values))})")

    def cls_of(r: ManifestRow) -> str:
        return r.label if target == "label" else r.attributes.get(target, "")

    label_list = list(labels) if labels is not None else sorted({cls_of(r) for r in m.rows if not is_synthetic(r)})
    out = Path(out_dir).resolve()
    img_dir = out / "synthetic"
    img_dir.mkdir(parents=True, exist_ok=True)
    new_root = Path(os.path.commonpath([str(m.root), str(out)]))
    attr_cols = list(m.attribute_columns)
    if SYNTHETIC_COLUMN not in attr_cols:
        attr_cols.append(SYNTHETIC_COLUMN)
    records: list[dict[str, str]] = []
    for r in m.rows:
        rec = {"path": r.file.relative_to(new_root).as_posix(), "label": r.label}
        rec.update({c: r.attributes.get(c, "") for c in m.attribute_columns})
        rec[SYNTHETIC_COLUMN] = "1" if is_synthetic(r) else "0"
        records.append(rec)
    template = {c: "" for c in m.attribute_columns}
    k = 0
    for gval in sorted(counts):
        n = counts[gval]
        for lab in label_list:
            if n == 0:
                k += 1
                continue
            imgs = list(generator(group=gval, label=lab, n=n, seed=seed + k))
            if len(imgs) != n:
                raise BiasscopeError(MSG_GENERATOR_COUNT.format(got=len(imgs), group=gval, label=lab, n=n))
            for j, im in enumerate(imgs):
                img = load_image(im)
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{gval}_{lab}")
                f = img_dir / f"{safe}_{seed + k}_{j:05d}.png"
                img.save(f)
                rec = dict(template)
                rec.update({"path": f.relative_to(new_root).as_posix(), "label": lab, group: gval,
                            SYNTHETIC_COLUMN: "1"})
                if target != "label":
                    rec[target] = lab
                records.append(rec)
            k += 1
    csv_path = write_manifest(records, out / AUGMENTED_MANIFEST, columns=["path", "label", *attr_cols])
    return load_manifest(csv_path, groups=[group], root=new_root)
