"""Routes declared once: each API view says which pydantic models it reads and answers, and this layer
validates requests with them, turns every refusal into the app's one error format and records the
declaration for the OpenAPI generator (:mod:`biasscope.web.openapi`).

Why an in-house layer and not spectree or flask-openapi3 (both on PyPI, both pydantic-based, evaluated
against Flask 3 blueprints, offline use, our error shapes, strict JSON and multipart uploads):

- flask-openapi3 replaces ``Flask`` and ``Blueprint`` with its ``OpenAPI``/``APIBlueprint`` classes and
  injects request models by parameter name, with ``body`` (JSON) and ``form`` as *separate*
  declarations; its refusals are 422 with pydantic's error list unless an app-wide
  ``validation_error_callback`` rewrites them, and it serves its own documentation UI (turned off with
  ``doc_ui=False``, leaving the document generation).
- spectree keeps Flask's classes but answers 422 with pydantic's list (``ctx, loc, msg, type``) unless
  a ``before``/``after`` hook or status override is set, declares ``json`` and ``form`` bodies apart,
  registers ``/apidoc/redoc`` and ``/apidoc/swagger`` pages whose scripts come from a CDN.
- Our routes need one body model accepted either as a JSON object or as multipart form fields (the page
  sends the file with repeated ``methods`` and ``params`` as JSON text; API clients send JSON), parsed
  by :mod:`.jsonio` (depth <= 32, NaN/Infinity refused), today's messages (``'top_k' must be between 1
  and 1000, got 0``) with their statuses and error codes (a ``BiasscopeError`` subclass decides both),
  registry-derived components (``ExplainerParams``, ``MethodNames``) plugged into the document, and the
  app's own offline ``/docs``. With either library we would write the error conversion and the
  form/JSON merging anyway and add a dependency with its own release cycle; the rest (record the
  models, validate, walk ``app.url_map``, ``models_json_schema``) is a few hundred lines here, on plain
  Flask 3 blueprints.

Field validators reuse :mod:`.jsonio`'s parsers, which raise :class:`~biasscope.errors.BiasscopeError`
with the API's messages; pydantic lets such (non-``ValueError``) exceptions through unchanged, so
their status and error code stay. Pydantic's own refusals (a wrong type) become
:class:`InvalidRequestError` naming the field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from flask import request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticUseDefault

from ..errors import BiasscopeError
from .jsonio import field_bool, field_int, field_list, method_names, method_params, request_fields

__all__ = [
    "COMPONENT",
    "Body",
    "Flag",
    "Float01",
    "InvalidRequestError",
    "Methods",
    "Names",
    "Params",
    "Query",
    "RouteSpec",
    "declare",
    "int_in",
    "spec_of",
    "validate",
]

#: marker key in a field's JSON Schema: "replace me by a $ref to this component" (filled by the generator)
COMPONENT = "x-component"


class InvalidRequestError(BiasscopeError):
    """A request field has the wrong type (error code ``invalid_request``, status 400)."""


class Body(BaseModel):
    """A request body (JSON object or form fields): unknown fields are ignored, as they always were."""

    model_config = ConfigDict(extra="ignore")


class Query(BaseModel):
    """A query string; ``token`` (the access token) and other unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------------------------ field types
def _empty(v: Any) -> bool:
    return v is None or v == ""


def _flag(v: Any, info: ValidationInfo) -> bool:
    if _empty(v):
        raise PydanticUseDefault()
    return field_bool(v, str(info.field_name))


#: true/false (also 1/0, yes/no, on/off from forms); empty means the field's default
Flag = Annotated[bool, BeforeValidator(_flag)]


def int_in(lo: int, hi: int) -> Any:
    """An integer in ``[lo, hi]`` (also as text from a form or query); empty means the field's default."""

    def check(v: Any, info: ValidationInfo) -> int:
        if _empty(v):
            raise PydanticUseDefault()
        return field_int(v, str(info.field_name), lo, hi, lo)

    return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(check)]


def _alpha(v: Any, info: ValidationInfo) -> float | None:
    if _empty(v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise BiasscopeError(f"'{info.field_name}' must be a number between 0 and 1, got {v!r}") from None
    if not 0.0 <= f <= 1.0:
        raise BiasscopeError(f"'{info.field_name}' must be between 0 and 1, got {f}")
    return f


#: a number in [0, 1] (heatmap opacity); empty means none
Float01 = Annotated[Annotated[float, Field(ge=0, le=1)] | None, BeforeValidator(_alpha)]


def _names(v: Any, info: ValidationInfo) -> list[str]:
    return field_list(v, str(info.field_name))


_LIST_OR_CSV = {"oneOf": [{"type": "array", "items": {"type": "string"}},
                          {"type": "string", "description": "comma-separated"}]}
#: a list of strings, or one comma-separated string
Names = Annotated[list[str], BeforeValidator(_names), WithJsonSchema(_LIST_OR_CSV)]
#: explainer names or aliases (list or comma-separated), canonical and without repeats
Methods = Annotated[list[str], BeforeValidator(lambda v: method_names(v)), WithJsonSchema({COMPONENT: "MethodNames"})]
#: method name -> object of that method's parameters (checked against the registry by the explainer)
Params = Annotated[dict[str, dict[str, Any]], BeforeValidator(lambda v: dict(method_params(v))),
                   WithJsonSchema({COMPONENT: "ExplainerParams"})]


# ------------------------------------------------------------------------------------ declarations
@dataclass(frozen=True)
class RouteSpec:
    """What one view declares: its request models, its responses and its refusals."""

    summary: str
    description: str = ""
    body: type[Body] | None = None
    form: bool = False  # the body may also come as multipart/form-data with an 'image' file part
    body_required: bool = True
    query: type[Query] | None = None
    responses: dict[int, Any] = field(default_factory=dict)  # status -> model, media type, or None
    errors: tuple[int, ...] = ()


def _messages(exc: ValidationError) -> str:
    """Pydantic's first complaint as one of our messages, naming the field."""
    e = exc.errors(include_url=False)[0]
    name = ".".join(str(p) for p in e["loc"]) or "the request"
    kind = e["type"]
    wants = {"string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
             "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
             "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "a list",
             "dict_type": "an object", "model_type": "an object", "finite_number": "a finite number"}
    if kind == "missing":
        return f"'{name}' is required"
    if kind in wants:
        return f"'{name}' must be {wants[kind]}, got {e.get('input')!r}"
    return f"'{name}': {e['msg']}"


def validate(model: type[BaseModel], data: Any) -> Any:
    """``data`` as ``model``; :class:`BiasscopeError` (our messages and statuses) when refused."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(_messages(exc)) from None


def declare(summary: str, *, description: str = "", body: type[Body] | None = None, form: bool = False,
            body_required: bool = True, query: type[Query] | None = None,
            responses: dict[int, Any] | None = None, errors: tuple[int, ...] = ()) -> Callable:
    """Declare a view: ``body`` (a JSON object or form fields, as :func:`~.jsonio.request_fields` reads them;
    ``form`` documents the multipart form with its ``image`` file part too) and ``query`` are validated
    before the view runs and passed to it as keyword arguments ``body=`` and ``query=``;
    ``responses`` maps statuses to a response model, a media type (``"image/png"``) or ``None``
    (no content); ``errors`` are the statuses of the uniform error the view may answer."""
    spec = RouteSpec(summary=summary, description=description, body=body, form=form, body_required=body_required,
                     query=query, responses=dict(responses or {200: None}), errors=tuple(errors))

    def wrap(view: Callable) -> Callable:
        @functools.wraps(view)
        def run(*args: Any, **kwargs: Any) -> Any:
            if spec.query is not None:
                kwargs["query"] = validate(spec.query, request.args.to_dict(flat=True))
            if spec.body is not None:
                kwargs["body"] = validate(spec.body, request_fields())
            return view(*args, **kwargs)

        run.__api_spec__ = spec  # type: ignore[attr-defined]
        return run

    return wrap


def spec_of(view: Callable) -> RouteSpec | None:
    """The declaration of a view function, or ``None`` for an undeclared one."""
    return getattr(view, "__api_spec__", None)
