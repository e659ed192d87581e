"""Drill-down to one audited image (routes): its record per model, the image, stored heatmap overlays, its
regions, and a full-resolution explanation job. Files are read only under the data root, checked again
at read time (:func:`biasscope.web.audit_manager.image_file`)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, jsonify
from PIL import Image

from ..audit import image_detail
from ..audit.store import RunStore, json_safe
from ..explainers import get_explainer, is_signed, list_explainers
from ..images import load_image
from . import audit_schemas as a
from .audit_manager import audits, files_allowed, image_file, served_run
from .audit_schemas import AUDIT_ERRORS
from .context import state
from .declare import declare
from .drawing import draw_regions
from .responses import accepted, png_response, thumbnail
from .security import MSG_OUTSIDE, PathRefusedError, inside
from .state import NotFoundError

__all__ = ["audit_image_api"]

audit_image_api = Blueprint("audit_image_api", __name__, url_prefix="/api")


@audit_image_api.get("/audits/<run_id>/images/<int:image_id>")
@declare("One image: manifest row, each model's record, overlay URLs", responses={200: a.AuditImage},
         errors=AUDIT_ERRORS)
def audit_image(run_id: str, image_id: int):
    mgr, d = served_run(run_id)
    if RunStore(d).image_row(image_id) is None:
        raise NotFoundError(f"image {image_id} is not in run {run_id!r}")
    detail = image_detail(d, image_id)
    img, methods = detail["image"], list(detail["methods"])
    base = f"/api/audits/{run_id}/images/{image_id}"
    results = {}
    for key, rec in detail["results"].items():
        rec.pop("model", None)
        if rec.get("face"):
            rec["face"] = {k: v for k, v in rec["face"].items() if k != "landmarks"} | {
                "has_landmarks": bool(rec["face"].get("landmarks"))}
        rec["overlays"] = {m: f"{base}/overlay.png?model={key}&method={m}" for m in methods
                           if rec.get("status") == "ok"}
        results[key] = rec
    explainable = [k for k in results if k in state().models.names]
    out = {"run_id": run_id, "image_id": image_id, "path": img["path"], "label": img["label"],
           "attributes": img["attributes"], "regions": img["regions"], "methods": methods, "results": results,
           "files_allowed": files_allowed(mgr, d), "image_url": f"{base}/image.png",
           "regions_url": f"{base}/regions.png", "explain_url": f"{base}/explain", "explainable_models": explainable,
           "explainers": [{"name": c.name, "label": c.label, "slow": c.slow} for c in list_explainers()]}
    return jsonify(json_safe(out))


def _load_run_image(run_id: str, image_id: int) -> tuple[Path, dict, Image.Image]:
    mgr, d = served_run(run_id)
    row, f = image_file(mgr, d, image_id)
    return d, row, load_image(f)


@audit_image_api.get("/audits/<run_id>/images/<int:image_id>/image.png")
@declare("The image (downscaled to max)", query=a.ImagePngQuery, responses={200: "image/png"},
         errors=(400, *AUDIT_ERRORS))
def audit_imagepng_response(run_id: str, image_id: int, query: a.ImagePngQuery):
    _, _, img = _load_run_image(run_id, image_id)
    return png_response(thumbnail(img, query.max))


@audit_image_api.get("/audits/<run_id>/images/<int:image_id>/overlay.png")
@declare("A stored heatmap over the image", query=a.StoredOverlayQuery, responses={200: "image/png"},
         errors=(400, *AUDIT_ERRORS))
def audit_overlay(run_id: str, image_id: int, query: a.StoredOverlayQuery):
    from ..audit.face_audit import heatmap_in_image
    from ..render import render_overlay

    d, _, img = _load_run_image(run_id, image_id)
    model, method = query.model, query.method
    heat = RunStore(d).heatmap(model, image_id, method)
    if heat is None:
        raise NotFoundError(f"no stored {method!r} heatmap of model {model!r} for image {image_id}")
    scored = RunStore(d).result(model, image_id)
    view = scored.view if scored else None
    full = img.size
    img = thumbnail(img, query.max)
    signed = is_signed(method, (RunStore(d).get_meta("config", {}) or {}).get("method_params"))
    h = heatmap_in_image(heat, view, (img.height, img.width), full)
    kw = {} if query.alpha is None else {"alpha": query.alpha}
    return png_response(render_overlay(img, h, signed=signed, **kw))


@audit_image_api.get("/audits/<run_id>/images/<int:image_id>/regions.png")
@declare("The image with manifest regions outlined and face parts tinted", query=a.RegionsQuery,
         responses={200: "image/png"}, errors=(400, *AUDIT_ERRORS))
def audit_regions(run_id: str, image_id: int, query: a.RegionsQuery):
    """The image with its manifest regions outlined and its face parts (if any) tinted."""
    d, row, img = _load_run_image(run_id, image_id)
    mgr = audits()
    faces = [r.face for r in RunStore(d).results(image_id=image_id) if r.face]
    man_root = Path((RunStore(d).get_meta("manifest", {}) or {}).get("root") or "")

    def check_mask(path: Path, text: str) -> None:
        assert mgr.data_root is not None
        if not inside(path.resolve(), mgr.data_root):
            raise PathRefusedError(MSG_OUTSIDE.format(what="mask", path=text))

    out = draw_regions(img, row["regions"], man_root, face=faces[0] if faces else None, check_mask=check_mask)
    return png_response(thumbnail(out, query.max))


@audit_image_api.post("/audits/<run_id>/images/<int:image_id>/explain")
@declare("Explain the image at full resolution as a background job (poll GET /api/jobs/{job_id})",
         body=a.AuditExplainRequest, responses={202: a.Job}, errors=(400, *AUDIT_ERRORS, 503))
def audit_explain(run_id: str, image_id: int, body: a.AuditExplainRequest):
    """Explain one audited image at full resolution as a background explanation job (GET /api/jobs/{id})."""
    d, row, img = _load_run_image(run_id, image_id)
    st = state()
    key = st.models.check_name(body.model)
    adapter = st.models.get(key)
    methods = body.methods
    params = {m: get_explainer(m)(adapter, **dict(body.params.get(m, {}))).config for m in methods}
    target = body.target
    if target is None:  # default: the class the audit explained for this model and image
        scored = RunStore(d).result(key, image_id)  # None when the run did not audit this model
        target = scored.target_index if scored and scored.ok else None
    target_idx = adapter.class_index(target) if target not in (None, "") else None
    rec, work = st.images.put(img, Path(row["path"]).name)
    job = st.jobs.new_job(model=key, adapter=adapter, image=work, image_meta=rec.to_dict(),
                          methods={m: (get_explainer(m).label, get_explainer(m).signed_for(params[m]))
                                   for m in methods},
                          params=params, target=target_idx, faithfulness=body.faithfulness)
    st.jobs.submit(job, adapter)
    return accepted(job.to_dict(), f"/api/jobs/{job.id}")


