"""Routes: the page, the API docs and the JSON API the page itself uses.

Routes only translate requests into core calls (``biasscope.api``, ``render``, the model and
explainer registries) and validate inputs; every refusal is a :class:`BiasscopeError` that the
app turns into the one JSON error format.
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
from .app import public_message, state
from .jsonio import dumps_strict, field_bool, field_int, method_names, method_params, request_fields
from .openapi import openapi_document
from .samples import load_sample, sample_list
from .state import ImageRecord, NotFoundError

__all__ = ["api", "pages"]

api = Blueprint("api", __name__, url_prefix="/api")
pages = Blueprint("pages", __name__)

#: deletion and insertion curves: 2 x (20 + 1) forward passes per map (evaluation.deletion_insertion)
FAITHFULNESS_FORWARDS = 42

MSG_NO_IMAGE = (
    "no image given: upload a file in the multipart field 'image', or give an 'image_id' "
    "from POST /api/images, or a 'sample' name from GET /api/samples"
)


# ---------------------------------------------------------------------------------------- helpers
def _model_key(data: dict[str, Any]) -> str:
    st = state()
    name = data.get("model") or st.models.default_choice().name
    if not isinstance(name, str):
        raise BiasscopeError(f"'model' must be a model name, got {name!r}")
    return st.models.check_name(name)


def _model_info(key: str, adapter: ModelAdapter) -> dict:
    choice = state().models.default_choice()
    info = adapter.to_dict() | {"id": key}
    if key == choice.name and choice.note:
        info["note"] = public_message(choice.note)
    return info


def _image(data: dict[str, Any]) -> tuple[ImageRecord, Image.Image]:
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
    if data.get("sample"):
        name = str(data["sample"])
        return st.images.put(load_sample(name), name)
    if data.get("image_id"):
        return st.images.load(str(data["image_id"]))
    raise BiasscopeError(MSG_NO_IMAGE)


def _methods(data: dict[str, Any]) -> list[str]:
    raw = data.get("methods", data.get("method"))
    if raw is None or raw == "" or raw == []:
        raise BiasscopeError("no explanation method given; choose from " + ", ".join(e.name for e in list_explainers()))
    out = method_names(raw)
    if not out:
        raise BiasscopeError("no explanation method given")
    return out


def _params(data: dict[str, Any], methods: list[str], adapter: ModelAdapter) -> dict[str, dict[str, Any]]:
    """Validated, coerced parameters per method (also checks the method runs on this model)."""
    raw = method_params(data.get("params"))
    given: dict[str, dict[str, Any]] = {}
    for key, values in raw.items():
        name = get_explainer(key).name
        if name not in methods:
            raise BiasscopeError(f"parameters given for {key!r}, which is not among the chosen methods")
        given[name] = dict(values)
    return {m: get_explainer(m)(adapter, **given.get(m, {})).config for m in methods}


def _target(data: dict[str, Any], adapter: ModelAdapter) -> int | None:
    t = data.get("target")
    if t is None or t == "":
        return None
    if isinstance(t, bool) or not isinstance(t, int | str):
        raise BiasscopeError(f"'target' must be a class index or class name, got {t!r}")
    return adapter.class_index(t)


def _prepare_job(data: dict[str, Any]):
    st = state()
    key = _model_key(data)
    methods = _methods(data)
    adapter = st.models.get(key)
    params = _params(data, methods, adapter)
    target = _target(data, adapter)
    if data.get("concept"):  # "doctor = stethoscope, lab coat": the concept is the target (see ConceptAdapter)
        from ..audit.concepts import concept_adapter, parse_concept

        if not isinstance(data["concept"], str) or data.get("target") not in (None, ""):
            raise BiasscopeError("'concept' is one string 'NAME = class, class' and replaces 'target'")
        name, concept_classes = parse_concept(data["concept"])
        adapter = concept_adapter(adapter, name, concept_classes)
        target = adapter.concept_index
    faith = field_bool(data.get("faithfulness"), "faithfulness", True)
    rec, img = _image(data)
    adapter.check_image(img)  # e.g. no face for a face model: a 422 now, not a failed job
    classes = {m: get_explainer(m) for m in methods}
    job = st.jobs.new_job(
        model=key,
        adapter=adapter,
        image=img,
        image_meta=rec.to_dict(),
        methods={m: (c.label, c.signed_for(params[m])) for m, c in classes.items()},
        params=params,
        target=target,
        faithfulness=faith,
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


@pages.get("/docs")
def docs():
    return render_template("docs.html", doc=openapi_document(), version=__version__)


# ---------------------------------------------------------------------------------------- API
@api.get("/health")
def health():
    return jsonify({"status": "ok", "version": __version__, "loaded_models": state().models.loaded()})


@api.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


@api.get("/models")
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
def clip_classes():
    """A served CLIP model over the classes the page typed: a new model name for predict and explain."""
    data = request_fields()
    base = data.get("base")
    if not isinstance(base, str) or not base:
        raise BiasscopeError("'base' must name a served CLIP model (GET /api/models), e.g. clip:ViT-B-32")
    st = state()
    name = st.models.derive_clip(base, data.get("classes"), data.get("prompts"))
    adapter = st.models.get(name)
    return jsonify({"name": name, "base": st.models.status(name)["base"], "classes": adapter.class_names,
                    "model": _model_info(name, adapter)})


@api.get("/models/<name>/classes")
def model_classes(name: str):
    adapter = state().models.get(name)
    q = request.args.get("q", "").strip().lower()
    limit = field_int(request.args.get("limit"), "limit", 1, 100_000, 100_000)
    rows = [{"index": i, "label": c} for i, c in enumerate(adapter.class_names) if q in c.lower()]
    return jsonify({"model": name, "count": len(rows), "classes": rows[:limit]})


@api.get("/explainers")
def explainers():
    model = request.args.get("model")
    adapter = state().models.get(model) if model else None
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
def samples():
    return jsonify({"samples": sample_list()})


@api.get("/samples/<name>.jpg")
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
def upload_image():
    rec, _ = _image(request_fields())
    return jsonify(rec.to_dict()), 201


@api.get("/images/<image_id>.png")
def get_image(image_id: str):
    rec = state().images.record(image_id)
    try:
        with open(rec.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NotFoundError(f"image {image_id!r} expired; upload it again") from None
    return _png(data, f"{image_id}.png", False)


@api.post("/predict")
def predict_route():
    data = request_fields()
    key = _model_key(data)
    adapter = state().models.get(key)
    top = field_int(data.get("top"), "top", 1, adapter.num_classes, int(current_app.config["TOP_K"]))
    rec, img = _image(data)
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


def estimated_cost(job, adapter: ModelAdapter, classes: dict) -> float:
    """A job's estimated work in forward passes of its model: the prediction, each method's own
    estimate (:meth:`Explainer.cost`) and, with faithfulness, each map's deletion and insertion curves."""
    total = 1.0
    for name, cls in classes.items():
        total += cls.cost(job.params[name], adapter.input_size)
        if job.faithfulness:
            total += FAITHFULNESS_FORWARDS
    return total


def _queue_reason(job, adapter: ModelAdapter, classes: dict) -> str | None:
    """Why this request must run as a background job, or None when it is cheap enough to answer now."""
    slow = [c.label for c in classes.values() if c.slow]
    if slow:
        return f"{', '.join(slow)} {'is' if len(slow) == 1 else 'are'} slow"
    cost, bound = estimated_cost(job, adapter, classes), float(current_app.config["MAX_SYNC_COST"])
    if cost > bound:
        return f"the estimated cost ({cost:,.0f} forward passes) is above this server's bound of {bound:,.0f}"
    return None


def _accepted(job, extra: dict | None = None) -> Response:
    resp = jsonify(job.to_dict() | (extra or {}))
    resp.status_code = 202
    resp.headers["Location"] = f"/api/jobs/{job.id}"
    return resp


@api.post("/explain")
def explain_route():
    """Cheap requests are answered now (200); dear ones (a slow method, or an estimated cost above
    MAX_SYNC_COST) are queued as a job and answered 202 like POST /api/jobs, so no request thread
    is held for long."""
    data = request_fields()
    heatmaps = field_bool(data.get("heatmaps"), "heatmaps", False)
    job, adapter, classes = _prepare_job(data)
    reason = _queue_reason(job, adapter, classes)
    if reason is not None:
        state().jobs.submit(job, adapter)
        return _accepted(job, {"queued_because": f"{reason}: follow GET /api/jobs/{job.id}; cancel with "
                                                  f"POST /api/jobs/{job.id}/cancel"})
    state().jobs.run_inline(job, adapter)
    return jsonify(job.to_dict(heatmaps=heatmaps))


@api.post("/jobs")
def create_job():
    job, adapter, _ = _prepare_job(request_fields())
    state().jobs.submit(job, adapter)
    return _accepted(job)


@api.get("/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(state().jobs.get(job_id).to_dict())


@api.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    return jsonify(state().jobs.cancel(job_id).to_dict())


@api.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    state().jobs.delete(job_id)
    return Response(status=204)


@api.get("/jobs/<job_id>/result.json")
def job_result(job_id: str):
    job = state().jobs.get(job_id)
    doc = {"biasscope_version": __version__} | job.to_dict(heatmaps=True)
    body = dumps_strict(doc, indent=1).encode()
    download = field_bool(request.args.get("download"), "download", False)
    return send_file(io.BytesIO(body), mimetype="application/json", as_attachment=download,
                     download_name=f"biasscope-{job.id}.json")


@api.get("/jobs/<job_id>/methods/<method>/heatmap.png")
def job_heatmap(job_id: str, method: str):
    _, m = _method_result(job_id, method)
    download = field_bool(request.args.get("download"), "download", False)
    return _png(m.heatmap_png or b"", f"{method}-heatmap.png", download)


@api.get("/jobs/<job_id>/methods/<method>/overlay.png")
def job_overlay(job_id: str, method: str):
    job, m = _method_result(job_id, method)
    download = field_bool(request.args.get("download"), "download", False)
    alpha_raw = request.args.get("alpha")
    alpha = None
    if alpha_raw not in (None, ""):
        try:
            alpha = float(alpha_raw)
        except ValueError:
            raise BiasscopeError(f"'alpha' must be a number between 0 and 1, got {alpha_raw!r}") from None
        if not 0.0 <= alpha <= 1.0:
            raise BiasscopeError(f"'alpha' must be between 0 and 1, got {alpha}")
    return _png(job.overlay_png(m.name, alpha), f"{method}-overlay.png", download)


@api.get("/jobs/<job_id>/methods/<method>/heatmap.npy")
def job_heatmap_npy(job_id: str, method: str):
    _, m = _method_result(job_id, method)
    buf = io.BytesIO()
    np.save(buf, m.explanation.heatmap.astype(np.float32))
    return send_file(io.BytesIO(buf.getvalue()), mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{method}-heatmap.npy")
