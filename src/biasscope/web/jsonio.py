"""JSON in and out of the web app, in one place.

In: every JSON request body (and the JSON text of a form field such as ``params``) goes through
:func:`loads_json`, which refuses bodies nested deeper than :data:`MAX_JSON_DEPTH` levels (a
``[`` x 100,000 body made the decoder raise ``RecursionError``) and the non-standard constants
``NaN``/``Infinity`` with a 400. Out: :class:`StrictJSONProvider` never writes ``NaN`` or
``Infinity`` (invalid JSON that browsers refuse): a non-finite float becomes ``null``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import request
from flask.json.provider import DefaultJSONProvider

from ..audit.store import json_safe
from ..errors import BiasscopeError
from ..explainers import get_explainer

__all__ = [
    "MAX_JSON_DEPTH",
    "MSG_JSON_DEPTH",
    "StrictJSONProvider",
    "dumps_strict",
    "field_bool",
    "field_int",
    "field_list",
    "json_object_body",
    "loads_json",
    "method_names",
    "method_params",
    "request_fields",
]

log = logging.getLogger("biasscope.web")

#: Deepest nesting of arrays/objects a request may send (the API's documents need 3).
MAX_JSON_DEPTH = 32
MSG_JSON_DEPTH = "{what} nests arrays/objects more than {limit} levels deep; send a flatter document"
MSG_JSON_INVALID = "{what} must be a JSON object, but it is not valid JSON: {detail}"
MSG_JSON_OBJECT = "the request body must be a JSON object"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number or null")


def _depth(obj: Any) -> int:
    """Nesting depth of arrays/objects in ``obj``, walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, d)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((c, d + 1) for c in children if isinstance(c, dict | list))
    return deepest


def loads_json(text: str | bytes, what: str = "the request body") -> Any:
    """Parse JSON text from a client; :class:`BiasscopeError` (400) for invalid, non-standard or too-deep input."""
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BiasscopeError(MSG_JSON_DEPTH.format(what=what, limit=MAX_JSON_DEPTH)) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BiasscopeError(MSG_JSON_INVALID.format(what=what, detail=str(exc)[:200])) from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise BiasscopeError(MSG_JSON_DEPTH.format(what=what, limit=MAX_JSON_DEPTH))
    return obj


def json_object_body() -> dict[str, Any]:
    """The current request's JSON body, which must be an object."""
    data = loads_json(request.get_data(cache=True))
    if not isinstance(data, dict):
        raise BiasscopeError(MSG_JSON_OBJECT)
    return data


def request_fields() -> dict[str, Any]:
    """The request's fields, from a JSON object or a (multipart) form; empty when it sends neither.

    A form's repeated ``methods`` become a list and its ``params`` field is JSON text (parsed here)."""
    if request.mimetype == "application/json":
        return json_object_body()
    data: dict[str, Any] = {k: v for k, v in request.form.items()}
    if "methods" in request.form and len(request.form.getlist("methods")) > 1:
        data["methods"] = request.form.getlist("methods")
    if isinstance(data.get("params"), str):
        text = data["params"]
        data["params"] = loads_json(text, "'params'") if text.strip() else {}
        if not isinstance(data["params"], dict):
            raise BiasscopeError("'params' must be a JSON object such as {\"lime\": {\"num_samples\": 500}}")
    return data


def field_bool(value: Any, name: str, default: bool = False) -> bool:
    """A request field as a bool (true/false, 1/0, yes/no, on/off); ``default`` when absent or empty."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise BiasscopeError(f"'{name}' must be true or false, got {value!r}")


def field_int(value: Any, name: str, lo: int, hi: int, default: int) -> int:
    """A request field as an integer in ``[lo, hi]``; ``default`` when absent or empty."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BiasscopeError(f"'{name}' must be an integer, got {value!r}")
    try:
        v = value if isinstance(value, int) else int(value.strip())
    except ValueError:
        raise BiasscopeError(f"'{name}' must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise BiasscopeError(f"'{name}' must be between {lo} and {hi}, got {v}")
    return v


def field_list(value: Any, name: str) -> list[str]:
    """A request field as a list of non-empty strings (a JSON list or a comma-separated string)."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise BiasscopeError(f"'{name}' must be a list of strings or a comma-separated string")
    return [v.strip() for v in items if v.strip()]


def method_names(value: Any, default: list[str] | None = None) -> list[str]:
    """Explainer names (a list or comma-separated), canonical and without repeats; ``default`` when none."""
    names: list[str] = []
    for m in field_list(value, "methods") or list(default or []):
        name = get_explainer(m).name
        if name not in names:
            names.append(name)
    return names


def method_params(value: Any) -> dict[str, dict[str, Any]]:
    """The ``params`` field: method name -> object of parameters (empty when absent)."""
    params = value or {}
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise BiasscopeError("'params' must map method names to objects of parameters")
    return params


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN/Infinity: non-finite floats become ``null`` (a value that
    is undefined, e.g. a rate over an empty group), numpy scalars become Python numbers."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except (ValueError, TypeError):  # a non-finite float or a numpy scalar somewhere: clean a copy
        return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with :func:`dumps_strict` (every ``jsonify`` of the app goes through it)."""

    sort_keys = False  # keep documents in their natural order

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return dumps_strict(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_json(s)
