"""``audit``, ``audit-report``, ``audit-manifest`` and ``audits``: bias audits from the command line."""

from __future__ import annotations

import json

import click

from ..explainers import SEED_MAX
from ._common import FiniteFloat, handle_errors, model_options, parse_method_params, split_model_options

__all__ = ["AUDIT_COMMANDS", "audit_cmd", "audit_manifest_cmd", "audit_report_cmd", "audits_cmd", "demo_cmd"]


_STATS_DEFAULTS = {"bias_group": None, "n_boot": 1000, "n_perm": 1000, "seed": 0, "min_group_size": 30,
                   "alpha": 0.05}


def _parse_min_effect(items: tuple[str, ...]) -> dict[str, float]:
    from ..audit.metrics import DEFAULT_MIN_EFFECT

    out: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in DEFAULT_MIN_EFFECT:
            raise click.BadParameter(f"{item!r}: expected KIND=VALUE with KIND one of {', '.join(DEFAULT_MIN_EFFECT)}",
                                     param_hint="--min-effect")
        try:
            out[kind] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {value!r} is not a number", param_hint="--min-effect") from None
        if not out[kind] >= 0:
            raise click.BadParameter(f"{item!r}: the minimum effect must be >= 0", param_hint="--min-effect")
    return out


def _metrics_options(stereotypical: tuple[str, ...], bias_group: str | None, n_boot: int | None,
                     n_perm: int | None, seed: int | None, min_group_size: int | None, alpha: float | None,
                     exclude_flags: str | None = None, min_effect: tuple[str, ...] = (), *,
                     stored: dict | None = None) -> dict:
    """Statistics options from the command line; with ``stored`` (audit-report), what is not given keeps the
    run's stored value (its stereotypical cells included), else the default."""
    for s in stereotypical:
        if ":" not in s:
            raise click.BadParameter(f"{s!r}: expected LABEL:GROUP, e.g. doctor:male", param_hint="--stereotypical")
    base = dict(stored or {})
    given = {"bias_group": bias_group, "n_boot": n_boot, "n_perm": n_perm, "seed": seed,
             "min_group_size": min_group_size, "alpha": alpha}
    out = {k: (v if v is not None else base.get(k, _STATS_DEFAULTS[k])) for k, v in given.items()}
    out["stereotypical"] = list(stereotypical) if stereotypical else list(base.get("stereotypical", []))
    out["exclude_flags"] = ([f.strip() for f in exclude_flags.split(",") if f.strip()] if exclude_flags is not None
                            else list(base.get("exclude_flags", [])))
    out["min_effect"] = {**(base.get("min_effect") or {}), **_parse_min_effect(min_effect)}
    for k, v in base.items():  # options this CLI does not set (confidence, ...)
        out.setdefault(k, v)
    return out


def _stats_options(fn):
    opts = [
        click.option("--stereotypical", multiple=True, metavar="LABEL:GROUP",
                     help="a stereotypical label x group cell for the bias score, e.g. doctor:male (repeatable; "
                          "audit-report keeps the run's cells unless given)"),
        click.option("--bias-group", default=None, help="group column of the stereotypical cells (default: first)"),
        click.option("--n-boot", type=click.IntRange(100, 100_000), default=None,
                     help="bootstrap resamples for confidence intervals  [default: 1000]"),
        click.option("--n-perm", type=click.IntRange(100, 100_000), default=None,
                     help="permutations for p-values  [default: 1000]"),
        click.option("--seed", type=click.IntRange(0, SEED_MAX), default=None,
                     help="seed of bootstrap and permutations (0 to 2**32-1)  [default: 0]"),
        click.option("--min-group-size", type=click.IntRange(1), default=None,
                     help="warn about groups smaller than this  [default: 30]"),
        click.option("--alpha", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=None,
                     help="significance level (Holm-adjusted)  [default: 0.05]"),
        click.option("--min-effect", "min_effect", multiple=True, metavar="KIND=VALUE",
                     help="smallest group difference flagged, per kind (repeatable): accuracy, probability, rate, "
                          "share, removal, faithfulness  [default: 0.05 each, absolute]"),
        click.option("--exclude-flags", default=None, metavar="FLAG,FLAG",
                     help="leave images with these face quality flags out of the metrics (needs --face-parts): "
                          "no_face, several_faces, turned_head, tiny_face, blurry"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _echo_summary(metrics: dict, run_dir: object) -> None:
    """A compact summary: each model's answer and flagged findings once, warnings counted by kind."""
    for key, mm in metrics.get("models", {}).items():
        click.echo(f"\n== {key}")
        answer = mm.get("answer") or mm.get("findings", [])
        for f in answer:
            click.echo(f"  - {f}")
        shown = sum(f in answer for f in mm.get("findings", []))
        rest = len(mm.get("flagged", [])) - shown
        if rest > 0:
            click.echo(f"  ({rest} more flagged finding(s) in report.html and metrics.json)")
        groups = mm.get("warning_groups") or []
        if groups:
            parts = []
            for g in groups:
                items = g["items"]
                shown = "; ".join(items[:3]) + (f"; +{len(items) - 3} more" if len(items) > 3 else "")
                parts.append(f"{g['title']}: {shown}")
            click.echo(f"  warnings ({sum(len(g['items']) for g in groups)}): " + " | ".join(parts))
    click.echo(f"\nwrote {run_dir}/metrics.json, per_image.csv, report.html")


@click.command("audit")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--group", "groups", multiple=True, required=True, help="attribute column defining groups (repeatable)")
@click.option("--concepts", "concepts_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file: LABEL: [model class, ...]")
@click.option("--concept", "concept_items", multiple=True, metavar="'LABEL = class, class'",
              help="a concept on the command line (repeatable)")
@click.option("--method", "methods", default="", help="comma-separated explanation methods, e.g. gradcam,ig")
@click.option("--param", "param_items", multiple=True, metavar="METHOD.NAME=VALUE", help="method parameter")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="run folder")
@click.option("--top-k", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--match", type=click.Choice(["top1", "topk"]), default="top1", show_default=True,
              help="a prediction counts for a label when its top-1 (or any top-k) class is in the label's set")
@click.option("--explain-target", type=click.Choice(["label", "predicted"]), default="label", show_default=True)
@click.option("--removal", type=click.Choice(["fill", "blur", "none"]), default="fill", show_default=True,
              help="how regions are removed to measure their effect")
@click.option("--fill", default="mean", show_default=True, metavar="mean|R,G,B", help="fill colour for --removal fill")
@click.option("--blur-radius", type=FiniteFloat(0, 1000, min_open=True), default=None, help="pixels (default: auto)")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--face-parts", is_flag=True,
              help="detect faces: face-part regions (eyes, nose, mouth, hair band, ...), quality flags and aligned "
                   "group heatmaps (needs the faces extra)")
@click.option("--faithfulness", is_flag=True,
              help="also measure deletion/insertion AUC of every explanation: explanation quality per label x "
                   "group (costs forward passes)")
@_stats_options
@model_options(several=True)
@click.option("--overwrite", is_flag=True, help="replace a different audit already in --out")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where batches are computed: this process, or a Ray cluster (pip install 'biasscope[ray]')")
@click.option("--address", default=None, help="Ray cluster address (auto, ray://HOST:10001); default: start Ray here")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray workers holding the model (default: cluster CPUs / --cpus-per-worker)")
@click.option("--cpus-per-worker", type=FiniteFloat(0, 1024, min_open=True), default=None,
              help="CPUs per Ray worker (default 1)")
@handle_errors
def audit_cmd(manifest: str, groups: tuple[str, ...], concepts_file: str | None, concept_items: tuple[str, ...],
              methods: str, param_items: tuple[str, ...], out_dir: str, top_k: int, match: str, explain_target: str,
              removal: str, fill: str, blur_radius: float | None, batch_size: int, face_parts: bool,
              faithfulness: bool, stereotypical: tuple[str, ...], bias_group: str | None, n_boot: int | None,
              n_perm: int | None, seed: int | None, min_group_size: int | None, alpha: float | None,
              min_effect: tuple[str, ...], exclude_flags: str | None, overwrite: bool, as_json: bool,
              engine: str = "local", address: str | None = None, workers: int | None = None,
              cpus_per_worker: float | None = None, **model_kw) -> None:
    """Audit MANIFEST (CSV: path,label,attributes,region:NAME) on one or more models.

    Results go to --out incrementally (SQLite): run the same command again to resume an
    interrupted audit. Writes metrics.json, per_image.csv and report.html there. Every model, the
    manifest, the concepts, the methods and the stereotypical cells are checked before the first
    image; a run refused there leaves nothing in --out. Model options (--weights, --mean, ...) given
    once apply to every --model; given once per --model, they apply in the same order.
    """
    from tqdm import tqdm

    from ..audit import AuditConfig, ModelSource, load_concepts, load_manifest, run_audit
    from ..regions import RemovalConfig

    concepts = load_concepts(concepts_file) if concepts_file else {}
    concepts.update(load_concepts(list(concept_items)))
    fill_value: str | tuple[int, int, int] = "mean"
    if fill != "mean":
        try:
            parts = tuple(int(v) for v in fill.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
            raise click.BadParameter(f"{fill!r}: expected mean or R,G,B with values 0-255", param_hint="--fill")
        fill_value = parts  # type: ignore[assignment]
    cfg = AuditConfig(
        groups=list(groups),
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        concepts=concepts,
        top_k=top_k,
        match=match,  # type: ignore[arg-type]
        explain_target=explain_target,  # type: ignore[arg-type]
        method_params=parse_method_params(param_items),
        removal=None if removal == "none" else RemovalConfig(mode=removal, fill=fill_value,  # type: ignore[arg-type]
                                                             blur_radius=blur_radius),
        face_parts=face_parts,
        faithfulness=faithfulness,
    )
    mopts = _metrics_options(stereotypical, bias_group, n_boot, n_perm, seed, min_group_size, alpha, exclude_flags,
                             min_effect)
    sources = [ModelSource(spec, options=opts) for spec, opts in split_model_options(model_kw)]
    man = load_manifest(manifest, groups=list(groups))
    bar = tqdm(total=len(man) * len(sources), desc="audit", unit="img", disable=as_json, dynamic_ncols=True)
    started = False

    def progress(p) -> None:
        nonlocal started
        if not started:
            bar.reset(total=p.total_all)
            bar.update(p.done_all)
            started = True
        else:
            bar.update(p.done_all - bar.n)
        bar.set_postfix_str(f"{p.model} ({p.model_index + 1}/{p.n_models}) errors={p.errors} {p.stage}")

    from ..engines import get_engine

    if engine == "local" and (address or workers or cpus_per_worker):
        raise click.BadParameter("--address, --workers and --cpus-per-worker need --engine ray", param_hint="--engine")
    eng = get_engine(engine, address=address, workers=workers, cpus_per_worker=cpus_per_worker)
    try:
        result = run_audit(man, sources, out_dir, cfg, batch_size=batch_size, progress=progress, overwrite=overwrite,
                           metrics_options=mopts, engine=eng)
    finally:
        bar.close()
        eng.close()
    metrics = result.metrics or {}
    if as_json:
        click.echo(json.dumps({"run_dir": str(result.run_dir), "comparison": metrics.get("comparison", {}),
                               "flagged": {k: v.get("flagged", []) for k, v in metrics.get("models", {}).items()}},
                              indent=2))
        return
    _echo_summary(metrics, result.run_dir)


@click.command("audit-report")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@_stats_options
@handle_errors
def audit_report_cmd(run_dir: str, stereotypical: tuple[str, ...], bias_group: str | None, n_boot: int | None,
                     n_perm: int | None, seed: int | None, min_group_size: int | None, alpha: float | None,
                     min_effect: tuple[str, ...], exclude_flags: str | None) -> None:
    """Recompute metrics.json, per_image.csv and report.html of RUN_DIR (no model is run).

    Options not given keep the run's stored values (its stereotypical cells included).
    """
    from ..audit import finalize_run
    from ..audit.store import RunStore

    stored = RunStore(run_dir).get_meta("metrics_options") or {}
    metrics = finalize_run(run_dir, _metrics_options(stereotypical, bias_group, n_boot, n_perm, seed, min_group_size,
                                                     alpha, exclude_flags, min_effect, stored=stored))
    _echo_summary(metrics, run_dir)


@click.command("audit-manifest")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out_csv", type=click.Path(dir_okay=False), default=None,
              help="CSV to write (default: FOLDER/manifest.csv)")
@click.option("--group-column", default="group", show_default=True, help="name of the group column")
@handle_errors
def audit_manifest_cmd(folder: str, out_csv: str | None, group_column: str) -> None:
    """Build a manifest from FOLDER/<label>/<group>/<image>."""
    from ..audit import load_manifest, manifest_from_folder

    path = manifest_from_folder(folder, out_csv, group_column=group_column)
    m = load_manifest(path, groups=[group_column])
    click.echo(f"wrote {path}: {len(m)} images, labels {', '.join(m.labels)}, "
               f"{group_column} {', '.join(m.group_values(group_column))}")


@click.command("audits")
@click.argument("root", type=click.Path(file_okay=False, exists=True), default=".")
@click.option("--json", "as_json", is_flag=True)
def audits_cmd(root: str, as_json: bool) -> None:
    """List the audit runs in ROOT."""
    from ..audit import list_runs

    runs = list_runs(root)
    if as_json:
        click.echo(json.dumps(runs, indent=2, default=str))
        return
    for r in runs:
        click.echo(f"{r['name']:30s} {r['status']:12s} {r.get('n_images', '?')} images  "
                   f"models: {', '.join(r.get('models', []))}  ({r.get('progress', 0):.0%})")


@click.command("demo")
@click.argument("data_root", type=click.Path(file_okay=False), default="data")
@click.option("--model", default="mobilenet_v2", show_default=True, help="model to audit")
@click.option("--views", type=click.IntRange(1, 6), default=6, show_default=True,
              help="crops/flips per photo (x 2 styles x 4 photos = images)")
@click.option("--force", is_flag=True, help="rebuild and rerun even if a complete demo run exists")
@handle_errors
def demo_cmd(data_root: str, model: str, views: int, force: bool) -> None:
    """Build the offline demo audit under DATA_ROOT (photos shipped with scikit-image and matplotlib).

    Colour vs grayscale photos of a cat, an espresso, Grace Hopper in uniform and a rocket: the run lands in
    DATA_ROOT/.biasscope-runs/demo-audit, where `biasscope serve --data-root DATA_ROOT` lists it on the Audits page.
    """
    from tqdm import tqdm

    from ..audit.demo import ensure_demo

    bar = tqdm(desc="demo audit", unit="img", dynamic_ncols=True)

    def progress(p) -> None:
        bar.total = p.total_all
        bar.update(p.done_all - bar.n)

    try:
        run = ensure_demo(data_root, model, views=views, force=force, progress=progress)
    finally:
        bar.close()
    click.echo(f"demo audit: {run} (report: {run}/report.html)")


AUDIT_COMMANDS = [audit_cmd, audit_report_cmd, audit_manifest_cmd, audits_cmd, demo_cmd]
