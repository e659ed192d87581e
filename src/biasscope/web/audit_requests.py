"""A request to start an audit, checked against the data root, the runs and the models before anything runs
(its fields are declared and validated by :class:`~biasscope.web.audit_schemas.AuditRequestBody`).

Everything a worker would refuse later (groups, models without weights, methods and their
parameters, labels on each model, stereotypical cells, face parts, the run's name) is refused here
with a 4xx, so a refused audit leaves no run folder behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..audit import AuditConfig, Manifest, load_concepts, load_manifest
from ..audit.face_audit import quality_flags
from ..errors import BiasscopeError
from ..explainers import get_explainer
from ..jobs import JobConflictError
from .audit_schemas import MSG_RUN_NAME, AuditRequestBody
from .security import RUN_ID_RE, resolve_in_root
from .state import ModelRegistry, NotFoundError

__all__ = ["AuditRequest", "RunBusyError", "load_root_manifest", "parse_audit_request"]



class RunBusyError(JobConflictError):
    """The run is already queued or running (or a run of that name exists)."""


@dataclass(frozen=True)
class AuditRequest:
    """A checked request: what :meth:`AuditManager.submit` needs."""

    name: str
    run_dir: Path
    manifest: Manifest
    models: list[str]
    config: AuditConfig
    batch_size: int
    metrics_options: dict[str, Any]


def load_root_manifest(root: Path, rel: Any, groups: list[str]) -> Manifest:
    """The manifest at ``rel`` under the data ``root`` (refused outside it; 404 when missing)."""
    path = resolve_in_root(root, rel, "manifest")
    if not path.is_file():
        raise NotFoundError(f"manifest {rel!r} not found under the data root")
    return load_manifest(path, groups=groups)


def _ready_models(body: AuditRequestBody, models: ModelRegistry) -> list[str]:
    if not body.models:
        raise BiasscopeError("choose at least one model ('models')")
    names = list(dict.fromkeys(models.check_name(n) for n in body.models))
    for n in names:
        s = models.status(n)
        if not s["ready"]:
            from ..errors import WeightsMissingError

            raise WeightsMissingError(f"model {n}: {s['reason']}. Fix: {s['fix']}")
    return names


def _config(body: AuditRequestBody, groups: list[str]) -> AuditConfig:
    from ..regions import RemovalConfig

    concepts_raw = body.concepts or {}
    if isinstance(concepts_raw, str):
        concepts_raw = [ln for ln in concepts_raw.splitlines() if ln.strip()]
    concepts = load_concepts(concepts_raw) if concepts_raw else {}
    return AuditConfig(groups=groups, methods=list(body.methods), concepts=concepts, top_k=body.top_k,
                       match=body.match, method_params={get_explainer(k).name: dict(v) for k, v in body.params.items()},
                       removal=None if body.removal == "none" else RemovalConfig(mode=body.removal),
                       face_parts=body.face_parts, faithfulness=body.faithfulness)


def _metrics_options(body: AuditRequestBody, face_parts: bool) -> dict[str, Any]:
    flags = body.exclude_flags
    unknown = [f for f in flags if f not in quality_flags()]
    if unknown:
        raise BiasscopeError(f"unknown quality flag(s) {', '.join(unknown)}; choose from {', '.join(quality_flags())}")
    if flags and not face_parts:
        raise BiasscopeError("excluding images by quality flag needs face parts ('face_parts': true)")
    for s in body.stereotypical:
        if ":" not in s:
            raise BiasscopeError(f"stereotypical cell {s!r}: expected LABEL:GROUP, e.g. doctor:male")
    out = {"n_boot": body.n_boot, "n_perm": body.n_perm, "min_group_size": body.min_group_size,
           "stereotypical": list(body.stereotypical), "exclude_flags": list(flags)}
    if body.min_effect:
        out["min_effect"] = dict(body.min_effect)
    return out


def _check_on_models(man: Manifest, names: list[str], cfg: AuditConfig, stereo: list[str],
                     models: ModelRegistry) -> None:
    """Stereotypical cells, labels and methods checked on each model now, not in the worker (which checks
    again before it creates the run's folder, so a refused run leaves nothing behind)."""
    from ..audit import LabelSpace
    from ..audit.runner import check_stereotypical

    check_stereotypical(man, stereo, None, cfg.groups)
    for n in names:
        adapter = models.get(n)
        LabelSpace.build(adapter, man.labels, cfg.concepts, top_k=cfg.top_k, match=cfg.match)
        for m in cfg.methods:
            get_explainer(m)(adapter, **dict(cfg.method_params.get(m, {})))
    if cfg.face_parts:
        from ..audit.face_audit import check_face_parts

        check_face_parts(man.region_names)


def _run_name(body: AuditRequestBody) -> str:
    if body.name:
        if not RUN_ID_RE.match(body.name):
            raise BiasscopeError(MSG_RUN_NAME)
        return body.name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(str(body.manifest)).stem).strip("-") or "audit"
    return f"{stem}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def parse_audit_request(body: AuditRequestBody, root: Path, run_dir: Callable[[str], Path],
                        models: ModelRegistry) -> AuditRequest:
    """``body`` (POST /api/audits, its fields already validated) checked against the data ``root``, the runs
    (``run_dir(name)``) and the app's ``models``; :class:`BiasscopeError` (4xx) for anything that would fail
    later."""
    groups = list(body.groups)
    if not groups:
        raise BiasscopeError("choose at least one group column ('groups')")
    man = load_root_manifest(root, body.manifest, groups)
    names = _ready_models(body, models)
    cfg = _config(body, groups)
    mopts = _metrics_options(body, cfg.face_parts)
    _check_on_models(man, names, cfg, mopts["stereotypical"], models)
    name = _run_name(body)
    d = run_dir(name)
    if d.exists():
        raise RunBusyError(f"a run named {name!r} already exists; choose another name or resume it")
    return AuditRequest(name=name, run_dir=d, manifest=man, models=names, config=cfg, batch_size=body.batch_size,
                        metrics_options=mopts)
