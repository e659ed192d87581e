"""``biasscope verify-audit MANIFEST.csv``: per-subgroup error rates of a face matcher."""

from __future__ import annotations

import json

import click

from ._common import handle_errors

__all__ = ["verify_audit_cmd"]


def _triple(value: str | None, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected three numbers R,G,B", param_hint=name) from None
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r}: expected three numbers R,G,B", param_hint=name)
    return parts  # type: ignore[return-value]


@click.command("verify-audit")
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="output folder (metrics.json, pairs.csv, plots/, report.html); re-running resumes")
@click.option("--model", default="dlib-face", show_default=True,
              help="dlib-face, or a TorchScript / .onnx embedding model (then give its chip recipe)")
@click.option("--group", "groups", multiple=True, help="group column (repeat: --group ethnicity --group gender)")
@click.option("--far", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=1e-3, show_default=True,
              help="target false accept rate of the global and the per-subgroup thresholds")
@click.option("--chip-size", type=click.IntRange(8, 1024), default=None, help="user model: chip side in pixels")
@click.option("--padding", type=click.FloatRange(0, 2), default=None, help="user model: dlib chip padding")
@click.option("--landmarks", type=click.Choice(["5", "68"]), default=None, help="user model: alignment landmarks")
@click.option("--mean", default=None, metavar="R,G,B", help="user model: normalisation mean (0-1 scale)")
@click.option("--std", default=None, metavar="R,G,B", help="user model: normalisation std (0-1 scale)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--impostors", type=click.IntRange(0), default=20_000, show_default=True,
              help="identity manifest: same-subgroup impostor pairs sampled per subgroup")
@click.option("--cross-impostors", type=click.IntRange(0), default=20_000, show_default=True,
              help="identity manifest: cross-group impostor pairs (reported apart)")
@click.option("--max-genuine", type=click.IntRange(1), default=50, show_default=True,
              help="identity manifest: at most this many genuine pairs per identity")
@click.option("--explain", type=click.IntRange(0), default=0, show_default=True,
              help="explain this many genuine pairs per subgroup (face-part shares of the match score)")
@click.option("--explain-method", type=click.Choice(["occlusion", "gradient"]), default="occlusion",
              show_default=True, help="gradient needs a torch model; dlib-face uses occlusion")
@click.option("--explain-pairs", type=click.Choice(["genuine", "impostor"]), default="genuine", show_default=True,
              help="genuine: why one person matches; impostor: the top-scoring impostor pairs (false matches)")
@click.option("--patch", type=click.IntRange(2), default=None, help="occlusion patch side (default: chip / 6)")
@click.option("--n-boot", type=click.IntRange(50), default=1000, show_default=True,
              help="bootstrap replicates (resampling identities)")
@click.option("--min-ratio", type=click.FloatRange(1), default=1.5, show_default=True,
              help="flag an error-rate gap only if high / low is at least this")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@handle_errors
def verify_audit_cmd(manifest: str, out: str, model: str, groups: tuple[str, ...], far: float,
                     chip_size: int | None, padding: float | None, landmarks: str | None, mean: str | None,
                     std: str | None, device: str, impostors: int, cross_impostors: int, max_genuine: int,
                     explain: int, explain_method: str, explain_pairs: str, patch: int | None, n_boot: int,
                     min_ratio: float,
                     seed: int, as_json: bool) -> None:
    """Audit a face matcher on MANIFEST (pairs: path_a,path_b,same,...; or identities: path,identity,...):
    FMR/FNMR at one global threshold per subgroup, TAR at FAR, per-subgroup thresholds, gap tests."""
    from tqdm import tqdm

    from ..verify import ChipRecipe, VerifyOptions, load_embedding_model, run_verify_audit

    recipe = None
    if any(v is not None for v in (chip_size, padding, landmarks, mean, std)):
        try:
            recipe = ChipRecipe(
                size=chip_size or 150,
                padding=0.25 if padding is None else padding,
                landmarks=int(landmarks or 5),
                mean=_triple(mean, "--mean") or (0.0, 0.0, 0.0),
                std=_triple(std, "--std") or (1.0, 1.0, 1.0),
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    emb = load_embedding_model(model, recipe=recipe, device=device)
    opts = VerifyOptions(far=far, n_boot=n_boot, seed=seed, min_ratio=min_ratio)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if as_json:
            return
        if stage not in bars:
            bars[stage] = tqdm(desc=stage, unit="image" if stage == "embedding" else "pair", total=total)
        bar = bars[stage]
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    res = run_verify_audit(manifest, out=out, model=emb, groups=list(groups), options=opts,
                           impostors_per_subgroup=impostors, cross_impostors=cross_impostors,
                           max_genuine_per_identity=max_genuine, explain=explain, explain_method=explain_method,
                           explain_pairs=explain_pairs, patch=patch, progress=progress)
    for bar in bars.values():
        bar.close()
    m = res.metrics
    summary = {
        "out": str(res.out_dir),
        "threshold": m["overall"]["threshold"],
        "fmr": m["overall"]["fmr"],
        "fnmr": m["overall"]["fnmr"],
        "subgroups": {g: {s: {k: e[k] for k in ("n_genuine", "n_impostor", "fmr", "fnmr", "threshold")}
                          for s, e in entry["subgroups"].items()} for g, entry in m["groupings"].items()},
        "flagged": m["flagged"],
        "warnings": m["warnings"],
        "files": {k: str(v) for k, v in res.files.items()},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    o = m["overall"]

    def num(x: float | None, spec: str = ".4g") -> str:
        return "n/a" if x is None else format(x, spec)

    click.echo(f"global threshold {num(o['threshold'], '.4f')} at FAR {far:g}: FMR {num(o['fmr'])}, "
               f"FNMR {num(o['fnmr'])} ({o['n_genuine']} genuine, {o['n_impostor']} impostor pairs)")
    for g, entry in summary["subgroups"].items():
        click.echo(f"{g}:")
        for s, e in entry.items():
            click.echo(f"  {s}: FMR {num(e['fmr'])}  FNMR {num(e['fnmr'])}  own threshold "
                       f"{num(e['threshold'], '.4f')}  ({e['n_genuine']} genuine, {e['n_impostor']} impostor)")
    for f in m["flagged"]:
        click.echo(f"FLAGGED {f['grouping']}: {f['metric']} {f['high_group']} {f['high']:.4g} vs "
                   f"{f['low_group']} {f['low']:.4g} (Holm p {f['p_adjusted']:.3g})")
    for w in m["warnings"]:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"wrote {res.out_dir}/metrics.json, pairs.csv, report.html")
