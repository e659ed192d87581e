"""The OpenAPI document against the code it describes: explainer parameters are the registry's, and each
request schema lists exactly the fields its route reads.

Parameters: a differential test, jsonschema on the generated schema against ``Param.coerce`` (the one
validation the server runs) on values at, inside and outside each declared range. Request fields: the
JSON parser's objects are replaced by dicts that record every key looked up while real requests run.
"""

from __future__ import annotations

import io
import math

import jsonschema
import pytest
from flask import has_request_context

from biasscope.errors import BiasscopeError
from biasscope.explainers import Param, list_explainers
from biasscope.explainers.registry import ALIASES
from biasscope.web import jsonio
from biasscope.web.openapi import openapi_document

from .conftest import png, two_colour
from .test_audits import _fixed_batch_size, audit_app, data_root  # noqa: F401  (fixtures)


def _validator(doc: dict, name: str) -> jsonschema.protocols.Validator:
    """A validator for a component schema, resolving its $refs within the document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def _coerce_ok(p: Param, value: object) -> bool:
    try:
        p.coerce(value)
    except BiasscopeError:
        return False
    return True


def _probes(p: Param) -> list[object]:
    """Typed JSON values at, inside and just outside the declared range, and of the wrong type."""
    out: list[object] = [p.default, True, "text", [1], {"a": 1}]
    if p.type is int:
        out += [p.min, p.max, p.min - 1, p.max + 1, (p.min + p.max) // 2, p.min + 0.5, 2**70]
    elif p.type is float:
        span = p.max - p.min
        out += [p.min, p.max, p.min - 1e-3 * span - 1e-9, p.max + 1e-3 * span + 1e-9, (p.min + p.max) / 2, 7]
    elif p.type is bool:
        out += [False, 0, 1]
    elif p.type is str:
        out += [*(p.choices or ()), "surely-not-a-choice"]
    return [v for v in out if v is not None]


def test_explainer_parameter_schemas_accept_exactly_what_the_server_accepts() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    n = 0
    for cls in list_explainers():
        comp = schemas[f"Params_{cls.name}"]
        assert list(comp["properties"]) == [p.name for p in cls.params]
        assert comp["additionalProperties"] is False
        v = _validator(doc, f"Params_{cls.name}")
        for p in cls.params:
            s = comp["properties"][p.name]
            assert s["default"] == p.default and s.get("minimum") == p.min and s.get("maximum") == p.max
            assert s.get("enum") == (list(p.choices) if p.choices else None)
            for value in _probes(p):
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                assert v.is_valid({p.name: value}) == _coerce_ok(p, value), (cls.name, p.name, value)
                n += 1
        # an unknown parameter is refused by both
        assert not v.is_valid({"no_such_parameter": 1})
    assert n > 100
    # the per-method map takes every method name and alias, and nothing else
    params = _validator(doc, "ExplainerParams")
    assert set(schemas["ExplainerParams"]["properties"]) == {c.name for c in list_explainers()} | set(ALIASES)
    assert params.is_valid({"ig": {"steps": 8}, "gradcam": {}})
    assert not params.is_valid({"ig": {"steps": 0.5}}) and not params.is_valid({"no_such_method": {}})


def test_method_choices_and_params_in_every_request_come_from_the_registry() -> None:
    doc = openapi_document()
    names = {c.name for c in list_explainers()} | set(ALIASES)
    seen = 0
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for kind, content in op.get("requestBody", {}).get("content", {}).items():
                props = content["schema"]["properties"]
                if "methods" in props:
                    alts = props["methods"].get("oneOf", [props["methods"]])
                    assert [set(a["items"]["enum"]) for a in alts if a["type"] == "array"] == [names], path
                    seen += 1
                if "params" in props and kind == "application/json":
                    assert props["params"] == {"$ref": "#/components/schemas/ExplainerParams"}, path
    assert seen >= 5  # explain, jobs (JSON and multipart), audits, audit image explain


class _Reads(dict):
    """A request payload that records which fields the route looks up."""

    def __init__(self, data: dict, log: set[str]) -> None:
        super().__init__(data)
        self.log = log

    def get(self, key, default=None):
        self.log.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.log.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.log.add(key)
        return super().__contains__(key)


def _documented_schema(doc: dict, path: str) -> dict:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def _documented(doc: dict, path: str) -> set[str]:
    return set(_documented_schema(doc, path)["properties"])


@pytest.fixture
def reads(monkeypatch) -> set[str]:
    """The fields looked up in every JSON request body parsed from now on (all go through jsonio)."""
    log: set[str] = set()
    original = jsonio.loads_json
    def recording(*args, **kwargs):
        data = original(*args, **kwargs)
        # only request bodies: the test client's parsing of responses happens outside a request
        return _Reads(data, log) if isinstance(data, dict) and has_request_context() else data

    monkeypatch.setattr(jsonio, "loads_json", recording)
    return log


def _check(reads: set[str], documented: set[str]) -> None:
    """Every documented field is read, and the route reads no undocumented one."""
    assert reads == documented, {"read, not documented": sorted(reads - documented),
                                 "documented, never read": sorted(documented - reads)}


@pytest.mark.parametrize("path", ["/api/images", "/api/predict", "/api/explain", "/api/jobs"])
def test_request_schema_lists_exactly_the_fields_the_route_reads(client, reads, path) -> None:
    stored = client.post("/api/images", data={"image": (io.BytesIO(png(two_colour((255, 0, 0), (0, 0, 255)))),
                                                        "x.png")}, content_type="multipart/form-data").get_json()
    bodies: list[dict] = [{"image_id": stored["id"]}, {"sample": "no-such-sample"}]
    if path != "/api/images":
        bodies = [b | {"methods": ["gradcam"], "params": {"gradcam": {}}, "faithfulness": False, "top": 2,
                       "heatmaps": False} for b in bodies]
        bodies += [bodies[0] | {"target": 1}, bodies[0] | {"concept": "warm = red, green"}]
    for body in bodies:
        r = client.post(path, json=body)
        assert r.status_code in (200, 201, 202, 400, 404), r.get_json()
    _check(reads, _documented(openapi_document(), path))


def test_audit_request_schemas_list_exactly_the_fields_the_routes_read(audit_app, reads) -> None:  # noqa: F811
    from .test_audits import BODY, wait_audit

    client = audit_app.test_client()
    doc = openapi_document()
    r = client.post("/api/manifests/inspect", json={"manifest": BODY["manifest"]})
    assert r.status_code == 200, r.get_json()
    _check(reads, _documented(doc, "/api/manifests/inspect"))
    reads.clear()
    full = BODY | {"name": "fields", "params": {"gradcam": {}}, "removal": "blur", "face_parts": False,
                   "exclude_flags": [], "top_k": 3, "match": "top1", "batch_size": 8}
    r = client.post("/api/audits", json=full)
    assert r.status_code == 202, r.get_json()
    _check(reads, _documented(doc, "/api/audits"))
    assert wait_audit(client, "fields")["status"] == "done"
    reads.clear()
    r = client.post("/api/audits/fields/images/0/explain",
                    json={"model": "biased", "methods": ["gradcam"], "params": {"gradcam": {}}, "target": 0,
                          "faithfulness": False})
    assert r.status_code == 202, r.get_json()
    _check(reads, _documented(doc, "/api/audits/{run_id}/images/{image_id}/explain"))
    reads.clear()
    client.post("/api/audits/fields/resume", json={"batch_size": 8})  # done: nothing left, but it parses
    _check(reads, _documented(doc, "/api/audits/{run_id}/resume"))


def _outside(s: dict) -> list[float]:
    """Values just outside a documented numeric range."""
    out = []
    if "minimum" in s:
        out.append(s["minimum"] - 1)
    if "maximum" in s:
        out.append(s["maximum"] + 1)
    out += [s[k] for k in ("exclusiveMinimum", "exclusiveMaximum") if k in s]
    return out


@pytest.mark.parametrize("path", ["/api/audits", "/api/verify-audits"])
def test_documented_ranges_of_run_fields_are_enforced(audit_app, path) -> None:  # noqa: F811
    """Each bounded number of a run request: its documented bounds pass, just outside them is a 400 naming it."""
    from .test_audits import BODY

    client = audit_app.test_client()
    props = _documented_schema(openapi_document(), path)["properties"]
    bounded = {k: v for k, v in props.items() if _outside(v)}
    assert set(bounded) >= ({"top_k", "n_boot", "n_perm", "min_group_size", "batch_size"} if path == "/api/audits"
                            else {"far", "explain"})
    body = BODY if path == "/api/audits" else {"manifest": BODY["manifest"]}
    for name, s in bounded.items():
        for bad in _outside(s):
            r = client.post(path, json=body | {"name": f"range-{name}", name: bad})
            assert r.status_code == 400 and f"'{name}'" in r.get_json()["error"]["message"], (name, bad, r.get_json())
        # the documented bounds themselves pass this field's check (the run name, checked later, stops it)
        for ok in (s[k] for k in ("minimum", "maximum") if k in s):
            r = client.post(path, json=body | {"name": "not a valid run name!", name: ok})
            msg = r.get_json()["error"]["message"]
            assert r.status_code == 400 and f"'{name}'" not in msg and "'name'" in msg, (name, ok, msg)
    assert client.get(path).get_json()["runs"] == []  # nothing was started
