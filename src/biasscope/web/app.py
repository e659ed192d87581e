"""The Flask app factory: configuration, shared state, access token, errors and security headers.

``create_app()`` works with ``flask --app biasscope.web:create_app run`` and with ``biasscope serve``
(waitress). Every error reaches the client as ``{"error": {"code", "message", "status"}}`` on
``/api`` routes (an HTML page elsewhere); stack traces are logged, never sent.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, redirect, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import BiasscopeError
from .context import WebState, public_message, state
from .jobs import JobManager
from .jsonio import StrictJSONProvider
from .state import ImageStore, ModelRegistry

__all__ = ["DEFAULTS", "WebState", "create_app", "is_loopback", "state"]

log = logging.getLogger("biasscope.web")

TOKEN_COOKIE = "biasscope_token"

DEFAULTS: dict[str, Any] = {
    "HOST": "127.0.0.1",  # where the server is bound; non-loopback requires a token
    "TOKEN": None,  # access token; generated when HOST is not loopback and none is given
    "DEFAULT_MODEL": "resnet18",
    "FALLBACK_MODELS": ("mobilenet_v2",),
    "EXTRA_MODELS": {},  # name -> zero-argument factory returning a ModelAdapter
    "DEVICE": "cpu",
    "PRECISION": "fp32",  # of gradient-free forwards; `serve` passes 'auto' (reduced where checked equal)
    "MAX_UPLOAD_BYTES": 20 * 1024 * 1024,
    "MAX_PIXELS": 40_000_000,
    "WORK_MAX_SIDE": 768,  # uploads are downscaled to this longer side before explaining
    "MAX_IMAGES": 64,
    "IMAGE_TTL_S": 3600.0,
    "JOB_WORKERS": 2,
    "MAX_PENDING_JOBS": 16,
    "MAX_JOBS": 32,
    "JOB_TTL_S": 1800.0,
    "MAX_RESULT_BYTES": 256 * 1024 * 1024,
    "TOP_K": 5,
    # /api/explain answers in the request thread only up to this many estimated forward passes per
    # request (a backward pass counts 2; e.g. IG at 50 steps is about 150 plus 42 for faithfulness);
    # dearer requests, and slow methods, become background jobs (202)
    "MAX_SYNC_COST": 400,
    "DATA_ROOT": None,  # audits read manifests and images only under this folder; None disables audits
    "RUNS_DIR": None,  # audit runs; default DATA_ROOT/.biasscope-runs
    "AUDIT_WORKERS": 1,
    "MAX_PENDING_AUDITS": 4,
}

MSG_TOKEN = (
    "an access token is required: open the URL printed by `biasscope serve` or send 'Authorization: Bearer TOKEN'"
)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _code(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace(" ", "_").replace("'", "").removesuffix("_error")


def error_response(code: str, message: str, status: int) -> Response:
    """The one error format of the API."""
    if request.path.startswith("/api"):
        resp = jsonify({"error": {"code": code, "message": message, "status": status}})
    else:
        resp = Response(render_template("error.html", status=status, message=message), mimetype="text/html")
    resp.status_code = status
    return resp


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the web app. ``config`` overrides :data:`DEFAULTS` (and any Flask setting)."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.json = StrictJSONProvider(app)  # never NaN/Infinity in a response; JSON bodies depth-guarded
    app.config.update(DEFAULTS)
    app.config.update(config or {})
    cfg = app.config
    # the whole request body may hold the file plus a few form fields
    cfg.setdefault("MAX_CONTENT_LENGTH", None)
    cfg["MAX_CONTENT_LENGTH"] = int(cfg["MAX_UPLOAD_BYTES"]) + 64 * 1024
    if not cfg.get("TOKEN") and not is_loopback(str(cfg["HOST"])):
        cfg["TOKEN"] = secrets.token_urlsafe(24)
    st = WebState(
        models=ModelRegistry(
            default=cfg["DEFAULT_MODEL"],
            fallbacks=tuple(cfg["FALLBACK_MODELS"]),
            extra=dict(cfg["EXTRA_MODELS"]),
            device=cfg["DEVICE"],
            precision=cfg["PRECISION"],
        ),
        images=ImageStore(max_items=int(cfg["MAX_IMAGES"]), ttl_s=float(cfg["IMAGE_TTL_S"]),
                          max_side=int(cfg["WORK_MAX_SIDE"])),
        jobs=JobManager(
            workers=int(cfg["JOB_WORKERS"]),
            max_pending=int(cfg["MAX_PENDING_JOBS"]),
            max_jobs=int(cfg["MAX_JOBS"]),
            ttl_s=float(cfg["JOB_TTL_S"]),
            max_result_bytes=int(cfg["MAX_RESULT_BYTES"]),
            top=int(cfg["TOP_K"]),
        ),
    )
    app.extensions["biasscope"] = st

    from .openapi import docs_routes
    from .routes import api, pages

    app.register_blueprint(api)
    app.register_blueprint(pages)
    app.register_blueprint(docs_routes)
    from .audits import install as install_audits

    st.audits = install_audits(app, cfg)
    from .dashboard import dashboard_pages  # the audit dashboard's server-rendered result sections

    app.register_blueprint(dashboard_pages)
    _install_auth(app)
    _install_errors(app)
    _install_headers(app)
    return app


def _install_auth(app: Flask) -> None:
    @app.before_request
    def require_token():
        token = app.config.get("TOKEN")
        if not token:
            return None
        given = request.headers.get("Authorization", "")
        given = given[7:].strip() if given.lower().startswith("bearer ") else ""
        given = given or request.headers.get("X-Biasscope-Token", "") or request.cookies.get(TOKEN_COOKIE, "")
        from_query = request.args.get("token", "")
        ok = bool(given) and hmac.compare_digest(given.encode(), token.encode())
        if not ok and from_query and hmac.compare_digest(from_query.encode(), token.encode()):
            if request.method == "GET" and not request.path.startswith("/api"):
                # trade the URL token for a cookie, and drop it from the address bar
                rest = {k: v for k, v in request.args.items() if k != "token"}
                resp = redirect(request.path + (f"?{urlencode(rest)}" if rest else ""))
                resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
                return resp
            ok = True
        if ok:
            return None
        resp = error_response("unauthorized", MSG_TOKEN, 401)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="biasscope"'
        return resp


def _install_errors(app: Flask) -> None:
    @app.errorhandler(BiasscopeError)
    def biasscope_error(exc: BiasscopeError):
        code = _code(type(exc).__name__)
        return error_response("invalid_request" if code == "biasscope" else code, public_message(str(exc)),
                              int(getattr(exc, "status", 400)))

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError):  # a last guard; JSON bodies are depth-checked when parsed
        log.warning("recursion limit reached on %s %s", request.method, request.path)
        return error_response("invalid_request", "the request is nested too deeply to process", 400)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        mb = app.config["MAX_UPLOAD_BYTES"] / (1024 * 1024)
        return error_response("payload_too_large", f"the upload is larger than the limit of {mb:.3g} MB", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 404:
            message = f"no such page or endpoint: {request.path} (see /api/openapi.json)"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return error_response(_code((exc.name or "error").replace(" ", "")), message, status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("internal", "internal server error; the details are in the server log", 500)


def _install_headers(app: Flask) -> None:
    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        )
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/api") and "Cache-Control" not in resp.headers:
            resp.headers["Cache-Control"] = "no-store"
        return resp
