"""Face geometry inside audits: face-part regions and quality flags per image, aligned group heatmaps.

With ``AuditConfig(face_parts=True)`` (``biasscope audit --face-parts``) the runner detects the
largest face of every image (dlib, the ``faces`` extra), adds its face parts
(:data:`~biasscope.faces.FACE_PARTS`: eyes, eyebrows, mouth, nose, jaw_chin, face_skin, hair_band,
background) to the image's named regions, exactly like ``region:NAME`` columns of the manifest, and
records the quality flags (:data:`~biasscope.faces.QUALITY_FLAGS`) with the face's landmarks. An
image without a face gets the ``no_face`` flag and no face-part regions (its shares are NaN).

At finalisation the stored heatmaps (model resolution, stretched back onto each image as the model
saw it) are warped into the canonical face frame with each face's landmarks and averaged per group
and per label x group cell (:func:`~biasscope.faces.aggregate_heatmaps`, each map scaled by its
largest absolute value so that every image weighs the same), with difference maps between groups.
``MetricsOptions(exclude_flags=[...])`` leaves flagged images out of every metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import BiasscopeError

__all__ = [
    "ALIGNED_FRAME_SIZE",
    "FACE_DIR",
    "MSG_FLAGS_NEED_FACES",
    "MSG_REGION_CLASH",
    "MSG_UNKNOWN_FLAG",
    "check_face_parts",
    "face_columns",
    "face_part_names",
    "face_parts_for_image",
    "face_summary",
    "heatmap_in_image",
    "mark_excluded",
]

#: side of the canonical face frame the group heatmaps are averaged in
ALIGNED_FRAME_SIZE = 96
#: sub-folder of a run with the rendered group heatmaps
FACE_DIR = "faces"
#: images are brought to at most this side before their heatmaps are aligned (a uniform scale)
ALIGN_MAX_SIDE = 512

MSG_REGION_CLASH = (
    "the manifest already has region column(s) {names} with face-part names (e.g. from `biasscope annotate "
    "--regions`); drop --face-parts or rename those columns"
)
MSG_UNKNOWN_FLAG = "unknown quality flag(s) {flags}; choose from {choices}"
MSG_FLAGS_NEED_FACES = "excluding images by quality flag needs face data: run the audit with --face-parts"


def face_part_names() -> list[str]:
    """The region names the face parts add (in :data:`~biasscope.faces.FACE_PARTS` order)."""
    from ..faces import FACE_PARTS

    return list(FACE_PARTS)


def quality_flags() -> list[str]:
    from ..faces import QUALITY_FLAGS

    return list(QUALITY_FLAGS)


def check_face_parts(region_names: Sequence[str]) -> None:
    """Fail early when the face tooling is missing or manifest regions use face-part names."""
    from ..faces.deps import dlib_module, landmark_model_path

    dlib_module()
    landmark_model_path(68)
    clash = sorted(set(region_names) & set(face_part_names()))
    if clash:
        raise BiasscopeError(MSG_REGION_CLASH.format(names=", ".join(clash)))


def face_parts_for_image(img: Image.Image, named: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """``named`` plus the face-part masks of ``img`` (largest face), and the image's face record:
    quality flags and measurements (:meth:`FaceQuality.to_dict`) and the 68 landmarks (or ``None``)."""
    from ..faces import assess_quality, detect_faces, face_part_masks

    arr = np.asarray(img.convert("RGB"))
    faces = detect_faces(arr)
    q = assess_quality(arr, faces)
    info = q.to_dict()
    info.pop("thresholds", None)
    info["landmarks"] = np.round(faces[0].landmarks, 2).tolist() if faces else None
    out = dict(named)
    if faces:
        out.update(face_part_masks(arr.shape[:2], faces[0]))
    return out, info


def heatmap_in_image(heat: np.ndarray, view: Mapping[str, Any] | None, size: tuple[int, int],
                     image_size: tuple[int, int] | None = None) -> np.ndarray:
    """A stored heatmap in an image's pixels, ``size = (H, W)`` (the image, or a uniformly scaled copy of it).

    Without ``view`` the model saw the whole image stretched to its square input: the map is resized.
    With a face chip's ``view`` (record ``"view"``: landmarks in the original image, chip size,
    padding), the chip map is warped back through dlib's chip similarity (0 outside the chip);
    ``image_size = (W, H)`` of the original image scales it to ``size``.
    """
    from ..models.adapter import resize_map

    if not view or view.get("kind") != "face_chip":
        return resize_map(heat, size)
    from ..faces.align import Similarity, chip_transform, warp_array

    to_chip = chip_transform(np.asarray(view["landmarks"], dtype=np.float64), int(view["size"]),
                             float(view["padding"]))
    w0, h0 = image_size if image_size else (size[1], size[0])
    kx, ky = size[1] / float(w0), size[0] / float(h0)  # pixel centres: p' = (p + 0.5) k - 0.5
    scale = Similarity(np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]]))
    chip_to_out = scale.compose(to_chip.inverse())
    return warp_array(np.asarray(heat, dtype=np.float64), chip_to_out, size, fill=0.0).astype(np.float32)


def face_columns(face: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per-image CSV columns of a face record: ``faces``, ``face_flags`` (``;``-joined),
    ``flag:<name>`` booleans, ``yaw_ratio``, ``face_size``, ``sharpness``; empty without face data."""
    if face is None:
        return {}
    flags = list(face.get("flags") or [])
    row: dict[str, Any] = {"faces": face.get("n_faces"), "face_flags": ";".join(flags)}
    for f in quality_flags():
        row[f"flag:{f}"] = f in flags
    for k in ("yaw_ratio", "face_size", "sharpness"):
        row[k] = face.get(k)
    return row


def mark_excluded(df: pd.DataFrame, exclude_flags: Sequence[str]) -> pd.DataFrame:
    """Add a boolean ``excluded`` column: the image carries one of ``exclude_flags``.

    Raises when a flag is unknown or the run has no face data. Without flags, ``df`` is returned as is.
    """
    flags = [f.strip() for f in exclude_flags if f and f.strip()]
    if not flags:
        return df
    unknown = [f for f in flags if f not in quality_flags()]
    if unknown:
        raise BiasscopeError(MSG_UNKNOWN_FLAG.format(flags=", ".join(unknown), choices=", ".join(quality_flags())))
    if df.empty:
        return df
    if "face_flags" not in df:
        raise BiasscopeError(MSG_FLAGS_NEED_FACES)
    df = df.copy()
    ex = np.zeros(len(df), dtype=bool)
    for f in flags:
        ex |= df[f"flag:{f}"].fillna(False).astype(bool).to_numpy()
    df["excluded"] = ex
    return df


# ---------------------------------------------------------------------------------------- summaries
def _quality_by_group(ok: pd.DataFrame, column: str) -> dict:
    out: dict = {}
    for gval, sub in ok.groupby(ok[column].astype(str), sort=True):
        entry: dict = {"n": len(sub), "n_with_face": int((sub["faces"].fillna(0) > 0).sum()), "flags": {}}
        for f in quality_flags():
            c = int(sub[f"flag:{f}"].fillna(False).astype(bool).sum())
            entry["flags"][f] = {"count": c, "rate": c / len(sub) if len(sub) else None}
        if "excluded" in sub:
            entry["n_excluded"] = int(sub["excluded"].sum())
        out[str(gval)] = entry
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


def _aligned_maps(store, model: str, rows: pd.DataFrame, method: str, files: dict[int, str],
                  faces: dict[int, list], frame, views: Mapping[int, Any] | None = None,
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Aligned heatmaps (and grey aligned faces) of ``rows`` that have a face and a stored map."""
    from ..faces import align_face_image, align_heatmap
    from ..images import load_image

    maps, images, ids = [], [], []
    for iid, w, h in zip(rows["image_id"], rows["width"], rows["height"]):
        lm = faces.get(int(iid))
        heat = store.heatmap(model, int(iid), method)
        if lm is None or heat is None or not (w and h) or any(map(math.isnan, (float(w), float(h)))):
            continue
        k = min(1.0, ALIGN_MAX_SIDE / max(float(w), float(h)))
        size = (max(1, round(float(h) * k)), max(1, round(float(w) * k)))
        # the map back in the image (stretched back, or a face chip warped back), then a uniform scale
        lm_k = (np.asarray(lm, dtype=np.float64) + 0.5) * np.array([size[1] / float(w), size[0] / float(h)]) - 0.5
        in_image = heatmap_in_image(heat, (views or {}).get(int(iid)), size, (float(w), float(h)))
        maps.append(align_heatmap(in_image, lm_k, frame))
        try:
            img = load_image(files[int(iid)])
            if k < 1.0:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            face = align_face_image(img, lm_k, frame)
            images.append(np.repeat(face.mean(axis=-1, keepdims=True), 3, axis=-1))
        except (BiasscopeError, OSError, KeyError):
            images.append(np.full((frame.size, frame.size, 3), np.nan))
        ids.append(int(iid))
    return maps, images, ids


def face_summary(
    run_dir: str | Path,
    model: str,
    frame_rows: pd.DataFrame,
    *,
    groups: Sequence[str],
    methods: Sequence[str],
    model_index: int = 0,
) -> dict:
    """The faces section of a model's metrics: quality flags per group, and aligned group heatmaps
    per method (rendered to ``RUN_DIR/faces/*.png``, the mean maps in the ``.npz`` beside each: ``keys``,
    ``n``, ``means``) with each group's ``n``.

    ``frame_rows`` are the model's per-image rows (with an ``excluded`` column when images are
    excluded); heatmaps average the included images with a face.
    """
    from ..explainers import is_signed
    from ..faces import FaceFrame, aggregate_heatmaps, render_group_heatmaps
    from .store import RunStore

    store = RunStore(run_dir)
    ok = frame_rows[frame_rows["status"] == "ok"] if not frame_rows.empty else frame_rows
    out: dict = {"quality": {}, "heatmaps": {}, "findings": [], "frame_size": ALIGNED_FRAME_SIZE,
                 "normalize": "max"}
    if ok.empty or "faces" not in ok:
        return out
    n_ex = int(ok["excluded"].sum()) if "excluded" in ok else 0
    out["n_excluded"] = n_ex
    for g in groups:
        out["quality"][g] = _quality_by_group(ok, g)
    for g, by in out["quality"].items():
        for gval, e in by.items():
            flagged = {f: v["rate"] for f, v in e["flags"].items() if v["count"]}
            if flagged:
                words = ", ".join(f"{f} {100 * r:.0f}%" for f, r in flagged.items())
                out["findings"].append(f"Quality flags for {g} = {gval} (n = {e['n']}): {words}.")
    if n_ex:
        out["findings"].append(f"{n_ex} image(s) with excluded quality flags are left out of every metric.")
    incl = ok[~ok["excluded"].astype(bool)] if "excluded" in ok else ok
    scored = store.results(model)
    faces = {r.image_id: r.face["landmarks"] for r in scored if r.face and r.face.get("landmarks")}
    views = {r.image_id: r.view for r in scored if r.view}
    files = {r["image_id"]: r["file"] for r in store.images()}
    frame = FaceFrame(size=ALIGNED_FRAME_SIZE)
    folder = Path(run_dir) / FACE_DIR
    for method in methods:
        signed = is_signed(method, (store.get_meta("config", {}) or {}).get("method_params"))
        maps, imgs, ids = _aligned_maps(store, model, incl, method, files, faces, frame, views)
        if not maps:
            continue
        by_id = incl.set_index("image_id")
        m_entry: dict = {"signed": signed, "groupings": {}}
        for g in groups:
            for scope in ("group", "cell"):
                keys = [str(by_id.loc[i, g]) if scope == "group" else (str(by_id.loc[i, "label"]), str(by_id.loc[i, g]))
                        for i in ids]
                agg = dict(sorted(aggregate_heatmaps(maps, keys, normalize="max", faces=imgs).items()))
                order = list(agg)
                pairs = [(k, order[0]) for k in order[1:]] if scope == "group" else _cell_pairs(order)
                if scope == "cell" and not pairs:
                    continue
                sheet = render_group_heatmaps(agg, signed=signed, pairs=pairs, cell=140)
                folder.mkdir(parents=True, exist_ok=True)
                name = f"m{model_index}_{_safe(method)}_{_safe(g)}_{scope}.png"
                sheet.save(folder / name, optimize=True)
                np.savez_compressed(folder / name.replace(".png", ".npz"), keys=np.array([str(_key(k)) for k in order]),
                                    n=np.array([agg[k].n for k in order]),
                                    means=np.stack([agg[k].mean for k in order]).astype(np.float32))
                m_entry["groupings"].setdefault(g, {})[scope] = {
                    "file": f"{FACE_DIR}/{name}",
                    "arrays": f"{FACE_DIR}/{name.replace('.png', '.npz')}",
                    "groups": [{"key": _key(k), "n": agg[k].n, "max_abs": _finite(np.nanmax(np.abs(agg[k].mean)))}
                               for k in order],
                    "differences": [{"a": _key(a), "b": _key(b),
                                     "max_abs": _finite(np.nanmax(np.abs(agg[a].mean - agg[b].mean)))}
                                    for a, b in pairs],
                }
        out["heatmaps"][method] = m_entry
    return out


def _key(k: Any) -> str | list[str]:
    return k if isinstance(k, str) else [str(v) for v in k]


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _cell_pairs(keys: list[tuple[str, str]]) -> list[tuple]:
    """Within each label, every group minus the label's first group."""
    pairs = []
    for lab in dict.fromkeys(k[0] for k in keys):
        ks = [k for k in keys if k[0] == lab]
        pairs += [(k, ks[0]) for k in ks[1:]]
    return pairs
