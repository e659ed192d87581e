"""Compare two or more models on the same held-out manifest: before/after, side by side.

The models are run through the audit (:func:`biasscope.audit.run_audit`, results under
``out_dir/audit`` with its own report), so per-group accuracy, its bootstrap interval and each
model's gap with interval and permutation p-value are the audit's numbers. On top, this module
computes what only a comparison has: the *change* of each group's accuracy, of the overall accuracy
and of the gap between the baseline's best and worst group, from the baseline (the first model) to
each other model, with a paired stratified bootstrap (the same resampled images for both models,
resampled within each group, so the shared image difficulty cancels out), and says it in words.

Synthetic images (``synthetic=1``) in the manifest are excluded before anything is computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..audit.manifest import Manifest, load_manifest
from ..audit.model_metrics import ModelMetrics
from ..audit.runner import AuditConfig, AuditProgress, ModelSource, run_audit
from ..errors import BiasscopeError
from ..models.adapter import ModelAdapter
from .data import exclude_synthetic

__all__ = ["COMPARE_JSON", "COMPARE_MD", "compare_models", "paired_bootstrap"]

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"


def paired_bootstrap(
    correct: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bootstrap group accuracies of several models on the same images.

    ``correct`` is ``(n_models, n_images)`` (0/1); images are resampled within each group with the
    same draw for every model. Returns ``(group_acc (n_boot, n_models, n_groups),
    overall_acc (n_boot, n_models), group_names)``; the overall accuracy keeps the group sizes fixed.
    """
    correct = np.asarray(correct, dtype=np.float64)
    g = np.asarray(groups).astype(str)
    names = sorted(set(g.tolist()))
    rng = np.random.default_rng(seed)
    n_models = correct.shape[0]
    group_acc = np.empty((n_boot, n_models, len(names)))
    sums = np.zeros((n_boot, n_models))
    for k, name in enumerate(names):
        idx = np.flatnonzero(g == name)
        vals = correct[:, idx]
        chunk = max(1, 2_000_000 // max(len(idx), 1))
        for s in range(0, n_boot, chunk):
            b = min(chunk, n_boot - s)
            draw = rng.integers(0, len(idx), size=(b, len(idx)))
            means = np.stack([vals[m][draw].mean(axis=1) for m in range(n_models)], axis=1)
            group_acc[s : s + b, :, k] = means
        sums += group_acc[:, :, k] * len(idx)
    return group_acc, sums / len(g), names


def _default_name(spec: str) -> str | None:
    """``runs/skewed/model.pt`` -> ``skewed``; ``other.pt`` -> ``other``; a zoo name -> None (itself)."""
    p = Path(spec)
    if not p.suffix:
        return None
    return p.parent.name if p.stem == "model" and p.parent.name else p.stem


def _ci(samples: np.ndarray, confidence: float) -> list[float]:
    q = (1 - confidence) / 2
    return [float(np.quantile(samples, q)), float(np.quantile(samples, 1 - q))]


def _verdict(ci: list[float], *, lower_is_better: bool) -> str:
    if ci[1] < 0:
        return "shrank" if lower_is_better else "fell"
    if ci[0] > 0:
        return "grew" if lower_is_better else "rose"
    return "no clear change"


def compare_models(
    manifest: str | Path | Manifest,
    models: Sequence[str | Path | ModelAdapter],
    out_dir: str | Path,
    *,
    group: str,
    names: Sequence[str] | None = None,
    root: str | Path | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    overwrite: bool = False,
    progress: Callable[[AuditProgress], None] | None = None,
) -> dict:
    """Audit ``models`` on the real images of ``manifest`` and compare each with the first.

    Returns (and writes to ``out_dir/compare.json`` and ``compare.md``) per model: overall and
    per-group accuracy with intervals and the accuracy gap with interval; per later model: the
    paired-bootstrap change of every group's accuracy, the overall accuracy and the baseline's gap,
    each with an interval and a verdict; and ``summary``, the before/after story in sentences.
    """
    if len(models) < 2:
        raise BiasscopeError("compare needs at least two models")
    if names is not None and len(names) != len(models):
        raise BiasscopeError(f"got {len(names)} names for {len(models)} models")
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, groups=[group], root=root)
    if group not in m.attribute_columns:
        raise BiasscopeError(f"unknown group column {group!r}; attribute columns are: "
                             f"{', '.join(m.attribute_columns) or '(none)'}")
    real = exclude_synthetic(m)
    n_synthetic = len(m.rows) - len(real.rows)
    real = replace(real, groups=[group])
    sources: list[ModelSource | ModelAdapter] = []
    for i, spec in enumerate(models):
        key = names[i] if names is not None else None
        if isinstance(spec, ModelAdapter):
            sources.append(replace(spec, name=key) if key else spec)
        else:
            sources.append(ModelSource(str(spec), key=key or _default_name(str(spec)), options={"device": device}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = run_audit(real, sources, out / "audit", AuditConfig(groups=[group], methods=[], removal=None),
                    batch_size=batch_size, progress=progress, overwrite=overwrite,
                    metrics_options={"n_boot": n_boot, "n_perm": n_perm, "seed": seed, "confidence": confidence})
    from ..audit.results import per_image_frame

    metrics = res.metrics or {}
    keys = res.models
    df = per_image_frame(out / "audit")
    ok = df[df["status"] == "ok"]
    common = set.intersection(*[set(ok.loc[ok["model"] == k, "image_id"]) for k in keys])
    n_dropped = len(real.rows) - len(common)
    ids = sorted(common)
    if not ids:
        raise BiasscopeError("no image could be evaluated by every model")
    correct = np.stack([
        ok[ok["model"] == k].set_index("image_id").loc[ids, "correct"].astype(float).to_numpy() for k in keys
    ])
    grp = ok[ok["model"] == keys[0]].set_index("image_id").loc[ids, group].astype(str).to_numpy()
    boot_g, boot_o, gnames = paired_bootstrap(correct, grp, n_boot=n_boot, seed=seed)
    obs_g = np.array([[correct[mi, grp == gn].mean() for gn in gnames] for mi in range(len(keys))])
    obs_o = correct.mean(axis=1)
    base_hi, base_lo = int(np.argmax(obs_g[0])), int(np.argmin(obs_g[0]))
    if base_hi == base_lo:
        base_hi, base_lo = 0, len(gnames) - 1

    model_rows: dict[str, dict] = {}
    for mi, k in enumerate(keys):
        entry = ModelMetrics.from_json(metrics.get("models", {}).get(k) or {}).groupings.get(group)
        cis = entry.by_group_ci if entry else {}
        by_group = {gn: {"n": int(np.sum(grp == gn)), "accuracy": float(obs_g[mi, j]),
                         "ci": (list(cis[gn]["accuracy"]) if "accuracy" in cis.get(gn, {})
                                else _ci(boot_g[:, mi, j], confidence))}
                    for j, gn in enumerate(gnames)}
        gap_b = boot_g[:, mi, base_hi] - boot_g[:, mi, base_lo]
        audit_gap = entry.gaps.get("accuracy") if entry else None
        model_rows[k] = {
            "n": len(ids),
            "accuracy": float(obs_o[mi]),
            "accuracy_ci": _ci(boot_o[:, mi], confidence),
            "by_group": by_group,
            "gap": {"high_group": gnames[base_hi], "low_group": gnames[base_lo],
                    "difference": float(obs_g[mi, base_hi] - obs_g[mi, base_lo]),
                    "ci": _ci(gap_b, confidence)},
            "audit_gap": audit_gap.subset_json(("high_group", "low_group", "difference", "difference_ci", "p_value",
                                                "p_adjusted", "flagged")) if audit_gap else None,
        }
    changes: dict[str, dict] = {}
    for mi, k in enumerate(keys[1:], start=1):
        gap_base = boot_g[:, 0, base_hi] - boot_g[:, 0, base_lo]
        gap_m = boot_g[:, mi, base_hi] - boot_g[:, mi, base_lo]
        d_gap = gap_m - gap_base
        obs_d_gap = model_rows[k]["gap"]["difference"] - model_rows[keys[0]]["gap"]["difference"]
        ci_gap = _ci(d_gap, confidence)
        ci_acc = _ci(boot_o[:, mi] - boot_o[:, 0], confidence)
        per_group = {}
        for j, gn in enumerate(gnames):
            ci = _ci(boot_g[:, mi, j] - boot_g[:, 0, j], confidence)
            per_group[gn] = {"change": float(obs_g[mi, j] - obs_g[0, j]), "ci": ci,
                             "verdict": _verdict(ci, lower_is_better=False)}
        changes[k] = {
            "baseline": keys[0],
            "gap_change": {"change": float(obs_d_gap), "ci": ci_gap, "verdict": _verdict(ci_gap, lower_is_better=True),
                           "high_group": gnames[base_hi], "low_group": gnames[base_lo]},
            "accuracy_change": {"change": float(obs_o[mi] - obs_o[0]), "ci": ci_acc,
                                "verdict": _verdict(ci_acc, lower_is_better=False)},
            "by_group": per_group,
        }
    result = {
        "manifest": str(m.path) if m.path else None,
        "group": group,
        "groups": gnames,
        "models": keys,
        "baseline": keys[0],
        "n_images": len(ids),
        "n_synthetic_excluded": n_synthetic,
        "n_not_evaluated": n_dropped,
        "confidence": confidence,
        "n_boot": n_boot,
        "seed": seed,
        "per_model": model_rows,
        "changes": changes,
        "audit_dir": str(out / "audit"),
    }
    result["summary"] = summarize(result)
    (out / COMPARE_JSON).write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / COMPARE_MD).write_text(to_markdown(result), encoding="utf-8")
    return result


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _ci_pct(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]"


def _ci_pp(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] pp"


def summarize(result: dict) -> list[str]:
    """The comparison in sentences, every number with its interval."""
    level = f"{100 * result['confidence']:.0f}%"
    out: list[str] = []
    for k in result["models"]:
        r = result["per_model"][k]
        groups = "; ".join(f"{g} {_pct(d['accuracy'])} {_ci_pct(d['ci'])}" for g, d in r["by_group"].items())
        gap = r["gap"]
        out.append(f"{k}: accuracy {_pct(r['accuracy'])} {_ci_pct(r['accuracy_ci'])} on {r['n']} images; "
                   f"by {result['group']}: {groups}; gap {gap['high_group']} - {gap['low_group']} "
                   f"{_pp(gap['difference'])} ({level} CI {_ci_pp(gap['ci'])}).")
    base = result["baseline"]
    for k, c in result["changes"].items():
        gc, ac = c["gap_change"], c["accuracy_change"]
        before = result["per_model"][base]["gap"]["difference"]
        after = result["per_model"][k]["gap"]["difference"]
        if gc["verdict"] == "shrank":
            words = "the gap shrank"
        elif gc["verdict"] == "grew":
            words = "the gap grew"
        else:
            words = "the gap did not change measurably"
        out.append(f"From {base} to {k}, {words}: the accuracy gap between {gc['high_group']} and {gc['low_group']} "
                   f"went from {_pp(before)} to {_pp(after)}, a change of {_pp(gc['change'])} "
                   f"({level} paired-bootstrap CI {_ci_pp(gc['ci'])}).")
        moves = []
        for g, d in c["by_group"].items():
            verb = {"rose": "rose", "fell": "fell"}.get(d["verdict"], "did not change measurably")
            moves.append(f"{g} accuracy {verb} ({_pp(d['change'])}, CI {_ci_pp(d['ci'])})")
        overall = {"rose": "rose", "fell": "fell"}.get(ac["verdict"], "did not change measurably")
        out.append(f"Overall accuracy {overall} ({_pp(ac['change'])}, CI {_ci_pp(ac['ci'])}); "
                   + "; ".join(moves) + ".")
    if result["n_synthetic_excluded"]:
        out.append(f"{result['n_synthetic_excluded']} synthetic image(s) in the manifest were excluded.")
    if result["n_not_evaluated"]:
        out.append(f"{result['n_not_evaluated']} image(s) could not be evaluated by every model and were left out.")
    return out


def to_markdown(result: dict) -> str:
    """A side-by-side table (per-group accuracy with intervals) and the summary."""
    groups = result["groups"]
    head = "| model | n | accuracy | " + " | ".join(groups) + " | gap |"
    sep = "|" + "---|" * (len(groups) + 4)
    lines = [f"# Model comparison by {result['group']}", "", head, sep]
    for k in result["models"]:
        r = result["per_model"][k]
        cells = [f"{_pct(r['by_group'][g]['accuracy'])} {_ci_pct(r['by_group'][g]['ci'])}" for g in groups]
        lines.append(f"| {k} | {r['n']} | {_pct(r['accuracy'])} {_ci_pct(r['accuracy_ci'])} | "
                     + " | ".join(cells) + f" | {_pp(r['gap']['difference'])} {_ci_pp(r['gap']['ci'])} |")
    lines += ["", "## Summary", ""] + [f"- {s}" for s in result["summary"]]
    lines += ["", f"Per-image results and the audit report: `{result['audit_dir']}`.", ""]
    return "\n".join(lines)
