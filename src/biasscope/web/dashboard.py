"""The audit dashboard's result sections, rendered on the server by the report's own templates.

``GET /audits/<run_id>/results`` answers an HTML fragment (``templates/audit_results.html``) built from
the macros of ``audit/templates/_sections.html`` and the chart geometry of :func:`biasscope.audit.report.model_view`,
so a chart or table on the page is the one in ``report.html``; ``static/audits.js`` inserts it and adds
the interactive parts (telling images, drill-down, explanations). The templates are autoescaped; face sheets
are linked (``/api/audits/<run_id>/faces/<name>``) where the report inlines them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from functools import cache
from pathlib import Path
from urllib.parse import quote

import jinja2
from flask import Blueprint, Response

from ..audit import METRICS_JSON, run_info
from ..audit.report import comparison_charts, model_view
from ..audit.results import run_results
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


def render_results(run_dir: str | Path, metrics: dict, *, run_id: str, partial: str = "") -> str:
    """The result sections of a run's ``metrics`` as an HTML fragment (face sheets linked through the API);
    ``partial`` is the banner of a run that stopped before its end (empty for a finished run)."""
    base = f"/api/audits/{quote(run_id, safe='')}/faces/"
    views = {key: model_view(run_dir, mm, face_src=lambda p: base + quote(p.name, safe=""))
             for key, mm in metrics["models"].items()}
    return _environment().get_template("audit_results.html").render(
        models=metrics["models"], views=views, words=metric_words, comparison=metrics.get("comparison") or {},
        comparison_charts=comparison_charts(metrics), partial=partial)


#: the last few stopped runs' results so far, by (run folder, images scored, status): computed once each
_PARTIAL: OrderedDict[tuple[str, int, str], dict] = OrderedDict()
_PARTIAL_LOCK = threading.Lock()
_PARTIAL_KEEP = 4


def results_so_far(run_dir: Path, done: int, status: str) -> dict:
    """metrics.json's content over the images a stopped run scored, computed in memory (the run folder is left
    as it is: its files are written when the run is resumed and finishes). Face sheets are left out."""
    key = (str(run_dir), done, status)
    with _PARTIAL_LOCK:
        if key in _PARTIAL:
            _PARTIAL.move_to_end(key)
            return _PARTIAL[key]
    metrics, _ = run_results(run_dir, faces=False)
    with _PARTIAL_LOCK:
        _PARTIAL[key] = metrics
        while len(_PARTIAL) > _PARTIAL_KEEP:
            _PARTIAL.popitem(last=False)
    return metrics


@dashboard_pages.get("/audits/<run_id>/results")
def audit_results(run_id: str):
    """The dashboard's sections of a finished run; of a stopped one, its results so far (computed in memory,
    under a banner); 409 (not finished) while it runs or before its first scored image; 404 if unknown."""
    mgr = audits()
    live = mgr.live(run_id)
    d = mgr.run_dir(run_id, exists=live is None)
    if not (d / DB_NAME).is_file():  # queued in this server: nothing written yet
        raise RunNotFinishedError(f"audit {run_id!r} has not started yet: its results are shown when it finishes")
    served_run(run_id)  # refused (403) when the run audited files outside the data root
    p = d / METRICS_JSON
    if p.is_file():
        html = render_results(d, json.loads(p.read_text(encoding="utf-8")), run_id=run_id)
    else:
        info = run_info(d)
        scored = sum(c.get("ok", 0) for c in info["counts"].values())
        if (live is not None and live.active) or not scored:
            state = "is still running" if live is not None and live.active else "stopped before scoring any image"
            raise RunNotFinishedError(f"audit {run_id!r} has not finished ({info['progress']:.0%} of its images "
                                      f"scored; it {state}): its results are shown when it finishes")
        done = sum(c.get("ok", 0) + c.get("error", 0) for c in info["counts"].values())
        total = info["n_images"] * len(info["models"])
        if done < total:
            banner = (f"Results so far: this run stopped before its end (status {info['status']}) with {done} of "
                      f"{total} model x image results. The numbers below are over those images only and change "
                      "when the run is resumed and finishes; metrics.json, per_image.csv and report.html are "
                      "written then.")
        else:
            banner = (f"Computed from the run's store: this run has all {total} model x image results but no "
                      "metrics.json (it stopped while writing its files). `biasscope audit-report RUN_FOLDER` "
                      "writes metrics.json, per_image.csv and report.html.")
        html = render_results(d, results_so_far(d, done, info["status"]), run_id=run_id, partial=banner)
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp
