"""Request and response models of the explanation API (``web/routes.py``), declared once.

Requests are validated with them (:func:`biasscope.web.declare.declare`); responses are documented
with them (the handlers build the JSON, ``tests/web/test_openapi.py`` checks real answers against
these schemas). Field names are the wire names; component names in the OpenAPI document are the
class names. Response models allow extra keys: they document what clients may rely on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import BiasscopeError
from ..explainers import list_explainers
from ..jobs import JobStatus
from .declare import Body, Flag, Float01, Methods, Params, Query, int_in

__all__ = [
    "MSG_CONCEPT",
    "ClassesQuery",
    "ClipClassesRequest",
    "DownloadQuery",
    "Error",
    "ExplainRequest",
    "ExplainersQuery",
    "ImageRequest",
    "JobRequest",
    "ModelRequest",
    "OverlayQuery",
    "PredictRequest",
]

MSG_CONCEPT = "'concept' is one string 'NAME = class, class' and replaces 'target'"


class Out(BaseModel):
    """A response document (extra keys allowed: the model lists what clients may rely on)."""

    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------------------ requests
class ImageRequest(Body):
    """Where the image comes from: a multipart 'image' file part, a sample, or an image stored before."""

    sample: str | None = Field(None, description="name of a sample photo (GET /api/samples)")
    image_id: str | None = Field(None, description="id returned by POST /api/images")


def _target(v: Any) -> Any:
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise BiasscopeError(f"'target' must be a class index or class name, got {v!r}")
    return v


class ModelRequest(ImageRequest):
    model: str | None = Field(None, description="model name (GET /api/models); default: the app's default")

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        if v is not None and v != "" and not isinstance(v, str):
            raise BiasscopeError(f"'model' must be a model name, got {v!r}")
        return v or None


class PredictRequest(ModelRequest):
    # the bound depends on the model: the route checks it (field_int's messages)
    top: Any = Field(None, json_schema_extra={"type": "integer", "minimum": 1},
                     description="how many classes (default: the server's TOP_K, at most the model's classes)")


class JobRequest(ModelRequest):
    """An explanation: methods, their parameters and the class (or concept) to explain."""

    methods: Methods = Field(default_factory=list, description="method names (GET /api/explainers), a list or "
                                                               "comma-separated")
    method: str | None = Field(None, deprecated=True, description="one method name; use 'methods'")
    params: Params = Field(default_factory=dict)
    target: int | str | None = Field(None, description="class index or class name to explain; default: the top-1 "
                                                       "class")
    concept: str | None = Field(
        None, description="a concept to explain instead of a class, 'NAME = class, class' (e.g. 'doctor = "
                          "stethoscope, lab coat'): its probability is the summed probability of its classes; "
                          "gradient methods explain the sum of their logits")
    faithfulness: Flag = Field(True, description="compute deletion/insertion AUCs")

    model_config = ConfigDict(json_schema_extra={"required": ["methods"]})

    @model_validator(mode="before")
    @classmethod
    def _one_method(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("methods") in (None, "", []) and data.get("method"):
            data = dict(data) | {"methods": data["method"]}
        return data

    @field_validator("target", mode="before")
    @classmethod
    def _check_target(cls, v: Any) -> Any:
        return _target(v)

    @field_validator("concept", mode="before")
    @classmethod
    def _check_concept(cls, v: Any) -> Any:
        if v in (None, ""):
            return None
        if not isinstance(v, str):
            raise BiasscopeError(MSG_CONCEPT)
        return v

    @model_validator(mode="after")
    def _checked(self) -> JobRequest:
        if not self.methods:
            raise BiasscopeError("no explanation method given; choose from "
                                 + ", ".join(e.name for e in list_explainers()))
        if self.concept and self.target is not None:
            raise BiasscopeError(MSG_CONCEPT)
        return self


class ExplainRequest(JobRequest):
    heatmaps: Flag = Field(False, description="include each heatmap at model resolution in the answer")


class ClipClassesRequest(Body):
    base: str = Field("", validate_default=True, description="a served clip:ARCH model (GET /api/models)")
    classes: Any = Field(None, json_schema_extra={
        "oneOf": [{"type": "array", "items": {"type": "string", "maxLength": 200}, "minItems": 2, "maxItems": 1000,
                   "uniqueItems": True}, {"type": "string", "description": "comma-separated"}]},
        description="2 to 1000 distinct non-empty class names")
    prompts: Any = Field(None, json_schema_extra={"type": "array", "items": {"type": "string", "maxLength": 200},
                                                  "maxItems": 16},
                         description="templates with '{}' for the class, averaged (default: six photo prompts)")

    model_config = ConfigDict(json_schema_extra={"required": ["base", "classes"]})

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, v: Any) -> str:
        if not isinstance(v, str) or not v:
            raise BiasscopeError("'base' must name a served CLIP model (GET /api/models), e.g. clip:ViT-B-32")
        return v


class ClassesQuery(Query):
    q: str = Field("", description="keep class names containing this text (case-insensitive)")
    limit: int_in(1, 100_000) = 100_000  # type: ignore[valid-type]


class ExplainersQuery(Query):
    model: str | None = Field(None, description="also say whether each method is available on this model")


class DownloadQuery(Query):
    download: Flag = Field(False, description="as an attachment")


class OverlayQuery(DownloadQuery):
    alpha: Float01 = Field(None, description="heatmap opacity (default 0.6)")


# ------------------------------------------------------------------------------------ responses
class ErrorBody(BaseModel):
    code: str = Field(examples=["image", "image_too_large", "explainer", "not_found"])
    message: str = Field(description="what went wrong and what to do")
    status: int


class Error(BaseModel):
    """Every refusal of the API: ``{"error": {"code", "message", "status"}}``."""

    error: ErrorBody


class Health(Out):
    status: str
    version: str
    loaded_models: list[str]


class Prediction(Out):
    index: int
    label: str
    probability: float


class Image(Out):
    id: str
    name: str
    width: int
    height: int
    original_width: int
    original_height: int
    url: str


class Model(Out):
    id: str
    name: str
    num_classes: int
    input_size: int
    source: str
    note: str | None = Field(None, description="e.g. why a fallback model is in use")


class ModelStatus(Out):
    name: str
    ready: bool
    loaded: bool
    reason: str
    fix: str
    source: str


class Models(Out):
    default: str
    default_ready: bool
    configured_default: str
    note: str
    fix: str
    models: list[ModelStatus]


class ClipModel(Out):
    name: str
    base: str
    classes: list[str]
    model: Model


class ClassRow(Out):
    index: int
    label: str


class Classes(Out):
    model: str
    count: int = Field(description="classes matching q (before limit)")
    classes: list[ClassRow]


class Param(Out):
    name: str
    type: str = Field(json_schema_extra={"enum": ["int", "float", "str", "bool"]})
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: list[str] | None


class Explainer(Out):
    name: str
    label: str
    signed: bool = Field(description="diverging colour map when true")
    slow: bool = Field(description="always run as jobs (POST /api/explain queues them)")
    description: str
    requires: list[str]
    params: list[Param]
    available: bool | None = Field(None, description="with ?model=: whether it runs on that model")
    reason: str | None = Field(None, description="with ?model=: why not")


class Explainers(Out):
    explainers: list[Explainer]


class Samples(Out):
    samples: list[dict[str, Any]]


class Predicted(Out):
    model: Model
    image: Image
    predictions: list[Prediction]
    seconds: float


class Legend(Out):
    colormap: str
    kind: str = Field(json_schema_extra={"enum": ["diverging", "sequential"]})
    min: float
    max: float
    ticks: list[float]
    stops: list[str]


class MethodOutput(Out):
    target: int
    target_name: str
    target_probability: float | None
    seconds: float
    checks: dict[str, float | None] = Field(description="deletion_auc, insertion_auc; completeness_error for IG")
    params: dict[str, Any]
    legend: Legend
    heatmap_url: str
    overlay_url: str
    npy_url: str
    model_heatmap: list[Any] | None = Field(None, description="heatmap at model resolution (result.json and "
                                                              "heatmaps=true only)")


class MethodResult(Out):
    name: str
    label: str
    signed: bool
    status: JobStatus
    progress: float
    error: str | None
    result: MethodOutput | None = None


class Job(Out):
    id: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    error: str | None
    model: Model
    image: Image
    target: int | None
    faithfulness: bool
    predictions: list[Prediction]
    methods: dict[str, MethodResult]
    created: float
    finished: float | None


class QueuedJob(Job):
    queued_because: str | None = Field(None, description="why it runs as a job, and where to follow it")
