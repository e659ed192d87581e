"""``audit``, ``audit-report``, ``audit-manifest`` and ``audits``: bias audits from the command line."""

from __future__ import annotations

import json

import click

from ._common import handle_errors, parse_method_params

__all__ = ["AUDIT_COMMANDS", "audit_cmd", "audit_manifest_cmd", "audit_report_cmd", "audits_cmd"]


def _metrics_options(stereotypical: tuple[str, ...], bias_group: str | None, n_boot: int, n_perm: int, seed: int,
                     min_group_size: int, alpha: float, exclude_flags: str = "") -> dict:
    for s in stereotypical:
        if ":" not in s:
            raise click.BadParameter(f"{s!r}: expected LABEL:GROUP, e.g. doctor:male", param_hint="--stereotypical")
    return {"stereotypical": list(stereotypical), "bias_group": bias_group, "n_boot": n_boot, "n_perm": n_perm,
            "seed": seed, "min_group_size": min_group_size, "alpha": alpha,
            "exclude_flags": [f.strip() for f in exclude_flags.split(",") if f.strip()]}


def _stats_options(fn):
    opts = [
        click.option("--stereotypical", multiple=True, metavar="LABEL:GROUP",
                     help="a stereotypical label x group cell for the bias score, e.g. doctor:male (repeatable)"),
        click.option("--bias-group", default=None, help="group column of the stereotypical cells (default: first)"),
        click.option("--n-boot", type=click.IntRange(100, 100_000), default=1000, show_default=True,
                     help="bootstrap resamples for confidence intervals"),
        click.option("--n-perm", type=click.IntRange(100, 100_000), default=1000, show_default=True,
                     help="permutations for p-values"),
        click.option("--seed", type=int, default=0, show_default=True, help="seed of bootstrap and permutations"),
        click.option("--min-group-size", type=click.IntRange(1), default=30, show_default=True,
                     help="warn about groups smaller than this"),
        click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
                     show_default=True, help="significance level (Holm-adjusted)"),
        click.option("--exclude-flags", default="", metavar="FLAG,FLAG",
                     help="leave images with these face quality flags out of the metrics (needs --face-parts): "
                          "no_face, several_faces, turned_head, tiny_face, blurry"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.command("audit")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--model", "models", multiple=True, required=True,
              help="model to audit (repeatable): torchvision name, model file, or ARCH=STATE_DICT.pth")
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
@click.option("--blur-radius", type=click.FloatRange(0, min_open=True), default=None, help="pixels (default: auto)")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--face-parts", is_flag=True,
              help="detect faces: face-part regions (eyes, nose, mouth, hair band, ...), quality flags and aligned "
                   "group heatmaps (needs the faces extra)")
@_stats_options
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="class names file for model files")
@click.option("--input-size", type=click.IntRange(16, 2048), default=None)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32", show_default=True)
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto", show_default=True,
              help="engine for gradient-free fp32 forwards (auto: ONNX Runtime where it matches PyTorch)")
@click.option("--download", is_flag=True, help="allow downloading torchvision weights")
@click.option("--classes", default=None, metavar="A,B,...|FILE",
              help="classes of clip:ARCH models (the manifest's labels, e.g. doctor,nurse)")
@click.option("--prompt", "prompts", multiple=True, metavar="TEMPLATE",
              help="CLIP prompt template with {} (repeatable)")
@click.option("--pretrained", default=None, metavar="TAG|FILE",
              help="open_clip weights tag or file of clip:ARCH models")
@click.option("--overwrite", is_flag=True, help="replace a different audit already in --out")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where batches are computed: this process, or a Ray cluster (pip install 'biasscope[ray]')")
@click.option("--address", default=None, help="Ray cluster address (auto, ray://HOST:10001); default: start Ray here")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray workers holding the model (default: cluster CPUs / --cpus-per-worker)")
@click.option("--cpus-per-worker", type=click.FloatRange(0, min_open=True), default=None,
              help="CPUs per Ray worker (default 1)")
@handle_errors
def audit_cmd(manifest: str, models: tuple[str, ...], groups: tuple[str, ...], concepts_file: str | None,
              concept_items: tuple[str, ...], methods: str, param_items: tuple[str, ...], out_dir: str, top_k: int,
              match: str, explain_target: str, removal: str, fill: str, blur_radius: float | None, batch_size: int,
              face_parts: bool, stereotypical: tuple[str, ...], bias_group: str | None, n_boot: int, n_perm: int,
              seed: int, min_group_size: int, alpha: float, exclude_flags: str, labels: str | None,
              input_size: int | None, device: str,
              precision: str, backend: str, download: bool, classes: str | None, prompts: tuple[str, ...],
              pretrained: str | None, overwrite: bool, as_json: bool, engine: str = "local",
              address: str | None = None, workers: int | None = None, cpus_per_worker: float | None = None) -> None:
    """Audit MANIFEST (CSV: path,label,attributes,region:NAME) on one or more models.

    Results go to --out incrementally (SQLite): run the same command again to resume an
    interrupted audit. Writes metrics.json, per_image.csv and report.html there.
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
    )
    mopts = _metrics_options(stereotypical, bias_group, n_boot, n_perm, seed, min_group_size, alpha, exclude_flags)
    man = load_manifest(manifest, groups=list(groups))
    load_opts = {"labels": labels, "input_size": input_size, "device": device, "precision": precision,
                 "backend": backend, "download": download}
    clip_opts = {"classes": classes, "prompts": list(prompts) or None, "pretrained": pretrained}
    sources = [ModelSource(m, options=load_opts | (clip_opts if m.lower().startswith("clip:") else {})) for m in models]
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
    for key, mm in metrics.get("models", {}).items():
        click.echo(f"\n== {key}")
        for f in mm.get("findings", []):
            click.echo(f"  - {f}")
    click.echo(f"\nwrote {result.run_dir}/metrics.json, per_image.csv, report.html")


@click.command("audit-report")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@_stats_options
@handle_errors
def audit_report_cmd(run_dir: str, stereotypical: tuple[str, ...], bias_group: str | None, n_boot: int, n_perm: int,
                     seed: int, min_group_size: int, alpha: float, exclude_flags: str) -> None:
    """Recompute metrics.json, per_image.csv and report.html of RUN_DIR (no model is run)."""
    from ..audit import finalize_run

    finalize_run(run_dir, _metrics_options(stereotypical, bias_group, n_boot, n_perm, seed, min_group_size, alpha,
                                           exclude_flags))
    click.echo(f"wrote {run_dir}/metrics.json, per_image.csv, report.html")


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


AUDIT_COMMANDS = [audit_cmd, audit_report_cmd, audit_manifest_cmd, audits_cmd]
