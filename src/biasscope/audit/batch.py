"""Score one batch of manifest rows with one model: the per-image work of an audit.

:func:`score_batch` is the one function the engines call (locally or on Ray workers). It loads the
images and their region masks (face parts too), predicts, explains with every method (the first CAM
shares the prediction's forward pass), measures each region's attribution share and the effect of
removing it, and returns one :class:`~.values.ImageResult` per image (its heatmaps attached). It
imports nothing from the runner or the engines.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..api import Predicted, predict_and_explain
from ..errors import BiasscopeError, ImageError
from ..explainers import Explanation
from ..models.adapter import ModelAdapter
from ..regions.masks import region_mask
from ..regions.removal import region_removal_effects
from ..regions.shares import attribution_share
from .concepts import LabelSpace
from .config import QUALITY_CHECKS, AuditConfig
from .manifest import ManifestRow
from .values import ImageResult

__all__ = ["method_agreement", "score_batch"]


@dataclass
class _Loaded:
    """A row whose image loaded and passed the model's checks, with its region masks."""

    row: ManifestRow
    image: Image.Image
    masks: dict[str, np.ndarray]
    face: dict | None


@dataclass
class _Explained:
    """What the explanation methods found for one image."""

    shares: dict
    quality: dict
    agreement: dict
    heatmaps: dict[str, np.ndarray]


def score_batch(
    adapter: ModelAdapter, space: LabelSpace, cfg: AuditConfig, batch: Sequence[ManifestRow]
) -> list[ImageResult]:
    """The results of ``batch`` ordered by image id (a row that cannot be read is an error result),
    each with its methods' heatmaps downsampled to ``cfg.heatmap_size``."""
    t0 = time.perf_counter()
    loaded, results = _load_rows(adapter, cfg, batch)
    if not loaded:
        return results
    probs_t, targets, exps = _predict_and_explain(adapter, space, cfg, loaded)
    probs = probs_t.double().numpy()
    evals = space.evaluate(probs)
    explained = [_explained(item, e, cfg) for item, e in zip(loaded, exps)]
    removal = _removal(adapter, space, cfg, loaded, evals)
    per_image = (time.perf_counter() - t0) / len(loaded)
    for i, (item, ev) in enumerate(zip(loaded, evals)):
        results.append(_result(adapter, cfg, item, ev, targets[i], explained[i], removal[i], per_image))
    results.sort(key=lambda r: r.image_id)
    return results


def _load_rows(adapter: ModelAdapter, cfg: AuditConfig,
               batch: Sequence[ManifestRow]) -> tuple[list[_Loaded], list[ImageResult]]:
    """Load each row's image and region masks (and face parts); a row that fails becomes an error result."""
    from ..images import load_image

    loaded: list[_Loaded] = []
    errors: list[ImageResult] = []
    for row in batch:
        try:
            img = load_image(row.file)
            adapter.check_image(img)  # e.g. a face model and a photo without a face: this row's error
            size = (img.height, img.width)
            named = {name: region_mask(spec, size) for name, spec in row.regions.items()}
            face = None
            if cfg.face_parts:
                from .face_audit import face_parts_for_image

                named, face = face_parts_for_image(img, named)
        except (ImageError, BiasscopeError, OSError) as exc:
            errors.append(ImageResult.failed(row.image_id, row.path, str(exc)))
            continue
        loaded.append(_Loaded(row, img, named, face))
    return loaded, errors


def _predict_and_explain(adapter: ModelAdapter, space: LabelSpace, cfg: AuditConfig,
                         loaded: Sequence[_Loaded]) -> Predicted:
    """Probabilities, the class explained per image and every method's explanations: the explained class is
    the predicted one, or the likeliest class of the image's label (``cfg.explain_target``). A first
    method that predicts in its own pass (a CAM) shares the prediction's forward pass
    (:func:`~biasscope.api.predict_and_explain`)."""
    label_classes = [list(space.classes[item.row.label]) for item in loaded]

    def select(probs: torch.Tensor, start: int) -> list[int]:
        """The class explained for each image of a chunk starting at image ``start``."""
        p = probs.double().numpy()
        if cfg.explain_target == "predicted":
            return [int(np.argsort(-q, kind="stable")[0]) for q in p]  # the top-1 of space.evaluate
        out = []
        for j, q in enumerate(p):
            cls = label_classes[start + j]
            out.append(int(cls[int(np.argmax(q[cls]))]))
        return out

    return predict_and_explain(adapter, [item.image for item in loaded], cfg.methods, select=select,
                               params=cfg.method_params, faithfulness=cfg.faithfulness)


def _explained(item: _Loaded, exps: Mapping[str, Explanation], cfg: AuditConfig) -> _Explained:
    """What the methods found for one image: region shares, quality checks, method agreement, heatmaps."""
    found = _Explained(shares={}, quality={}, heatmaps={},
                       agreement=method_agreement({m: ex.model_heatmap for m, ex in exps.items()}))
    for method, ex in exps.items():
        found.quality[method] = {k: float(v) for k, v in ex.checks.items() if k in QUALITY_CHECKS}
        found.shares[method] = {n: attribution_share(ex.heatmap, m).to_dict() for n, m in item.masks.items()}
        # the model's own map (a face chip's map is placed back with the record's "view")
        src = ex.model_heatmap if ex.model_heatmap is not None else ex.heatmap
        found.heatmaps[method] = _downsample(np.asarray(src), cfg.heatmap_size)
    return found


def _removal(adapter: ModelAdapter, space: LabelSpace, cfg: AuditConfig, loaded: Sequence[_Loaded],
             evals: Sequence[dict]) -> list[dict]:
    """Per image, the effect of removing each region on the true label's score (``{}`` when off)."""
    masks = [item.masks for item in loaded]
    if cfg.removal is None or not any(masks):
        return [{} for _ in loaded]
    rows = [item.row for item in loaded]
    return region_removal_effects(
        adapter, [item.image for item in loaded], masks, [space.classes[r.label] for r in rows],
        config=cfg.removal, base_scores=[ev["scores"][r.label] for r, ev in zip(rows, evals)],
    )


def _result(adapter: ModelAdapter, cfg: AuditConfig, item: _Loaded, ev: dict, target: int, found: _Explained,
            removal: dict, seconds: float) -> ImageResult:
    """The result of one scored image."""
    names = adapter.class_names
    row, img = item.row, item.image
    counted = ev["predicted"]
    return ImageResult(
        image_id=row.image_id,
        path=row.path,
        width=img.width,
        height=img.height,
        top=[{"index": c, "class": names[c], "probability": q} for c, q in zip(ev["top"], ev["top_probs"])],
        pred_index=ev["top"][0],
        pred_class=names[ev["top"][0]],
        pred_prob=ev["top_probs"][0],
        pred_label=ev["pred_label"],
        p_true=ev["scores"][row.label],
        correct=bool(counted[row.label]),
        correct_top1=bool(ev["hit_top1"][row.label]),
        correct_topk=bool(ev["hit_topk"][row.label]),
        scores=ev["scores"],
        predicted={k: bool(v) for k, v in counted.items()},
        target_index=target,
        target_class=names[target],
        shares=found.shares,
        quality=found.quality,
        agreement=found.agreement,
        removal=removal,
        seconds=seconds,
        face=item.face,
        with_face=cfg.face_parts,
        view=None if adapter.whole_image else _view(adapter, img),
        with_view=not adapter.whole_image,
        heatmaps=found.heatmaps,
    )


def _downsample(m: np.ndarray, size: int) -> np.ndarray:
    h, w = m.shape
    if max(h, w) <= size:
        return m.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    oh, ow = max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))
    return F.adaptive_avg_pool2d(t, (oh, ow))[0, 0].numpy()


def _view(adapter: ModelAdapter, img) -> dict | None:
    """Where the model's input lies in the image, for a model that does not see the whole image
    (a face chip: its landmarks, size and padding; see :func:`.face_audit.heatmap_in_image`)."""
    locate = getattr(adapter, "locate", None)
    if locate is None:
        return None
    _, lm = locate(img)
    return {"kind": "face_chip", "size": int(adapter.input_size), "padding": float(getattr(adapter, "padding", 0.2)),
            "landmarks": np.asarray(lm, dtype=float).tolist()}


def method_agreement(maps: Mapping[str, np.ndarray | None]) -> dict[str, float]:
    """Spearman rank correlation between every pair of methods' maps of one image (``"a~b"`` keys).

    Maps are compared at model resolution; a constant map has no ranking (the pair is left out).
    """
    from scipy.stats import rankdata

    names = [m for m, v in maps.items() if v is not None]
    ranks = {}
    for m in names:
        v = np.asarray(maps[m], dtype=np.float64).ravel()
        if np.ptp(v) > 0:
            r = rankdata(v)
            ranks[m] = (r - r.mean()) / np.linalg.norm(r - r.mean())
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a in ranks and b in ranks and ranks[a].shape == ranks[b].shape:
                out[f"{a}~{b}"] = float(ranks[a] @ ranks[b])
    return out
