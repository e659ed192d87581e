"""The OpenAPI 3.1 document of the JSON API (served at ``/api/openapi.json``, rendered at ``/docs``).

Explainer parameters are generated from the explainer registry (each :class:`~biasscope.explainers.Param`'s
type, default, range and choices) when the document is built, so they cannot drift from what the
server validates; tests/web/test_openapi.py checks the request fields against what the routes read.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from ..explainers import Explainer, Param, list_explainers
from ..explainers.registry import ALIASES
from ..jobs import JobStatus

__all__ = ["explainer_params_schemas", "openapi_document", "param_schema"]

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def param_schema(p: Param) -> dict[str, Any]:
    """One declared parameter as JSON Schema: its type, default, range and choices."""
    out: dict[str, Any] = {"type": _JSON_TYPES[p.type], "default": p.default}
    if p.min is not None:
        out["minimum"] = p.min
    if p.max is not None:
        out["maximum"] = p.max
    if p.choices is not None:
        out["enum"] = list(p.choices)
    if p.help:
        out["description"] = p.help
    return out


def _params_name(cls: type[Explainer]) -> str:
    return "Params_" + cls.name


def explainer_params_schemas() -> dict[str, Any]:
    """Component schemas: ``Params_<method>`` per registered explainer (unknown parameters are refused,
    as :class:`~biasscope.explainers.Explainer` does) and ``ExplainerParams``, the per-method map that
    requests send (method names or their aliases as keys)."""
    out: dict[str, Any] = {}
    by_name: dict[str, Any] = {}
    for cls in list_explainers():
        out[_params_name(cls)] = {
            "type": "object", "title": f"{cls.label} parameters", "additionalProperties": False,
            "properties": {p.name: param_schema(p) for p in cls.params}}
        by_name[cls.name] = _ref(_params_name(cls))
    by_name |= {alias: by_name[name] for alias, name in ALIASES.items() if name in by_name}
    out["ExplainerParams"] = {
        "type": "object", "properties": by_name, "additionalProperties": False,
        "description": 'per-method parameters, e.g. {"integrated_gradients": {"steps": 32}}; '
                       "numbers may also come as text (form fields); an empty value means the default"}
    return out


def _method_names() -> list[str]:
    names = [cls.name for cls in list_explainers()]
    return names + [a for a, n in ALIASES.items() if n in names]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {
        400: ("Invalid input (bad image, unknown model/method/parameter/class, a parameter outside its declared "
              "range, a JSON body nested over 32 levels or holding NaN/Infinity, a path name over 255 bytes)"),
        401: "Access token missing or wrong",
        404: "Unknown or expired image, job or method",
        409: "Model weights missing on this machine (the message says how to install them)",
        413: "Upload too large (bytes or pixels), or a decompression bomb",
        503: "Too many jobs pending; retry later",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


_IMAGE_FIELDS = {
    "image_id": {"type": "string", "description": "id returned by POST /api/images"},
    "sample": {"type": "string", "description": "name of a sample photo (GET /api/samples)"},
    "model": {"type": "string", "description": "model name (GET /api/models); default: the app's default"},
}
_EXPLAIN_FIELDS = _IMAGE_FIELDS | {
    "methods": {
        "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
        "description": "method names (GET /api/explainers), a list or comma-separated",
    },
    "method": {"type": "string", "deprecated": True, "description": "one method name; use 'methods'"},
    "params": {"$ref": "#/components/schemas/ExplainerParams"},
    "target": {
        "oneOf": [{"type": "integer"}, {"type": "string"}],
        "description": "class index or class name to explain; default: the top-1 class",
    },
    "concept": {
        "type": "string",
        "description": "a concept to explain instead of a class, 'NAME = class, class' (e.g. 'doctor = stethoscope, "
                       "lab coat'): its probability is the summed probability of its classes; gradient methods "
                       "explain the sum of their logits",
    },
    "faithfulness": {"type": "boolean", "default": True, "description": "compute deletion/insertion AUCs"},
}


def _body(fields: dict, required: list[str] | None = None) -> dict:
    obj = {"type": "object", "properties": fields}
    if required:
        obj["required"] = required
    multipart = {"type": "object", "properties": fields | {"image": {"type": "string", "format": "binary"}}}
    if "params" in fields:
        multipart["properties"]["params"] = {"type": "string", "description": "JSON object, as above"}
    return {
        "required": True,
        "content": {"application/json": {"schema": obj}, "multipart/form-data": {"schema": multipart}},
    }


def _path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


_JOB = _path_param("job_id", "job id")
_METHOD = _path_param("method", "method name")
_DOWNLOAD = {"name": "download", "in": "query", "schema": {"type": "boolean"}, "description": "as an attachment"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "string", "examples": ["image", "image_too_large", "explainer", "not_found"]},
                    "message": {"type": "string", "description": "what went wrong and what to do"},
                    "status": {"type": "integer"},
                },
            }
        },
    },
    "Prediction": {
        "type": "object",
        "properties": {"index": {"type": "integer"}, "label": {"type": "string"}, "probability": {"type": "number"}},
    },
    "Image": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "original_width": {"type": "integer"},
            "original_height": {"type": "integer"},
            "url": {"type": "string"},
        },
    },
    "Model": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "num_classes": {"type": "integer"},
            "input_size": {"type": "integer"},
            "source": {"type": "string"},
            "note": {"type": "string", "description": "e.g. why a fallback model is in use"},
        },
    },
    "ModelStatus": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "ready": {"type": "boolean"},
            "loaded": {"type": "boolean"},
            "reason": {"type": "string"},
            "fix": {"type": "string"},
            "source": {"type": "string"},
        },
    },
    "Param": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["int", "float", "str", "bool"]},
            "default": {},
            "help": {"type": "string"},
            "min": {"type": ["number", "null"]},
            "max": {"type": ["number", "null"]},
            "choices": {"type": ["array", "null"], "items": {"type": "string"}},
        },
    },
    "Explainer": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "label": {"type": "string"},
            "signed": {"type": "boolean", "description": "diverging colour map when true"},
            "slow": {"type": "boolean", "description": "always run as jobs (POST /api/explain queues them)"},
            "description": {"type": "string"},
            "params": {"type": "array", "items": _ref("Param")},
            "available": {"type": "boolean"},
            "reason": {"type": "string"},
        },
    },
    "Legend": {
        "type": "object",
        "properties": {
            "colormap": {"type": "string"},
            "kind": {"type": "string", "enum": ["diverging", "sequential"]},
            "min": {"type": "number"},
            "max": {"type": "number"},
            "ticks": {"type": "array", "items": {"type": "number"}},
            "stops": {"type": "array", "items": {"type": "string"}},
        },
    },
    "JobStatus": {
        "type": "string",
        "enum": [str(v) for v in JobStatus],
        "description": "The one status vocabulary of explanation jobs, their methods, audits and verification "
                       "audits: queued -> running -> done | error | cancelled. 'error' comes with an 'error' "
                       "message (also for a run that stopped early, or one whose files cannot be served); an "
                       "audit run that stopped early says 'resumable': true.",
    },
    "MethodResult": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "label": {"type": "string"},
            "signed": {"type": "boolean"},
            "status": _ref("JobStatus"),
            "progress": {"type": "number"},
            "error": {"type": ["string", "null"]},
            "result": {
                "type": "object",
                "properties": {
                    "target": {"type": "integer"},
                    "target_name": {"type": "string"},
                    "target_probability": {"type": "number"},
                    "seconds": {"type": "number"},
                    "checks": {
                        "type": "object",
                        "description": "deletion_auc, insertion_auc; completeness_error for IG",
                        "additionalProperties": {"type": "number"},
                    },
                    "params": {"type": "object"},
                    "legend": _ref("Legend"),
                    "heatmap_url": {"type": "string"},
                    "overlay_url": {"type": "string"},
                    "npy_url": {"type": "string"},
                    "model_heatmap": {
                        "type": "array",
                        "description": "heatmap at model resolution (result.json and heatmaps=true only)",
                    },
                },
            },
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status": _ref("JobStatus"),
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "error": {"type": ["string", "null"]},
            "model": _ref("Model"),
            "image": _ref("Image"),
            "target": {"type": ["integer", "null"]},
            "faithfulness": {"type": "boolean"},
            "predictions": {"type": "array", "items": _ref("Prediction")},
            "methods": {"type": "object", "additionalProperties": _ref("MethodResult")},
            "created": {"type": "number"},
            "finished": {"type": ["number", "null"]},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/api/health": {"get": {"summary": "Liveness and loaded models", "responses": {"200": _json({"type": "object"})}}},
    "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
    "/api/models": {
        "get": {
            "summary": "Models: ready or missing (with the reason and fix), and the default in use and why",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "default": {"type": "string"},
                            "default_ready": {"type": "boolean"},
                            "configured_default": {"type": "string"},
                            "note": {"type": "string"},
                            "fix": {"type": "string"},
                            "models": {"type": "array", "items": _ref("ModelStatus")},
                        },
                    }
                )
            },
        }
    },
    "/api/models/clip-classes": {
        "post": {
            "summary": "A served CLIP model over the classes you give: returns a new model name for predict, "
                       "explain and audits. Only the class text embeddings are computed (the image tower is "
                       "shared); the same base, classes and prompts give the same name; the 8 most recently used "
                       "class sets are kept",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["base", "classes"],
                "properties": {
                    "base": {"type": "string", "description": "a served clip:ARCH model (GET /api/models)"},
                    "classes": {"oneOf": [{"type": "array", "items": {"type": "string", "maxLength": 200},
                                           "minItems": 2, "maxItems": 1000, "uniqueItems": True},
                                          {"type": "string", "description": "comma-separated"}],
                                "description": "2 to 1000 distinct non-empty class names"},
                    "prompts": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 16,
                                "description": "templates with '{}' for the class, averaged (default: six photo "
                                               "prompts)"},
                }}}}},
            "responses": {"200": _json({"type": "object", "properties": {
                "name": {"type": "string"}, "base": {"type": "string"},
                "classes": {"type": "array", "items": {"type": "string"}}, "model": _ref("Model")}})}
            | _errors(400, 409),
        }
    },
    "/api/models/{name}/classes": {
        "get": {
            "summary": "Class names of a model, optionally filtered by a substring",
            "parameters": [
                _path_param("name", "model name"),
                {"name": "q", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            ],
            "responses": {"200": _json({"type": "object"})} | _errors(400, 409),
        }
    },
    "/api/explainers": {
        "get": {
            "summary": "Explanation methods with their declared parameters (forms are built from this)",
            "parameters": [{"name": "model", "in": "query", "schema": {"type": "string"},
                            "description": "also say whether each method is available on this model"}],
            "responses": {"200": _json({"type": "object", "properties": {
                "explainers": {"type": "array", "items": _ref("Explainer")}}})} | _errors(400, 409),
        }
    },
    "/api/samples": {"get": {"summary": "Sample photos", "responses": {"200": _json({"type": "object"})}}},
    "/api/samples/{name}.jpg": {
        "get": {
            "summary": "A sample photo's thumbnail",
            "parameters": [_path_param("name", "sample name")],
            "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}} | _errors(404),
        }
    },
    "/api/images": {
        "post": {
            "summary": "Upload an image (multipart 'image') or pick a sample; returns its id",
            "requestBody": _body({"sample": _IMAGE_FIELDS["sample"],
                                  "image_id": {"type": "string", "description": "an image stored before: its record"}}),
            "responses": {"201": _json(_ref("Image"), "Stored")} | _errors(400, 404, 413),
        }
    },
    "/api/images/{image_id}.png": {
        "get": {
            "summary": "The stored (working) image",
            "parameters": [_path_param("image_id", "image id")],
            "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}} | _errors(404),
        }
    },
    "/api/predict": {
        "post": {
            "summary": "Top-k predictions for one image",
            "requestBody": _body(_IMAGE_FIELDS | {"top": {"type": "integer", "default": 5, "minimum": 1}}),
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "model": _ref("Model"),
                            "image": _ref("Image"),
                            "predictions": {"type": "array", "items": _ref("Prediction")},
                            "seconds": {"type": "number"},
                        },
                    }
                )
            }
            | _errors(400, 404, 409, 413),
        }
    },
    "/api/explain": {
        "post": {
            "summary": "Explain now when the request is cheap; otherwise queue it as a job (202)",
            "description": (
                "The request is answered in the request thread (200, the finished job) only while its "
                "estimated cost is at most the server's MAX_SYNC_COST (default 400) forward passes of the "
                "model: 1 for the prediction, plus each method's cost (a backward pass counts two: Grad-CAM "
                "3, Integrated Gradients 3 x steps + 1, SmoothGrad and Gradient SHAP 3 x n_samples, Guided "
                "Grad-CAM 6), plus 42 per method with faithfulness. A dearer request, or one with a slow "
                "method (LIME, Kernel SHAP, occlusion), is queued exactly like POST /api/jobs and answered "
                "202 with the job, a Location header and 'queued_because'; follow GET /api/jobs/{job_id}, "
                "cancel with POST /api/jobs/{job_id}/cancel. E.g. IG at 1,000 steps is always a job."
            ),
            "requestBody": _body(_EXPLAIN_FIELDS | {"heatmaps": {"type": "boolean", "default": False}}, ["methods"]),
            "responses": {
                "200": _json(_ref("Job"), "Done: the finished job"),
                "202": _json({"allOf": [_ref("Job"), {"type": "object", "properties": {
                    "queued_because": {"type": "string", "description": "why it runs as a job, and where to follow it"}
                }}]}, "Accepted: queued as a background job (too dear, or a slow method)"),
            } | _errors(400, 404, 409, 413, 503),
        }
    },
    "/api/jobs": {
        "post": {
            "summary": "Start a background explanation job; poll GET /api/jobs/{job_id}",
            "requestBody": _body(_EXPLAIN_FIELDS, ["methods"]),
            "responses": {"202": _json(_ref("Job"), "Accepted")} | _errors(400, 404, 409, 413, 503),
        }
    },
    "/api/jobs/{job_id}": {
        "get": {
            "summary": "Job status, progress per method and results so far",
            "parameters": [_JOB],
            "responses": {"200": _json(_ref("Job"))} | _errors(404),
        },
        "delete": {
            "summary": "Cancel a job and discard its results",
            "parameters": [_JOB],
            "responses": {"204": {"description": "Deleted"}} | _errors(404),
        },
    },
    "/api/jobs/{job_id}/cancel": {
        "post": {
            "summary": "Cancel a job (queued: at once; running: at the method's next progress report)",
            "parameters": [_JOB],
            "responses": {"200": _json(_ref("Job"))} | _errors(404),
        }
    },
    "/api/jobs/{job_id}/result.json": {
        "get": {
            "summary": "The full result as JSON, with heatmaps at model resolution",
            "parameters": [_JOB, _DOWNLOAD],
            "responses": {"200": _json(_ref("Job"))} | _errors(404),
        }
    },
    "/api/jobs/{job_id}/methods/{method}/heatmap.png": {
        "get": {
            "summary": "The colour-mapped heatmap (RGBA PNG, transparent where attribution is near zero)",
            "parameters": [_JOB, _METHOD, _DOWNLOAD],
            "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}} | _errors(404),
        }
    },
    "/api/jobs/{job_id}/methods/{method}/overlay.png": {
        "get": {
            "summary": "The heatmap blended over the image",
            "parameters": [
                _JOB,
                _METHOD,
                _DOWNLOAD,
                {"name": "alpha", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 1},
                 "description": "heatmap opacity (default 0.6)"},
            ],
            "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}} | _errors(400, 404),
        }
    },
    "/api/jobs/{job_id}/methods/{method}/heatmap.npy": {
        "get": {
            "summary": "The raw heatmap at image resolution (NumPy .npy, float32)",
            "parameters": [_JOB, _METHOD],
            "responses": {"200": {"description": "NumPy file", "content": {"application/octet-stream": {}}}}
            | _errors(404),
        }
    },
}


_RUN = _path_param("run_id", "audit run id (its folder name in the runs directory)")
_IMG = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "integer"},
        "description": "image id in the run (0-based manifest row)"}
_PNG = {"description": "PNG", "content": {"image/png": {}}}
_AUDIT_ERR = {
    "403": _json(_ref("Error"), "A path or file resolves outside the data root"),
    "409": _json(_ref("Error"), "Audits disabled (no --data-root), run busy, or model weights missing"),
}
_AUDIT_FIELDS = {
    "manifest": {"type": "string", "description": "manifest CSV, relative to the data root"},
    "models": {"type": "array", "items": {"type": "string"}, "description": "model names (GET /api/models)"},
    "groups": {"type": "array", "items": {"type": "string"}, "description": "attribute columns defining groups"},
    "concepts": {"oneOf": [{"type": "string"}, {"type": "object"}],
                 "description": "lines 'LABEL = class, class' or {LABEL: [class, ...]}"},
    "methods": {"type": "array", "items": {"type": "string"}},
    "params": _ref("ExplainerParams"),
    "removal": {"type": "string", "enum": ["fill", "blur", "none"], "description": "how regions are removed"},
    "face_parts": {"type": "boolean", "description": "face-part regions, quality flags, aligned heatmaps"},
    "exclude_flags": {"type": "array", "items": {"type": "string"}, "description": "quality flags to leave out"},
    "stereotypical": {"type": "array", "items": {"type": "string"}, "description": "LABEL:GROUP cells"},
    "name": {"type": "string", "description": "run name (default: manifest name and time)"},
    "top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
    "match": {"type": "string", "enum": ["top1", "topk"]},
    "n_boot": {"type": "integer", "minimum": 100, "maximum": 20000, "default": 1000,
               "description": "bootstrap resamples per interval"},
    "n_perm": {"type": "integer", "minimum": 100, "maximum": 20000, "default": 1000,
               "description": "permutations per test"},
    "min_group_size": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 30},
    "batch_size": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 16},
    "min_effect": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                   "description": "smallest group difference flagged per kind (accuracy, probability, rate, share, "
                                  "removal, faithfulness); kinds not given keep 0.05"},
    "faithfulness": {"type": "boolean", "default": False,
                     "description": "explanation quality (deletion/insertion AUC, IG completeness) per label x group"},
}
_AUDIT_RUN = {"type": "object", "description": "run_info of the run plus 'job' (live status in this server), "
              "'resumable' and 'files_allowed'", "properties": {"status": _ref("JobStatus"),
                                                                "error": {"type": ["string", "null"]}}}


def _get(summary: str, params: list, ok: dict, *codes: int) -> dict:
    return {"get": {"summary": summary, "parameters": params, "responses": {"200": ok} | _errors(*codes) | _AUDIT_ERR}}


_PATHS.update({
    "/api/audits": {
        "get": {"summary": "Audit runs in the runs directory (and whether audits are enabled)",
                "responses": {"200": _json({"type": "object"})}},
        "post": {"summary": "Start an audit on a manifest under the data root; follow GET /api/audits/{run_id}",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "properties": _AUDIT_FIELDS, "required": ["manifest", "models", "groups"]}}}},
                 "responses": {"202": _json(_AUDIT_RUN, "Accepted")} | _errors(400, 404, 503) | _AUDIT_ERR},
    },
    "/api/files": _get("Folders and manifest CSVs in a folder of the data root",
                       [{"name": "path", "in": "query", "schema": {"type": "string"}}],
                       _json({"type": "object"}), 400, 404),
    "/api/manifests/inspect": {"post": {
        "summary": "Validate a manifest and list its labels, attribute columns (with values) and regions",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"manifest": _AUDIT_FIELDS["manifest"]}}}}},
        "responses": {"200": _json({"type": "object"})} | _errors(400, 404) | _AUDIT_ERR}},
    "/api/audits/{run_id}": _get("Status and progress of a run", [_RUN], _json(_AUDIT_RUN), 404),
    "/api/audits/{run_id}/cancel": {"post": {
        "summary": "Cancel a running audit (after its current batch; resumable)", "parameters": [_RUN],
        "responses": {"200": _json(_AUDIT_RUN)} | _errors(404) | _AUDIT_ERR}},
    "/api/audits/{run_id}/resume": {"post": {
        "summary": "Resume a cancelled or interrupted audit where it stopped", "parameters": [_RUN],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"batch_size": _AUDIT_FIELDS["batch_size"]}}}}},
        "responses": {"202": _json(_AUDIT_RUN, "Accepted")} | _errors(400, 404, 503) | _AUDIT_ERR}},
    "/api/audits/{run_id}/metrics.json": _get("The run's metrics.json", [_RUN, _DOWNLOAD], _json({"type": "object"}),
                                              404),
    "/api/audits/{run_id}/per_image.csv": _get("The per-image CSV", [_RUN],
                                               {"description": "CSV", "content": {"text/csv": {}}}, 404),
    "/api/audits/{run_id}/report.html": _get("The self-contained report", [_RUN],
                                             {"description": "HTML", "content": {"text/html": {}}}, 404),
    "/api/audits/{run_id}/faces/{name}": _get("An aligned group-heatmap sheet (face parts on)",
                                              [_RUN, _path_param("name", "file name from metrics.json")], _PNG, 404),
    "/api/audits/{run_id}/images": _get(
        "Per-image rows (the CSV's columns); filter with where.COLUMN=VALUE",
        [_RUN, {"name": "model", "in": "query", "schema": {"type": "string"}},
         {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["telling", "manifest"]}},
         {"name": "limit", "in": "query", "schema": {"type": "integer"}},
         {"name": "offset", "in": "query", "schema": {"type": "integer"}}],
        _json({"type": "object"}), 400, 404),
    "/api/audits/{run_id}/images/{image_id}": _get("One image: manifest row, each model's record, overlay URLs",
                                                   [_RUN, _IMG], _json({"type": "object"}), 404),
    "/api/audits/{run_id}/images/{image_id}/image.png": _get(
        "The image (downscaled to max)", [_RUN, _IMG, {"name": "max", "in": "query", "schema": {"type": "integer"}}],
        _PNG, 404),
    "/api/audits/{run_id}/images/{image_id}/overlay.png": _get(
        "A stored heatmap over the image",
        [_RUN, _IMG, {"name": "model", "in": "query", "schema": {"type": "string"}},
         {"name": "method", "in": "query", "schema": {"type": "string"}},
         {"name": "alpha", "in": "query", "schema": {"type": "number"}}], _PNG, 400, 404),
    "/api/audits/{run_id}/images/{image_id}/regions.png": _get(
        "The image with manifest regions outlined and face parts tinted", [_RUN, _IMG], _PNG, 404),
    "/api/audits/{run_id}/images/{image_id}/explain": {"post": {
        "summary": "Explain the image at full resolution as a background job (poll GET /api/jobs/{job_id})",
        "parameters": [_RUN, _IMG],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "model": {"type": "string"}, "methods": {"type": "array", "items": {"type": "string"}},
            "params": _ref("ExplainerParams"), "target": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "faithfulness": {"type": "boolean"}}}}}},
        "responses": {"202": _json(_ref("Job"), "Accepted")} | _errors(400, 404, 503) | _AUDIT_ERR}},
})

# face verification audits (web/verify.py)
_VERIFY = _path_param("verify_id", "verification run id (its folder in RUNS/.verify)")
_VERIFY_RUN = {"type": "object", "description": "id, status, job (live status in this server), summary; "
               "metrics (metrics.json) once done", "properties": {"status": _ref("JobStatus")}}
_PATHS.update({
    "/api/verify-audits": {
        "get": {"summary": "Face verification runs (dlib-face) in the runs directory",
                "responses": {"200": _json({"type": "object"})} | _AUDIT_ERR},
        "post": {"summary": "Start (or resume, same name) a verification audit on a pairs or identity manifest",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "required": ["manifest"], "properties": {
                         "manifest": {"type": "string"}, "groups": {"type": "array", "items": {"type": "string"}},
                         "far": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.001,
                                 "description": "false accept rate at which the global threshold is chosen"},
                         "explain": {"type": "integer", "minimum": 0, "maximum": 50, "default": 0,
                                     "description": "pairs per subgroup whose match is explained"},
                         "name": {"type": "string"}}}}}},
                 "responses": {"202": _json(_VERIFY_RUN, "Accepted")} | _errors(400, 404, 409, 503) | _AUDIT_ERR},
    },
    "/api/verify-audits/{verify_id}": _get("A verification run: status, summary and metrics", [_VERIFY],
                                           _json(_VERIFY_RUN), 404),
    "/api/verify-audits/{verify_id}/cancel": {"post": {
        "summary": "Cancel a running verification audit (resumable)", "parameters": [_VERIFY],
        "responses": {"200": _json(_VERIFY_RUN)} | _errors(400, 404) | _AUDIT_ERR}},
    "/api/verify-audits/{verify_id}/report.html": _get("The self-contained verification report", [_VERIFY],
                                                       {"description": "HTML", "content": {"text/html": {}}}, 404),
})


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document (a fresh copy)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "biasscope",
            "version": __version__,
            "description": (
                "Predict and explain image classifiers. Every error is "
                '{"error": {"code", "message", "status"}}. When the server is bound to a non-loopback '
                "address, send 'Authorization: Bearer TOKEN'. Responses are strict JSON: an undefined number is "
                "null, never NaN or Infinity. Request bodies larger than the upload limit are refused with 413 "
                "before they are read. Method parameters are checked against their declared type and range "
                "(GET /api/explainers): numbers must be finite, an int parameter takes no fraction, a bool "
                "only true/false, seeds 0 to 4294967295. Jobs and runs report one status vocabulary "
                "(components.schemas.JobStatus): queued, running, done, error, cancelled."
            ),
        },
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS) | explainer_params_schemas(),
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"token": []}],
        "paths": _with_method_names(copy.deepcopy(_PATHS)),
    }


def _with_method_names(paths: dict[str, Any]) -> dict[str, Any]:
    """The registry's method names (and aliases) as the choices of every 'methods' request field."""
    names = _method_names()
    for ops in paths.values():
        for op in ops.values():
            for content in op.get("requestBody", {}).get("content", {}).values():
                props = content["schema"].get("properties", {})
                if "methods" in props:
                    m = props["methods"]
                    for alt in m.get("oneOf", [m]):  # a comma-separated string stays a free string
                        if alt.get("type") == "array":
                            alt["items"]["enum"] = names
                if "method" in props:
                    props["method"]["enum"] = names
    return paths
