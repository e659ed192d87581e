"""Routes: the page, the API docs and the JSON API the page itself uses.

Routes only translate requests into core calls (``biasscope.api``, ``render``, the model and
explainer registries). Each API view is declared with its request and response models
(:mod:`.schemas`, :func:`.declare.declare`): it receives the validated request, and the OpenAPI
document is generated from the declarations. Every refusal is a :class:`BiasscopeError` that the app
turns into the one JSON error format.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, render_template, request, send_file
from PIL import Image

from .. import __version__
from ..api import predict
from ..errors import BiasscopeError
from ..explainers import get_explainer, list_explainers
from ..images import load_image
from ..models import ModelAdapter
from . import schemas as s
from .context import public_message, state
from .cost import queue_reason
from .declare import declare
from .jsonio import dumps_strict, field_int
from .samples import load_sample, sample_list
from .state import ImageRecord, NotFoundError

__all__ = ["api", "pages"]

api = Blueprint("api", __name__, url_prefix="/api")
pages = Blueprint("pages", __name__)

MSG_NO_IMAGE = (
    "no image given: upload a file in the multipart field 'image', or give an 'image_id' "
    "from POST /api/images, or a 'sample' name from GET /api/samples"
)


# ---------------------------------------------------------------------------------------- helpers
def _model_key(name: str | None) -> str:
    st = state()
    return st.models.check_name(name or st.models.default_choice().name)


def _model_info(key: str, adapter: ModelAdapter) -> dict:
    choice = state().models.default_choice()
    info = adapter.to_dict() | {"id": key}
    if key == choice.name and choice.note:
        info["note"] = public_message(choice.note)
    return info


def _image(body: s.ImageRequest) -> tuple[ImageRecord, Image.Image]:
    """The request's image: an upload, a sample or a stored image id."""
    st = state()
    cfg = current_app.config
    uploads = request.files.getlist("image")
    if len(uploads) > 1:
        raise BiasscopeError(f"the request has {len(uploads)} 'image' parts; send one image per request")
    upload = uploads[0] if uploads else None
    if upload is not None:
        max_bytes = int(cfg["MAX_UPLOAD_BYTES"])
        raw = upload.stream.read(max_bytes + 1)
        img = load_image(raw, max_pixels=int(cfg["MAX_PIXELS"]), max_bytes=max_bytes)
        name = (upload.filename or "upload").replace("\\", "/").rsplit("/", 1)[-1] or "upload"
        return st.images.put(img, name)
    if body.sample:
        return st.images.put(load_sample(body.sample), body.sample)
    if body.image_id:
        return st.images.load(body.image_id)
    raise BiasscopeError(MSG_NO_IMAGE)


def _params(given: dict[str, dict[str, Any]], methods: list[str], adapter: ModelAdapter) -> dict[str, dict[str, Any]]:
    """Validated, coerced parameters per method (also checks the method runs on this model)."""
    named: dict[str, dict[str, Any]] = {}
    for key, values in given.items():
        name = get_explainer(key).name
        if name not in methods:
            raise BiasscopeError(f"parameters given for {key!r}, which is not among the chosen methods")
        named[name] = dict(values)
    return {m: get_explainer(m)(adapter, **named.get(m, {})).config for m in methods}


def _prepare_job(body: s.JobRequest):
    st = state()
    key = _model_key(body.model)
    adapter = st.models.get(key)
    params = _params(body.params, body.methods, adapter)
    target = None if body.target is None else adapter.class_index(body.target)
    if body.concept:  # "doctor = stethoscope, lab coat": the concept is the target (see ConceptAdapter)
        from ..audit.concepts import concept_adapter, parse_concept

        name, concept_classes = parse_concept(body.concept)
        adapter = concept_adapter(adapter, name, concept_classes)
        target = adapter.concept_index
    rec, img = _image(body)
    adapter.check_image(img)  # e.g. no face for a face model: a 422 now, not a failed job
    classes = {m: get_explainer(m) for m in body.methods}
    job = st.jobs.new_job(
        model=key,
        adapter=adapter,
        image=img,
        image_meta=rec.to_dict(),
        methods={m: (c.label, c.signed_for(params[m])) for m, c in classes.items()},
        params=params,
        target=target,
        faithfulness=body.faithfulness,
    )
    job.model_info = _model_info(key, adapter)
    return job, adapter, classes


def _method_result(job_id: str, method: str):
    job = state().jobs.get(job_id)
    m = job.methods.get(method)
    if m is None:
        raise NotFoundError(f"job {job_id} has no method {method!r}; it ran {', '.join(job.methods)}")
    if m.explanation is None:
        raise NotFoundError(f"{m.label} has no result ({m.status}{': ' + m.error if m.error else ''})")
    return job, m


def _png(data: bytes, filename: str, download: bool) -> Response:
    return send_file(io.BytesIO(data), mimetype="image/png", as_attachment=download, download_name=filename)


# ---------------------------------------------------------------------------------------- pages
@pages.get("/")
def index():
    st = state()
    choice = st.models.default_choice()
    choice = dataclasses.replace(choice, note=public_message(choice.note))
    return render_template("index.html", version=__version__, choice=choice)


# ---------------------------------------------------------------------------------------- API
_IMAGE_ERRORS = (400, 404, 409, 413, 422, 501)


@api.get("/health")
@declare("Liveness and loaded models", responses={200: s.Health})
def health():
    return jsonify({"status": "ok", "version": __version__, "loaded_models": state().models.loaded()})


@api.get("/models")
@declare("Models: ready or missing (with the reason and fix), and the default in use and why",
         responses={200: s.Models})
def models():
    st = state()
    choice = st.models.default_choice()
    rows = [st.models.status(n) for n in st.models.names]
    for r in rows:
        r["reason"] = public_message(r["reason"])
    return jsonify(
        {
            "default": choice.name,
            "default_ready": choice.ready,
            "configured_default": current_app.config["DEFAULT_MODEL"],
            "note": public_message(choice.note),
            "fix": choice.fix,
            "models": rows,
        }
    )


@api.post("/models/clip-classes")
@declare("A served CLIP model over the classes you give: returns a new model name for predict, explain and "
         "audits. Only the class text embeddings are computed (the image tower is shared); the same base, "
         "classes and prompts give the same name; the 8 most recently used class sets are kept",
         body=s.ClipClassesRequest, responses={200: s.ClipModel}, errors=(400, 409))
def clip_classes(body: s.ClipClassesRequest):
    """A served CLIP model over the classes the page typed: a new model name for predict and explain."""
    st = state()
    name = st.models.derive_clip(body.base, body.classes, body.prompts)
    adapter = st.models.get(name)
    return jsonify({"name": name, "base": st.models.status(name)["base"], "classes": adapter.class_names,
                    "model": _model_info(name, adapter)})


@api.get("/models/<name>/classes")
@declare("Class names of a model, optionally filtered by a substring", query=s.ClassesQuery,
         responses={200: s.Classes}, errors=(400, 404, 409))
def model_classes(name: str, query: s.ClassesQuery):
    adapter = state().models.get(name)
    q = query.q.strip().lower()
    rows = [{"index": i, "label": c} for i, c in enumerate(adapter.class_names) if q in c.lower()]
    return jsonify({"model": name, "count": len(rows), "classes": rows[: query.limit]})


@api.get("/explainers")
@declare("Explanation methods with their declared parameters (forms are built from this)",
         query=s.ExplainersQuery, responses={200: s.Explainers}, errors=(400, 409))
def explainers(query: s.ExplainersQuery):
    adapter = state().models.get(query.model) if query.model else None
    rows = []
    for cls in list_explainers():
        row = {
            "name": cls.name,
            "label": cls.label,
            "signed": cls.signed,
            "slow": cls.slow,
            "description": cls.description,
            "requires": sorted(cls.requires),
            "params": [p.to_dict() for p in cls.params],
        }
        if adapter is not None:
            reason = cls.availability(adapter)
            row |= {"available": reason is None, "reason": reason or ""}
        rows.append(row)
    return jsonify({"explainers": rows})


@api.get("/samples")
@declare("Sample photos", responses={200: s.Samples})
def samples():
    return jsonify({"samples": sample_list()})


@api.get("/samples/<name>.jpg")
@declare("A sample photo's thumbnail", responses={200: "image/jpeg"}, errors=(404,))
def sample_image(name: str):
    img = load_sample(name)
    thumb = img.copy()
    thumb.thumbnail((320, 320), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    resp = send_file(io.BytesIO(buf.getvalue()), mimetype="image/jpeg")
    resp.headers["Cache-Control"] = "public, max-age=3600"
    return resp


@api.post("/images")
@declare("Upload an image (multipart 'image') or pick a sample; returns its id", body=s.ImageRequest, form=True,
         responses={201: s.Image}, errors=(400, 404, 413))
def upload_image(body: s.ImageRequest):
    rec, _ = _image(body)
    return jsonify(rec.to_dict()), 201


@api.get("/images/<image_id>.png")
@declare("The stored (working) image", responses={200: "image/png"}, errors=(404,))
def get_image(image_id: str):
    rec = state().images.record(image_id)
    try:
        with open(rec.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NotFoundError(f"image {image_id!r} expired; upload it again") from None
    return _png(data, f"{image_id}.png", False)


@api.post("/predict")
@declare("Top-k predictions for one image", body=s.PredictRequest, form=True, responses={200: s.Predicted},
         errors=_IMAGE_ERRORS)
def predict_route(body: s.PredictRequest):
    key = _model_key(body.model)
    adapter = state().models.get(key)
    top = field_int(body.top, "top", 1, adapter.num_classes, int(current_app.config["TOP_K"]))
    rec, img = _image(body)
    t0 = time.perf_counter()
    preds = predict(adapter, img, top=top)[0]
    return jsonify(
        {
            "model": _model_info(key, adapter),
            "image": rec.to_dict(),
            "predictions": [p.to_dict() for p in preds],
            "seconds": time.perf_counter() - t0,
        }
    )


def _accepted(job, extra: dict | None = None) -> Response:
    resp = jsonify(job.to_dict() | (extra or {}))
    resp.status_code = 202
    resp.headers["Location"] = f"/api/jobs/{job.id}"
    return resp


_EXPLAIN_DOC = (
    "The request is answered in the request thread (200, the finished job) only while its estimated cost is at "
    "most the server's MAX_SYNC_COST (default 400) forward passes of the model: 1 for the prediction, plus each "
    "method's cost (a backward pass counts two: Grad-CAM 3, Integrated Gradients 3 x steps + 1, SmoothGrad and "
    "Gradient SHAP 3 x n_samples, Guided Grad-CAM 6), plus 42 per method with faithfulness. A dearer request, "
    "or one with a slow method (LIME, Kernel SHAP, occlusion), is queued exactly like POST /api/jobs and "
    "answered 202 with the job, a Location header and 'queued_because'; follow GET /api/jobs/{job_id}, cancel "
    "with POST /api/jobs/{job_id}/cancel. E.g. IG at 1,000 steps is always a job.")


@api.post("/explain")
@declare("Explain now when the request is cheap; otherwise queue it as a job (202)", description=_EXPLAIN_DOC,
         body=s.ExplainRequest, form=True, responses={200: s.Job, 202: s.QueuedJob}, errors=(*_IMAGE_ERRORS, 503))
def explain_route(body: s.ExplainRequest):
    """Cheap requests are answered now (200); dear ones (a slow method, or an estimated cost above
    MAX_SYNC_COST) are queued as a job and answered 202 like POST /api/jobs, so no request thread
    is held for long."""
    job, adapter, classes = _prepare_job(body)
    reason = queue_reason(job, adapter, classes)
    if reason is not None:
        state().jobs.submit(job, adapter)
        return _accepted(job, {"queued_because": f"{reason}: follow GET /api/jobs/{job.id}; cancel with "
                                                  f"POST /api/jobs/{job.id}/cancel"})
    state().jobs.run_inline(job, adapter)
    return jsonify(job.to_dict(heatmaps=body.heatmaps))


@api.post("/jobs")
@declare("Start a background explanation job; poll GET /api/jobs/{job_id}", body=s.JobRequest, form=True,
         responses={202: s.Job}, errors=(*_IMAGE_ERRORS, 503))
def create_job(body: s.JobRequest):
    job, adapter, _ = _prepare_job(body)
    state().jobs.submit(job, adapter)
    return _accepted(job)


@api.get("/jobs/<job_id>")
@declare("Job status, progress per method and results so far", responses={200: s.Job}, errors=(404,))
def get_job(job_id: str):
    return jsonify(state().jobs.get(job_id).to_dict())


@api.post("/jobs/<job_id>/cancel")
@declare("Cancel a job (queued: at once; running: at the method's next progress report)",
         responses={200: s.Job}, errors=(404,))
def cancel_job(job_id: str):
    return jsonify(state().jobs.cancel(job_id).to_dict())


@api.delete("/jobs/<job_id>")
@declare("Cancel a job and discard its results", responses={204: None}, errors=(404,))
def delete_job(job_id: str):
    state().jobs.delete(job_id)
    return Response(status=204)


@api.get("/jobs/<job_id>/result.json")
@declare("The full result as JSON, with heatmaps at model resolution", query=s.DownloadQuery,
         responses={200: s.Job}, errors=(400, 404))
def job_result(job_id: str, query: s.DownloadQuery):
    job = state().jobs.get(job_id)
    doc = {"biasscope_version": __version__} | job.to_dict(heatmaps=True)
    body = dumps_strict(doc, indent=1).encode()
    return send_file(io.BytesIO(body), mimetype="application/json", as_attachment=query.download,
                     download_name=f"biasscope-{job.id}.json")


@api.get("/jobs/<job_id>/methods/<method>/heatmap.png")
@declare("The colour-mapped heatmap (RGBA PNG, transparent where attribution is near zero)",
         query=s.DownloadQuery, responses={200: "image/png"}, errors=(400, 404))
def job_heatmap(job_id: str, method: str, query: s.DownloadQuery):
    _, m = _method_result(job_id, method)
    return _png(m.heatmap_png or b"", f"{method}-heatmap.png", query.download)


@api.get("/jobs/<job_id>/methods/<method>/overlay.png")
@declare("The heatmap blended over the image", query=s.OverlayQuery, responses={200: "image/png"},
         errors=(400, 404))
def job_overlay(job_id: str, method: str, query: s.OverlayQuery):
    job, m = _method_result(job_id, method)
    return _png(job.overlay_png(m.name, query.alpha), f"{method}-overlay.png", query.download)


@api.get("/jobs/<job_id>/methods/<method>/heatmap.npy")
@declare("The raw heatmap at image resolution (NumPy .npy, float32)", responses={200: "application/octet-stream"},
         errors=(404,))
def job_heatmap_npy(job_id: str, method: str):
    _, m = _method_result(job_id, method)
    buf = io.BytesIO()
    np.save(buf, m.explanation.heatmap.astype(np.float32))
    return send_file(io.BytesIO(buf.getvalue()), mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{method}-heatmap.npy")
