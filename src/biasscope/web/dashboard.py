"""The audit dashboard's result sections, rendered on the server by the report's own templates.

``GET /audits/<run_id>/results`` answers an HTML fragment (``templates/audit_results.html``) built from
the macros of ``audit/templates/_sections.html`` and the chart geometry of :func:`biasscope.audit.report.model_view`,
so a chart or table on the page is the one in ``report.html``; ``static/audits.js`` inserts it and adds
the interactive parts (telling images, drill-down, explanations). The templates are autoescaped; face sheets
are linked (``/api/audits/<run_id>/faces/<name>``) where the report inlines them.
"""

from __future__ import annotations

import json
import sqlite3
from functools import cache
from pathlib import Path
from urllib.parse import quote

import jinja2
from flask import Blueprint, Response

from ..audit import METRICS_JSON, run_info
from ..audit.report import comparison_charts, model_view
from ..audit.store import DB_NAME
from ..audit.words import metric_words
from ..errors import BiasscopeError
from ..formatting import template_environment
from .audit_manager import audits, served_run

__all__ = ["RunNotFinishedError", "dashboard_pages", "render_results"]

dashboard_pages = Blueprint("dashboard_pages", __name__)


class RunNotFinishedError(BiasscopeError):
    """The run has no metrics yet: it is queued, running, or stopped before its end."""

    status = 409


@cache
def _environment() -> jinja2.Environment:
    """The report's environment (filters, autoescape) that also finds the web fragments."""
    base = template_environment()
    return base.overlay(loader=jinja2.ChoiceLoader([base.loader,
                                                    jinja2.PackageLoader("biasscope", "web/templates")]))


def render_results(run_dir: str | Path, metrics: dict, *, run_id: str) -> str:
    """The result sections of a run's ``metrics`` as an HTML fragment (face sheets linked through the API)."""
    base = f"/api/audits/{quote(run_id, safe='')}/faces/"
    views = {key: model_view(run_dir, mm, face_src=lambda p: base + quote(p.name, safe=""))
             for key, mm in metrics["models"].items()}
    return _environment().get_template("audit_results.html").render(
        models=metrics["models"], views=views, words=metric_words, comparison=metrics.get("comparison") or {},
        comparison_charts=comparison_charts(metrics))


@dashboard_pages.get("/audits/<run_id>/results")
def audit_results(run_id: str):
    """The dashboard's sections of a run with metrics; 409 (not finished) while it has none, 404 if unknown."""
    mgr = audits()
    live = mgr.live(run_id)
    d = mgr.run_dir(run_id, exists=live is None)
    if not (d / DB_NAME).is_file():  # queued in this server: nothing written yet
        raise RunNotFinishedError(f"audit {run_id!r} has not started yet: its results are shown when it finishes")
    served_run(run_id)  # refused (403) when the run audited files outside the data root
    p = d / METRICS_JSON
    if not p.is_file():
        running = live is not None and live.active
        try:
            done = f"{run_info(d)['progress']:.0%} of its images scored; "
        except sqlite3.OperationalError:  # a run just started: its tables are being created
            done = ""
        state = "is still running" if running else "stopped before it finished; resume it to finish"
        raise RunNotFinishedError(f"audit {run_id!r} has not finished ({done}it {state}): "
                                  "its results are shown when it finishes")
    html = render_results(d, json.loads(p.read_text(encoding="utf-8")), run_id=run_id)
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp
