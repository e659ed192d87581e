"""Request and response models of the audit and face-verification API (``web/audits.py``,
``web/verify.py``), declared once: requests are validated with them, the OpenAPI document is generated
from them. Checks that need the data root, the runs or the models (a manifest's columns, a model's
weights, a run name already taken) stay in :mod:`.audit_requests` and the routes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from ..errors import BiasscopeError
from ..jobs import JobStatus
from .declare import Body, Flag, Float01, Methods, Names, Params, Query, int_in
from .schemas import Job, Out

__all__ = [
    "AUDIT_ERRORS",
    "MAX_PAGE",
    "AuditExplainRequest",
    "AuditImagesQuery",
    "AuditRequestBody",
    "FilesQuery",
    "ImagePngQuery",
    "ManifestRequest",
    "RegionsQuery",
    "ResumeRequest",
    "StoredOverlayQuery",
    "VerifyRequest",
]

#: refusals every audit route may answer: outside the data root, not found, audits disabled or run busy
AUDIT_ERRORS = (403, 404, 409)
#: most per-image rows one GET /api/audits/{run_id}/images answers
MAX_PAGE = 500
MSG_RUN_NAME = "'name' may use letters, digits, '.', '_' and '-' (at most 100, not starting with '.')"
MSG_VERIFY_NAME = "'name' may use letters, digits, '.', '_' and '-' (at most 100)"

Batch = int_in(1, 1024)
Boot = int_in(100, 20000)


class ManifestRequest(Body):
    manifest: Any = Field(None, json_schema_extra={"type": "string"},
                          description="manifest CSV, relative to the data root")
    model_config = ConfigDict(json_schema_extra={"required": ["manifest"]})


class AuditRequestBody(ManifestRequest):
    """POST /api/audits: what to audit and how (checked in full before anything runs)."""

    models: Names = Field(default_factory=list, description="model names (GET /api/models)")
    groups: Names = Field(default_factory=list, description="attribute columns defining groups")
    concepts: Any = Field(None, json_schema_extra={"oneOf": [{"type": "string"}, {"type": "object"}]},
                          description="lines 'LABEL = class, class' or {LABEL: [class, ...]}")
    methods: Methods = Field(default_factory=list, description="explanation methods (none: no heatmaps)")
    params: Params = Field(default_factory=dict)
    removal: Literal["fill", "blur", "none"] = Field("fill", description="how regions are removed")
    face_parts: Flag = Field(False, description="face-part regions, quality flags, aligned heatmaps")
    exclude_flags: Names = Field(default_factory=list, description="quality flags to leave out")
    stereotypical: Names = Field(default_factory=list, description="LABEL:GROUP cells")
    name: str | None = Field(None, description="run name (default: manifest name and time)")
    top_k: int_in(1, 1000) = 5  # type: ignore[valid-type]
    match: Literal["top1", "topk"] = "top1"
    n_boot: Boot = Field(1000, description="bootstrap resamples per interval")  # type: ignore[valid-type]
    n_perm: Boot = Field(1000, description="permutations per test")  # type: ignore[valid-type]
    min_group_size: int_in(1, 100000) = 30  # type: ignore[valid-type]
    batch_size: Batch = 16  # type: ignore[valid-type]
    min_effect: dict[str, float] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": {"type": "number", "minimum": 0,
                                                                          "maximum": 1}},
        description="smallest group difference flagged per kind (accuracy, probability, rate, share, removal, "
                    "faithfulness); kinds not given keep 0.05")
    faithfulness: Flag = Field(False, description="explanation quality (deletion/insertion AUC, IG completeness) "
                                                  "per label x group")

    model_config = ConfigDict(json_schema_extra={"required": ["manifest", "models", "groups"]})

    @field_validator("removal", mode="before")
    @classmethod
    def _removal(cls, v: Any) -> Any:
        if v in (None, ""):
            return "fill"
        if v not in ("fill", "blur", "none"):
            raise BiasscopeError("'removal' must be fill, blur or none")
        return v

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, v: Any) -> str:
        return "topk" if v == "topk" else "top1"

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        return str(v).strip() or None if v is not None else None

    @field_validator("min_effect", mode="before")
    @classmethod
    def _min_effect(cls, value: Any) -> dict[str, float]:
        """The CLI's ``--min-effect KIND=VALUE``: kinds not given keep
        :data:`~biasscope.audit.metrics.DEFAULT_MIN_EFFECT`; a blank value keeps the default."""
        from ..audit.metrics import DEFAULT_MIN_EFFECT

        if value is None or value == "":
            return {}
        if not isinstance(value, dict):
            raise BiasscopeError("'min_effect' must map kinds to numbers, e.g. {\"accuracy\": 0.1}")
        out: dict[str, float] = {}
        for kind, v in value.items():
            if kind not in DEFAULT_MIN_EFFECT:
                raise BiasscopeError(f"'min_effect': unknown kind {kind!r}; choose from "
                                     f"{', '.join(DEFAULT_MIN_EFFECT)}")
            if v is None or v == "":
                continue
            try:
                f = float(v) if not isinstance(v, bool) else math.nan
            except (TypeError, ValueError):
                f = math.nan
            if not (math.isfinite(f) and 0 <= f <= 1):
                raise BiasscopeError(f"'min_effect' of {kind} must be a number between 0 and 1, got {v!r}")
            out[kind] = f
        return out


class ResumeRequest(Body):
    batch_size: Batch = 16  # type: ignore[valid-type]


class AuditExplainRequest(Body):
    model: str = Field("", description="a served model (GET /api/models)")
    methods: Methods = Field(default_factory=lambda: ["gradcam"])
    params: Params = Field(default_factory=dict)
    target: int | str | None = Field(None, description="class index or name; default: the class the audit "
                                                       "explained for this model and image")
    faithfulness: Flag = False

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> str:
        return str(v or "")

    @field_validator("methods", mode="after")
    @classmethod
    def _default_method(cls, v: list[str]) -> list[str]:
        return v or ["gradcam"]

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v: Any) -> Any:
        if v in (None, ""):
            return None
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise BiasscopeError(f"'target' must be a class index or class name, got {v!r}")
        return v


class FilesQuery(Query):
    path: str = Field("", description="folder relative to the data root (default: the root)")


class AuditImagesQuery(Query):
    """Filters are ``where.COLUMN=VALUE`` parameters (any number; see the operation's description)."""

    model: str | None = Field(None, description="one model's rows (default: every model's)")
    order: Literal["telling", "manifest"] = Field("telling", description="telling: misclassified images with the "
                                                                         "lowest p(true) first")
    offset: int_in(0, 10_000_000) = 0  # type: ignore[valid-type]
    limit: int_in(1, MAX_PAGE) = 200  # type: ignore[valid-type]

    model_config = ConfigDict(extra="allow")

    @field_validator("order", mode="before")
    @classmethod
    def _order(cls, v: Any) -> Any:
        if v in (None, ""):
            return "telling"
        if v not in ("telling", "manifest"):
            raise BiasscopeError("'order' must be telling or manifest")
        return v

    def where(self) -> dict[str, str]:
        """The ``where.COLUMN=VALUE`` filters, by column."""
        return {k[6:]: str(v) for k, v in (self.model_extra or {}).items() if k.startswith("where.")}


Side = int_in(16, 4096)


class ImagePngQuery(Query):
    max: Side = Field(768, description="longer side in pixels")  # type: ignore[valid-type]


class RegionsQuery(Query):
    max: Side = Field(512, description="longer side in pixels")  # type: ignore[valid-type]


class StoredOverlayQuery(RegionsQuery):
    model: str = Field("", description="the model whose stored heatmap is drawn")
    method: str = Field("", description="the method whose stored heatmap is drawn")
    alpha: Float01 = Field(None, description="heatmap opacity")


class VerifyRequest(ManifestRequest):
    groups: Names = Field(default_factory=list, description="attribute columns defining subgroups")
    far: float = Field(1e-3, gt=0, lt=1, description="false accept rate at which the global threshold is chosen")
    explain: int_in(0, 50) = Field(0, description="pairs per subgroup whose match is explained")  # type: ignore
    name: str | None = Field(None, description="run name; the name of a stopped run resumes it")

    @field_validator("far", mode="before")
    @classmethod
    def _far(cls, v: Any) -> float:
        if v is None:
            return 1e-3
        try:
            far = float(v)
        except (TypeError, ValueError):
            raise BiasscopeError("'far' must be a number between 0 and 1") from None
        if not 0 < far < 1:
            raise BiasscopeError(f"'far' must be between 0 and 1 (exclusive), got {far}")
        return far


# ------------------------------------------------------------------------------------ responses
class AuditRun(Out):
    """A run: ``run_info`` plus its live job in this server, whether it can be resumed and its files served."""

    id: str
    name: str | None = None
    status: JobStatus
    error: str | None = None
    job: dict[str, Any] | None = None
    progress: float | None = None
    resumable: bool | None = Field(None, description="stopped early (cancelled, failed, server stopped): POST "
                                                     "/api/audits/{run_id}/resume continues it")
    files_allowed: bool | None = None
    has_metrics: bool | None = None


class Audits(Out):
    enabled: bool
    runs: list[AuditRun]
    message: str | None = Field(None, description="why audits are disabled")


class AuditStarted(Out):
    id: str
    status: JobStatus
    job: dict[str, Any]
    url: str | None = None


class Files(Out):
    path: str
    folders: list[dict[str, str]]
    manifests: list[dict[str, Any]]


class ManifestSummary(Out):
    valid: bool
    message: str | None = None
    problems: list[str] | None = None
    n_images: int | None = None
    labels: list[str] | None = None
    attribute_columns: list[str] | None = None
    values: dict[str, list[str]] | None = None
    region_names: list[str] | None = None


class ImagesPage(Out):
    """One page of per-image rows (the per-image CSV's columns), in the order asked for."""

    total: int = Field(description="rows matching the filters, over all pages")
    offset: int
    limit: int
    rows: list[dict[str, Any]]


class AuditImage(Out):
    run_id: str
    image_id: int
    path: str
    label: str
    attributes: dict[str, Any]
    regions: list[Any] | dict[str, Any]
    methods: list[str]
    results: dict[str, dict[str, Any]]
    files_allowed: bool
    image_url: str
    regions_url: str
    explain_url: str
    explainable_models: list[str]
    explainers: list[dict[str, Any]]


class VerifyRun(Out):
    id: str
    status: JobStatus
    job: dict[str, Any] | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = Field(None, description="metrics.json, once done")


class VerifyRuns(Out):
    runs: list[VerifyRun]


__all__ += ["AuditImage", "AuditRun", "AuditStarted", "Audits", "Files", "ImagesPage", "Job", "ManifestSummary",
            "VerifyRun", "VerifyRuns"]
