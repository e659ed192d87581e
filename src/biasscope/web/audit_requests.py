"""A request to start an audit, parsed and checked before anything runs.

Everything a worker would refuse later (groups, models without weights, methods and their
parameters, labels on each model, stereotypical cells, face parts, the run's name) is refused here
with a 4xx, so a refused audit leaves no run folder behind.
"""

from __future__ import annotations

import math
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
from .jsonio import field_bool, field_int, field_list, method_names, method_params
from .security import RUN_ID_RE, resolve_in_root
from .state import ModelRegistry, NotFoundError

__all__ = ["AuditRequest", "RunBusyError", "load_root_manifest", "parse_audit_request"]

MSG_RUN_NAME = "'name' may use letters, digits, '.', '_' and '-' (at most 100, not starting with '.')"


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


def _ready_models(data: dict[str, Any], models: ModelRegistry) -> list[str]:
    names = field_list(data.get("models"), "models")
    if not names:
        raise BiasscopeError("choose at least one model ('models')")
    names = list(dict.fromkeys(models.check_name(n) for n in names))
    for n in names:
        s = models.status(n)
        if not s["ready"]:
            from ..errors import WeightsMissingError

            raise WeightsMissingError(f"model {n}: {s['reason']}. Fix: {s['fix']}")
    return names


def _config(data: dict[str, Any], groups: list[str]) -> AuditConfig:
    from ..regions import RemovalConfig

    methods = method_names(data.get("methods"))
    params = method_params(data.get("params"))
    concepts_raw = data.get("concepts") or {}
    if isinstance(concepts_raw, str):
        concepts_raw = [ln for ln in concepts_raw.splitlines() if ln.strip()]
    concepts = load_concepts(concepts_raw) if concepts_raw else {}
    removal = str(data.get("removal") or "fill")
    if removal not in ("fill", "blur", "none"):
        raise BiasscopeError("'removal' must be fill, blur or none")
    return AuditConfig(groups=groups, methods=methods, concepts=concepts,
                       top_k=field_int(data.get("top_k"), "top_k", 1, 1000, 5),
                       match="topk" if data.get("match") == "topk" else "top1",
                       method_params={get_explainer(k).name: dict(v) for k, v in params.items()},
                       removal=None if removal == "none" else RemovalConfig(mode=removal),  # type: ignore[arg-type]
                       face_parts=field_bool(data.get("face_parts"), "face_parts"),
                       faithfulness=field_bool(data.get("faithfulness"), "faithfulness"))


def _min_effect(value: Any) -> dict[str, float]:
    """``min_effect``: the smallest group difference flagged, per kind, as {"accuracy": 0.1, ...} (the CLI's
    ``--min-effect KIND=VALUE``); kinds not given keep :data:`~biasscope.audit.metrics.DEFAULT_MIN_EFFECT`."""
    from ..audit.metrics import DEFAULT_MIN_EFFECT

    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise BiasscopeError("'min_effect' must map kinds to numbers, e.g. {\"accuracy\": 0.1}")
    out: dict[str, float] = {}
    for kind, v in value.items():
        if kind not in DEFAULT_MIN_EFFECT:
            raise BiasscopeError(f"'min_effect': unknown kind {kind!r}; choose from {', '.join(DEFAULT_MIN_EFFECT)}")
        if v is None or v == "":
            continue  # a blank form field keeps the default
        try:
            f = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and 0 <= f <= 1):
            raise BiasscopeError(f"'min_effect' of {kind} must be a number between 0 and 1, got {v!r}")
        out[kind] = f
    return out


def _metrics_options(data: dict[str, Any], face_parts: bool) -> dict[str, Any]:
    flags = field_list(data.get("exclude_flags"), "exclude_flags")
    unknown = [f for f in flags if f not in quality_flags()]
    if unknown:
        raise BiasscopeError(f"unknown quality flag(s) {', '.join(unknown)}; choose from {', '.join(quality_flags())}")
    if flags and not face_parts:
        raise BiasscopeError("excluding images by quality flag needs face parts ('face_parts': true)")
    stereo = field_list(data.get("stereotypical"), "stereotypical")
    for s in stereo:
        if ":" not in s:
            raise BiasscopeError(f"stereotypical cell {s!r}: expected LABEL:GROUP, e.g. doctor:male")
    out = {"n_boot": field_int(data.get("n_boot"), "n_boot", 100, 20000, 1000),
           "n_perm": field_int(data.get("n_perm"), "n_perm", 100, 20000, 1000),
           "min_group_size": field_int(data.get("min_group_size"), "min_group_size", 1, 100000, 30),
           "stereotypical": stereo, "exclude_flags": flags}
    min_effect = _min_effect(data.get("min_effect"))
    if min_effect:
        out["min_effect"] = min_effect
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


def _run_name(data: dict[str, Any]) -> str:
    name = str(data.get("name") or "").strip()
    if name:
        if not RUN_ID_RE.match(name):
            raise BiasscopeError(MSG_RUN_NAME)
        return name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(str(data.get("manifest"))).stem).strip("-") or "audit"
    return f"{stem}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def parse_audit_request(data: dict[str, Any], root: Path, run_dir: Callable[[str], Path],
                        models: ModelRegistry) -> AuditRequest:
    """``data`` (POST /api/audits) checked against the data ``root``, the runs (``run_dir(name)``) and
    the app's ``models``; :class:`BiasscopeError` (4xx) for anything that would fail later."""
    groups = field_list(data.get("groups"), "groups")
    if not groups:
        raise BiasscopeError("choose at least one group column ('groups')")
    man = load_root_manifest(root, data.get("manifest"), groups)
    names = _ready_models(data, models)
    cfg = _config(data, groups)
    mopts = _metrics_options(data, cfg.face_parts)
    batch = field_int(data.get("batch_size"), "batch_size", 1, 1024, 16)
    _check_on_models(man, names, cfg, mopts["stereotypical"], models)
    name = _run_name(data)
    d = run_dir(name)
    if d.exists():
        raise RunBusyError(f"a run named {name!r} already exists; choose another name or resume it")
    return AuditRequest(name=name, run_dir=d, manifest=man, models=names, config=cfg, batch_size=batch,
                        metrics_options=mopts)
