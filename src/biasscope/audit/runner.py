"""Run an audit: every image of a manifest through one or more models, batched and resumable.

Per image and model the runner records the top-k classes, the score of every task label (a model
class or a concept), whether the prediction is correct, the positive attribution share of every
region under each explanation method, and the effect of removing each region on the true label's
score. Results go to SQLite batch by batch (:mod:`.store`); a restarted run skips what is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..engines import Engine, get_engine
from ..errors import BiasscopeError, CancelledError
from ..jobs import JobStatus
from ..models.adapter import ModelAdapter
from .batch import method_agreement
from .concepts import LabelSpace
from .config import AuditConfig, ModelSource
from .manifest import Manifest
from .store import RunStore

__all__ = [
    "AuditConfig",
    "AuditProgress",
    "CancelFlag",
    "ModelSource",
    "RunResult",
    "check_stereotypical",
    "method_agreement",
    "run_audit",
]

MSG_OTHER_AUDIT = (
    "{run_dir} already holds a different audit ({what} differs); choose a new output folder "
    "or pass overwrite=True / --overwrite"
)

CancelFlag = threading.Event | Callable[[], bool]


@dataclass(frozen=True)
class AuditProgress:
    """A progress report, sent after every committed batch."""

    model: str
    model_index: int
    n_models: int
    done: int  # images of this model stored (including earlier sessions)
    total: int  # images in the manifest
    errors: int  # images of this model recorded as errors
    done_all: int  # over all models
    total_all: int
    elapsed_s: float  # this session
    eta_s: float | None  # remaining, from this session's rate
    stage: str = "running"  # 'loading', 'running', 'model-done'

    @property
    def fraction(self) -> float:
        return self.done_all / self.total_all if self.total_all else 1.0


@dataclass
class RunResult:
    """Where a finished run is and what it found."""

    run_dir: Path
    models: list[str]
    counts: dict[str, dict[str, int]]
    metrics: dict | None = None


def _cancelled(flag: CancelFlag | None) -> bool:
    if flag is None:
        return False
    if isinstance(flag, threading.Event):
        return flag.is_set()
    return bool(flag())


def weights_fingerprint(adapter: ModelAdapter) -> str:
    """SHA-1 over the model's parameters and buffers (detects a changed model on resume)."""
    h = hashlib.sha1()
    for k, v in adapter.model.state_dict().items():
        h.update(k.encode())
        if torch.is_tensor(v):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_existing(store: RunStore, manifest: Manifest, config: AuditConfig) -> bool:
    """Whether ``store`` already holds this audit (resume); raise if it holds a different one. Writes nothing."""
    if not store.exists:
        return False
    old_fp = store.get_meta("manifest_fingerprint")
    if old_fp is not None and old_fp != manifest.fingerprint:
        raise BiasscopeError(MSG_OTHER_AUDIT.format(run_dir=store.run_dir, what="the manifest"))
    old_cfg = store.get_meta("config")
    if old_cfg is not None and old_cfg != _normal(config.to_dict()):
        diff = sorted(k for k in old_cfg if old_cfg.get(k) != _normal(config.to_dict()).get(k))
        raise BiasscopeError(MSG_OTHER_AUDIT.format(run_dir=store.run_dir, what=", ".join(diff) or "config"))
    return old_cfg is not None


def _prepare(store: RunStore, manifest: Manifest, config: AuditConfig, overwrite: bool) -> None:
    if overwrite and store.exists:
        for suffix in ("", "-wal", "-shm"):
            p = store.path.with_name(store.path.name + suffix)
            if p.exists():
                p.unlink()
    if _check_existing(store, manifest, config):
        return
    store.init()
    store.write_images([
        {"image_id": r.image_id, "line": r.line, "path": r.path, "file": str(r.file), "label": r.label,
         "attributes": r.attributes, "regions": {n: s.to_text(manifest.root) for n, s in r.regions.items()}}
        for r in manifest.rows
    ])
    store.set_meta("manifest_fingerprint", manifest.fingerprint)
    store.set_meta("manifest", {"path": str(manifest.path) if manifest.path else None, "root": str(manifest.root),
                                "attribute_columns": manifest.attribute_columns,
                                "region_names": manifest.region_names, "labels": manifest.labels})
    store.set_meta("config", _normal(config.to_dict()))
    store.set_meta("created", datetime.now(UTC).isoformat(timespec="seconds"))


def _check_metrics_options(manifest: Manifest, cfg: AuditConfig, options: Mapping[str, Any]) -> None:
    """Refuse metrics options that would only fail when the metrics are computed, after every image."""
    from .face_audit import MSG_FLAGS_NEED_FACES, MSG_UNKNOWN_FLAG, quality_flags
    from .metrics import MetricsOptions

    try:
        MetricsOptions(**dict(options))
    except TypeError as exc:
        raise BiasscopeError(f"invalid metrics options: {exc}") from None
    check_stereotypical(manifest, options.get("stereotypical") or [], options.get("bias_group"), cfg.groups)
    flags = [f.strip() for f in options.get("exclude_flags") or [] if f and f.strip()]
    unknown = [f for f in flags if f not in quality_flags()]
    if unknown:
        raise BiasscopeError(MSG_UNKNOWN_FLAG.format(flags=", ".join(unknown), choices=", ".join(quality_flags())))
    if flags and not cfg.face_parts:
        raise BiasscopeError(MSG_FLAGS_NEED_FACES)


def check_stereotypical(manifest: Manifest, stereotypical: Sequence[str], bias_group: str | None,
                        groups: Sequence[str]) -> None:
    """Refuse stereotypical cells the bias score could not use: not ``LABEL:GROUP``, a label or group
    value with no row in ``manifest``, or a cell (label x group value) with no row.

    ``bias_group`` (default: the first of ``groups``) is the group column the cells' values belong to.
    """
    if bias_group is not None and bias_group not in manifest.attribute_columns:
        raise BiasscopeError(f"bias group column {bias_group!r} is not in the manifest; its attribute columns are "
                             f"{', '.join(manifest.attribute_columns) or '(none)'}")
    if not stereotypical:
        return
    column = bias_group or (groups[0] if groups else None)
    if column is None:
        raise BiasscopeError("stereotypical cells need a group column: pass --group (or bias_group)")
    if column not in manifest.attribute_columns:
        raise BiasscopeError(f"bias group column {column!r} is not in the manifest; its attribute columns are "
                             f"{', '.join(manifest.attribute_columns) or '(none)'}")
    labels = set(manifest.labels)
    values = {str(r.attributes.get(column)) for r in manifest.rows}
    cells = {(r.label, str(r.attributes.get(column))) for r in manifest.rows}
    problems = []
    for s in stereotypical:
        lab, sep, grp = str(s).partition(":")
        lab, grp = lab.strip(), grp.strip()
        if not sep or not lab or not grp:
            problems.append(f"{s!r}: expected LABEL:GROUP, e.g. doctor:male")
        elif lab not in labels:
            problems.append(f"{s!r}: the manifest has no row with label {lab!r} (labels: {', '.join(sorted(labels))})")
        elif grp not in values:
            problems.append(f"{s!r}: the manifest has no row with {column} = {grp!r} "
                            f"({column} values: {', '.join(sorted(values))})")
        elif (lab, grp) not in cells:
            problems.append(f"{s!r}: the manifest has no row with label {lab!r} and {column} = {grp!r}")
    if problems:
        raise BiasscopeError("stereotypical cell(s) refused (the bias score needs rows in every cell): "
                             + "; ".join(problems))


def _normal(d: Any) -> Any:
    """Round-trip through JSON so tuples and lists compare equal."""
    import json

    from .store import json_safe

    return json.loads(json.dumps(json_safe(d)))


def run_audit(
    manifest: Manifest,
    models: Sequence[ModelAdapter | ModelSource | str],
    out_dir: str | Path,
    config: AuditConfig | None = None,
    *,
    batch_size: int = 16,
    progress: Callable[[AuditProgress], None] | None = None,
    cancel: CancelFlag | None = None,
    overwrite: bool = False,
    finalize: bool = True,
    metrics_options: Mapping[str, Any] | None = None,
    engine: Engine | str | None = None,
) -> RunResult:
    """Run (or resume) an audit of ``manifest`` on ``models``, writing results to ``out_dir``.

    ``progress`` is called after each committed batch (it may raise to stop the run: what is
    committed stays). ``cancel`` (an Event or a callable) is checked before each batch; a cancelled
    run raises :class:`CancelledError` and can be resumed by calling this again. With ``finalize``,
    metrics.json, per_image.csv and report.html are written at the end (see :func:`finalize_run`).
    ``engine`` computes the batches: ``"local"`` (default, this process) or a
    :class:`~biasscope.engines.RayEngine` (``"ray"``: a Ray cluster); the results are the same.
    """
    cfg = config or AuditConfig(groups=list(manifest.groups))
    if not cfg.groups:
        cfg.groups = list(manifest.groups)
    if cfg.face_parts:
        from .face_audit import check_face_parts

        check_face_parts(manifest.region_names)
    missing = [g for g in cfg.groups if g not in manifest.attribute_columns]
    if missing:
        raise BiasscopeError(f"group column(s) {', '.join(missing)} are not in the manifest")
    if cfg.heatmap_size < 4:
        raise BiasscopeError("heatmap_size must be at least 4")
    if batch_size < 1:
        raise BiasscopeError("batch_size must be at least 1")
    sources: list[ModelAdapter | ModelSource] = [ModelSource(m) if isinstance(m, str) else m for m in models]
    if not sources:
        raise BiasscopeError("no model given")
    keys: list[str] = []
    for s in sources:
        base = s.name
        key, n = base, 2
        while key in keys:
            key, n = f"{base}#{n}", n + 1
        keys.append(key)
    if metrics_options is not None:
        _check_metrics_options(manifest, cfg, metrics_options)
    store = RunStore(out_dir)
    resuming = not overwrite and _check_existing(store, manifest, cfg)
    # every model that still has work is loaded and checked (labels, concepts, methods, weights on
    # resume) before anything is written: a refused run leaves no trace in out_dir
    loaded = _validate_models(sources, keys, manifest, cfg, store if resuming else None)
    eng = get_engine(engine)
    new_dir = not Path(out_dir).exists()
    fresh = not resuming  # this call creates the store: if it fails before storing an image, no trace stays
    _prepare(store, manifest, cfg, overwrite)
    store.set_meta("engine", eng.describe())
    store.set_meta("models_requested", keys)
    store.set_meta("status", str(JobStatus.RUNNING))
    if metrics_options is not None:
        store.set_meta("metrics_options", _normal(dict(metrics_options)))
    t_start = time.perf_counter()
    total = len(manifest.rows)
    done = {k: len(store.done_ids(k)) for k in keys}
    remaining_all = sum(total - d for d in done.values())
    processed_now = 0

    def report(mi: int, n_err: int, stage: str) -> None:
        if progress is None:
            return
        el = time.perf_counter() - t_start
        eta = el / processed_now * (remaining_all - processed_now) if processed_now else None
        progress(AuditProgress(model=keys[mi], model_index=mi, n_models=len(keys), done=done[keys[mi]], total=total,
                               errors=n_err, done_all=sum(done.values()), total_all=total * len(keys), elapsed_s=el,
                               eta_s=eta, stage=stage))

    try:
        for mi, (key, src) in enumerate(zip(keys, sources)):
            done_ids = store.done_ids(key)
            todo = [r for r in manifest.rows if r.image_id not in done_ids]
            n_err = store.counts().get(key, {}).get("error", 0)
            if not todo:
                report(mi, n_err, "model-done")
                continue
            if _cancelled(cancel):
                raise CancelledError("the audit was cancelled; run it again to resume")
            report(mi, n_err, "loading")
            adapter = loaded.pop(mi, None) or (src.load() if isinstance(src, ModelSource) else src)
            store.add_model(key, adapter.to_dict(), weights_fingerprint(adapter))
            space = LabelSpace.build(adapter, manifest.labels, cfg.concepts, top_k=cfg.top_k, match=cfg.match)
            _check_methods(adapter, cfg)
            batches = _batches(todo, batch_size, cancel)
            with contextlib.closing(eng.map_batches(src, adapter, space, cfg, batches)) as results:
                for batch, scored in results:
                    store.write_batch(key, scored)
                    processed_now += len(batch)
                    done[key] += len(batch)
                    n_err += sum(not r.ok for r in scored)
                    report(mi, n_err, "running")
            report(mi, n_err, "model-done")
            del adapter  # free the weights before loading the next model
    except CancelledError:
        store.set_meta("status", str(JobStatus.CANCELLED))
        raise
    except BaseException:
        if fresh and not store.counts():
            _discard(store, new_dir)  # it never started: nothing to resume, nothing to list
        else:
            store.set_meta("status", str(JobStatus.ERROR))  # stopped early: resumable
        raise
    store.set_meta("status", str(JobStatus.DONE))
    store.set_meta("finished", datetime.now(UTC).isoformat(timespec="seconds"))
    result = RunResult(run_dir=Path(out_dir), models=keys, counts=store.counts())
    if finalize:
        from .results import finalize_run

        result.metrics = finalize_run(out_dir)
    return result


def _discard(store: RunStore, remove_dir: bool) -> None:
    """Delete a run store that holds no result (and its folder if this run created it and it is empty)."""
    for suffix in ("", "-wal", "-shm"):
        p = store.path.with_name(store.path.name + suffix)
        with contextlib.suppress(OSError):
            p.unlink()
    if remove_dir:
        with contextlib.suppress(OSError):
            store.run_dir.rmdir()  # only if empty


def _validate_models(sources: Sequence[ModelAdapter | ModelSource], keys: Sequence[str], manifest: Manifest,
                     cfg: AuditConfig, store: RunStore | None) -> dict[int, ModelAdapter]:
    """Load every model that has images left and check it can run this audit: its weights load, every
    label (or concept class) resolves, every method accepts it, and (``store``: a resumed run) its
    weights are those the run started with. Returns the first loaded model (its turn comes first);
    the others are freed and loaded again when their turn comes, so only one model is held at a time."""
    done = {m["key"]: m.get("fingerprint") for m in store.models()} if store is not None else {}
    keep: dict[int, ModelAdapter] = {}
    for mi, (key, src) in enumerate(zip(keys, sources)):
        if store is not None and len(store.done_ids(key)) >= len(manifest.rows):
            continue
        try:
            adapter = src.load() if isinstance(src, ModelSource) else src
        except BiasscopeError as exc:
            if len(sources) > 1 and len(exc.args) == 1 and not str(exc).startswith(f"model {key}"):
                exc.args = (f"model {key}: {exc.args[0]}",)  # which of the models it is
            raise
        LabelSpace.build(adapter, manifest.labels, cfg.concepts, top_k=cfg.top_k, match=cfg.match)
        _check_methods(adapter, cfg)
        if done.get(key) and done[key] != weights_fingerprint(adapter):
            raise BiasscopeError(f"model {key!r} in {store.run_dir if store else ''} was run with different weights; "
                                 "use a new run folder to audit the changed model")
        if not keep:
            keep[mi] = adapter
        del adapter
    return keep


def _batches(todo: Sequence, batch_size: int, cancel: CancelFlag | None) -> Iterator[Sequence]:
    """The rows still to do, ``batch_size`` at a time; checks for cancellation before each batch."""
    for b in range(0, len(todo), batch_size):
        if _cancelled(cancel):
            raise CancelledError("the audit was cancelled; run it again to resume")
        yield todo[b : b + batch_size]


def _check_methods(adapter: ModelAdapter, cfg: AuditConfig) -> None:
    """Fail before the first batch if a method cannot run on this model or its params are wrong."""
    from ..explainers import get_explainer

    for m in cfg.methods:
        cls = get_explainer(m)
        cls(adapter, **dict(cfg.method_params.get(m, cfg.method_params.get(cls.name, {}))))
