"""The generated OpenAPI document against the code it describes.

- Explainer parameters: a differential test, jsonschema on the generated schema against ``Param.coerce``
  (the one validation the server runs) on values at, inside and outside each declared range.
- Routes: every /api rule of the real app is declared and documented with its verbs and path parameters,
  and the document validates as OpenAPI 3.1 (openapi-spec-validator).
- Requests: handlers receive the validated models, so what they read is what is declared; bad input is
  refused with the uniform error (its message, code and status), strict JSON parsing still guards bodies,
  and the documented numeric bounds of run requests are the enforced ones.
- Responses: real answers validate against the declared response models.
"""

from __future__ import annotations

import io
import math
import re

import jsonschema
import pytest

from biasscope.errors import BiasscopeError
from biasscope.explainers import Param, list_explainers
from biasscope.explainers.registry import ALIASES
from biasscope.web import declare as declare_module
from biasscope.web.declare import spec_of
from biasscope.web.openapi import openapi_document

from .conftest import png, two_colour, wait_job
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


def test_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator

    OpenAPIV31SpecValidator(openapi_document()).validate()


def test_every_api_rule_is_declared_and_documented_with_its_verbs(app) -> None:
    """Walk the real app's URL map: each /api rule has a declared view and appears with exactly its verbs and
    path parameters; the document of a bare app (no state) is the same document."""
    with app.app_context():
        doc = openapi_document()
    assert doc == openapi_document()  # outside an app: the same blueprints, the same document
    verbs: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        assert spec_of(app.view_functions[rule.endpoint]) is not None, f"{rule.rule} is not declared"
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        rule_verbs = {m.lower() for m in rule.methods} - {"head", "options"}
        verbs.setdefault(path, set()).update(rule_verbs)
        for verb in rule_verbs:
            op = doc["paths"][path][verb]
            documented = {p["name"]: p["schema"]["type"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert set(documented) == set(rule.arguments), path
            assert documented == {name: "integer" if f"<int:{name}>" in rule.rule else "string"
                                  for name in rule.arguments}, path
            assert op["responses"] and all(c.isdigit() for c in op["responses"]), path
    assert {p: set(ops) for p, ops in doc["paths"].items()} == verbs
    # one model per name: pydantic qualifies clashing class names with their module path
    assert not [k for k in doc["components"]["schemas"] if "__" in k]
    assert len(verbs) >= 35


def test_method_choices_and_params_in_every_request_come_from_the_registry() -> None:
    doc = openapi_document()
    names = {c.name for c in list_explainers()} | set(ALIASES)
    schemas = doc["components"]["schemas"]
    arrays = [a for a in schemas["MethodNames"]["oneOf"] if a["type"] == "array"]
    assert [set(a["items"]["enum"]) for a in arrays] == [names]
    seen = 0
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for kind, content in op.get("requestBody", {}).get("content", {}).items():
                props = content["schema"]["properties"]
                if "methods" in props:
                    assert props["methods"]["$ref"] == "#/components/schemas/MethodNames", path
                    seen += 1
                if kind == "multipart/form-data":
                    assert props["image"] == {"type": "string", "format": "binary",
                                              "description": "the image file"}, path
                if "params" in props:
                    want = ({"$ref": "#/components/schemas/ExplainerParams"} if kind == "application/json"
                            else {"type": "string", "description": "JSON object, as in the JSON body"})
                    assert {k: v for k, v in props["params"].items() if k != "title"} == want, (path, kind)
    assert seen >= 5  # explain, jobs (JSON and multipart), audits, audit image explain


# (method, path, JSON body or query string, status, what the message says)
_REFUSED = [
    ("post", "/api/explain", {"sample": "x", "methods": ["gradcam"], "faithfulness": "maybe"}, 400,
     "'faithfulness' must be true or false, got 'maybe'"),
    ("post", "/api/explain", {"sample": "x", "methods": 3}, 400,
     "'methods' must be a list of strings or a comma-separated string"),
    ("post", "/api/explain", {"sample": "x"}, 400, "no explanation method given; choose from gradcam"),
    ("post", "/api/jobs", {"sample": "x", "methods": ["no-such-method"]}, 400, "no-such-method"),
    ("post", "/api/jobs", {"sample": "x", "methods": "gradcam", "target": True}, 400,
     "'target' must be a class index or class name, got True"),
    ("post", "/api/jobs", {"sample": "x", "methods": "gradcam", "params": [1]}, 400,
     "'params' must map method names to objects of parameters"),
    ("post", "/api/jobs", {"sample": "x", "methods": "gradcam", "target": 1, "concept": "a = b, c"}, 400,
     "'concept' is one string 'NAME = class, class' and replaces 'target'"),
    ("post", "/api/images", {"image_id": 5}, 400, "'image_id' must be a string, got 5"),
    ("post", "/api/predict", {"sample": "x", "model": 7}, 400, "'model' must be a model name, got 7"),
    ("post", "/api/models/clip-classes", {"classes": ["a", "b"]}, 400, "'base' must name a served CLIP model"),
    ("get", "/api/models/colour/classes", "limit=0", 400, "'limit' must be between 1 and 100000, got 0"),
    ("get", "/api/models/colour/classes", "limit=ten", 400, "'limit' must be an integer, got 'ten'"),
    ("get", "/api/jobs/nope/result.json", "download=perhaps", 400, "'download' must be true or false"),
    ("get", "/api/jobs/nope/methods/gradcam/overlay.png", "alpha=2", 400, "'alpha' must be between 0 and 1, got 2.0"),
    ("get", "/api/jobs/nope/methods/gradcam/overlay.png", "alpha=x", 400,
     "'alpha' must be a number between 0 and 1, got 'x'"),
    ("get", "/api/jobs/nope", "", 404, "nope"),
]


@pytest.mark.parametrize(("verb", "path", "data", "status", "message"), _REFUSED)
def test_validation_refuses_bad_input_with_the_uniform_error(client, verb, path, data, status, message) -> None:
    if verb == "get":
        r = client.get(f"{path}?{data}")
    else:
        r = client.post(path, json=data)
    body = r.get_json()
    assert r.status_code == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}, body
    assert body["error"]["status"] == status and message in body["error"]["message"], body
    if status == 400 and "method" not in message:
        assert body["error"]["code"] == "invalid_request", body
    # the documented error responses of the operation include this status
    doc_path = re.sub(r"/colour/|/nope(?=/|$)", lambda m: "/{name}/" if "colour" in m[0] else "/{job_id}", path)
    doc_path = doc_path.replace("/methods/gradcam/", "/methods/{method}/")
    assert str(status) in openapi_document()["paths"][doc_path][verb]["responses"], doc_path


class _Reads:
    """A validated request model that records which fields the handler reads."""

    def __init__(self, model, log: set[str]) -> None:
        self._model, self._log = model, log

    def __getattr__(self, name: str):
        self._log.add(name)
        return getattr(self._model, name)


@pytest.fixture
def reads(monkeypatch) -> set[str]:
    """The fields every handler reads from its validated body from now on."""
    log: set[str] = set()
    original = declare_module.validate

    def recording(model, data):
        out = original(model, data)
        return _Reads(out, log) if issubclass(model, declare_module.Body) else out

    monkeypatch.setattr(declare_module, "validate", recording)
    return log


#: declared fields the model itself consumes (so no handler reads them): 'method' becomes 'methods'
_CONSUMED_BY_MODEL = {"method"}


def _check_reads(reads: set[str], doc: dict, path: str) -> None:
    documented = set(_documented_schema(doc, path)["properties"]) - _CONSUMED_BY_MODEL
    assert reads == documented, {"read, not declared": sorted(reads - documented),
                                 "declared, never read": sorted(documented - reads)}


@pytest.mark.parametrize("path", ["/api/images", "/api/predict", "/api/explain", "/api/jobs"])
def test_every_declared_body_field_is_read_by_its_handler(client, reads, path) -> None:
    stored = client.post("/api/images", data={"image": (io.BytesIO(png(two_colour((255, 0, 0), (0, 0, 255)))),
                                                        "x.png")}, content_type="multipart/form-data").get_json()
    reads.clear()
    bodies: list[dict] = [{"image_id": stored["id"]}, {"sample": "no-such-sample"}]
    if path != "/api/images":
        bodies = [b | {"methods": ["gradcam"], "params": {"gradcam": {}}, "faithfulness": False} for b in bodies]
        bodies += [bodies[0] | {"target": 1}, bodies[0] | {"concept": "warm = red, green"}]
    for body in bodies:
        r = client.post(path, json=body)
        assert r.status_code in (200, 201, 202, 404), r.get_json()
    _check_reads(reads, openapi_document(), path)


def test_every_declared_field_of_audit_requests_is_read(audit_app, reads) -> None:  # noqa: F811
    from .test_audits import BODY, wait_audit

    client = audit_app.test_client()
    doc = openapi_document()
    assert client.post("/api/manifests/inspect", json={"manifest": BODY["manifest"]}).status_code == 200
    _check_reads(reads, doc, "/api/manifests/inspect")
    reads.clear()
    r = client.post("/api/audits", json=BODY | {"name": "fields", "params": {"gradcam": {}}, "removal": "blur"})
    assert r.status_code == 202, r.get_json()
    _check_reads(reads, doc, "/api/audits")
    assert wait_audit(client, "fields")["status"] == "done"
    reads.clear()
    r = client.post("/api/audits/fields/images/0/explain", json={"model": "biased", "methods": ["gradcam"]})
    assert r.status_code == 202, r.get_json()
    _check_reads(reads, doc, "/api/audits/{run_id}/images/{image_id}/explain")
    reads.clear()
    client.post("/api/audits/fields/resume", json={"batch_size": 8})  # done: nothing left, but it parses
    _check_reads(reads, doc, "/api/audits/{run_id}/resume")
    reads.clear()
    client.post("/api/verify-audits", json={"manifest": "no/such.csv"})  # stops at the manifest
    assert reads == {"manifest"}


def test_strict_json_parsing_still_guards_declared_bodies(client) -> None:
    """Bodies reach the models through jsonio: NaN/Infinity and nesting over 32 levels are refused with a 400."""
    for text, fragment in [('{"sample": "x", "methods": ["gradcam"], "params": {"gradcam": {"a": NaN}}}', "NaN"),
                           ('{"methods": ' + "[" * 40 + "]" * 40 + "}", "more than 32 levels")]:
        r = client.post("/api/explain", data=text, content_type="application/json")
        assert r.status_code == 400 and fragment in r.get_json()["error"]["message"], r.get_json()


def _response_validator(doc: dict, path: str, verb: str, status: int) -> jsonschema.protocols.Validator:
    schema = doc["paths"][path][verb]["responses"][str(status)]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator(schema | {"components": doc["components"]})


def test_answers_conform_to_the_documented_response_schemas(client) -> None:
    """Real answers of the explanation API validate against the response models the document declares."""
    doc = openapi_document()
    stored = client.post("/api/images", data={"image": (io.BytesIO(png(two_colour((255, 0, 0), (0, 0, 255)))),
                                                        "x.png")}, content_type="multipart/form-data")
    body = {"image_id": stored.get_json()["id"], "methods": ["gradcam"], "faithfulness": True}
    answers = [
        ("/api/images", "post", stored),
        ("/api/health", "get", client.get("/api/health")),
        ("/api/models", "get", client.get("/api/models")),
        ("/api/models/{name}/classes", "get", client.get("/api/models/colour/classes?q=e")),
        ("/api/explainers", "get", client.get("/api/explainers?model=colour")),
        ("/api/samples", "get", client.get("/api/samples")),
        ("/api/predict", "post", client.post("/api/predict", json=body | {"top": 2})),
        ("/api/explain", "post", client.post("/api/explain", json=body)),
        ("/api/jobs", "post", client.post("/api/jobs", json=body)),
    ]
    job_id = answers[-1][2].get_json()["id"]
    wait_job(client, job_id)
    answers.append(("/api/jobs/{job_id}", "get", client.get(f"/api/jobs/{job_id}")))
    error = client.get("/api/jobs/nope")
    for path, verb, r in answers:
        assert r.status_code in (200, 201, 202), (path, r.get_json())
        v = _response_validator(doc, path, verb, r.status_code)
        errors = [e.message for e in v.iter_errors(r.get_json())]
        assert not errors, (path, errors[:3])
    assert _response_validator(doc, "/api/jobs/{job_id}", "get", 404).is_valid(error.get_json())
    # a schema that accepts anything would pass the above: a job without its status does not validate
    bad = answers[-1][2].get_json()
    bad.pop("status")
    assert not _response_validator(doc, "/api/jobs/{job_id}", "get", 200).is_valid(bad)


def test_audit_answers_conform_to_the_documented_schemas(audit_app) -> None:  # noqa: F811
    from .test_audits import BODY, wait_audit

    client = audit_app.test_client()
    doc = openapi_document()
    answers = [("/api/manifests/inspect", "post", client.post("/api/manifests/inspect",
                                                               json={"manifest": BODY["manifest"]})),
               ("/api/files", "get", client.get("/api/files?path=synth"))]
    started = client.post("/api/audits", json=BODY | {"name": "conform"})
    answers.append(("/api/audits", "post", started))
    assert wait_audit(client, "conform")["status"] == "done"
    answers += [("/api/audits", "get", client.get("/api/audits")),
                ("/api/audits/{run_id}", "get", client.get("/api/audits/conform")),
                ("/api/audits/{run_id}/images", "get", client.get("/api/audits/conform/images?limit=3")),
                ("/api/audits/{run_id}/images/{image_id}", "get", client.get("/api/audits/conform/images/0")),
                ("/api/audits/{run_id}/images/{image_id}/explain", "post",
                 client.post("/api/audits/conform/images/0/explain", json={"model": "biased"})),
                ("/api/verify-audits", "get", client.get("/api/verify-audits"))]
    for path, verb, r in answers:
        assert r.status_code in (200, 202), (path, r.get_json())
        errors = [e.message for e in _response_validator(doc, path, verb, r.status_code).iter_errors(r.get_json())]
        assert not errors, (path, errors[:3])


def _documented_schema(doc: dict, path: str) -> dict:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


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
