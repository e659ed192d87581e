"""``train`` and ``compare`` commands: thin wrappers over :mod:`biasscope.training`."""

from __future__ import annotations

import json

import click

from ..explainers import SEED_MAX
from ._common import FiniteFloat, handle_errors

__all__ = ["compare_cmd", "train_cmd"]


@click.command("train")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="output folder")
@click.option("--target", default="label", show_default=True, help="column with the class to learn")
@click.option("--group", default="group", show_default=True, help="column with the group (for sampling, metrics)")
@click.option("--backbone", default="resnet18", show_default=True, help="torchvision architecture (name[:WEIGHTS])")
@click.option("--pretrained", is_flag=True, help="start from cached torchvision weights (fails clearly if missing)")
@click.option("--download", is_flag=True, help="with --pretrained: allow downloading the weights")
@click.option("--freeze-backbone", is_flag=True, help="train only the classification head")
@click.option("--input-size", type=click.IntRange(16, 1024), default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--lr", type=FiniteFloat(0, 10, min_open=True), default=1e-3, show_default=True)
@click.option("--weight-decay", type=FiniteFloat(0, 10), default=0.0, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--val-fraction", type=FiniteFloat(0, 1), default=0.2, show_default=True,
              help="share of each label x group cell held out for validation")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="random seed (0 to 2**32-1)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--sampling", type=click.Choice(["as-is", "skew", "balanced-group", "balanced-label-group"]),
              default="as-is", show_default=True)
@click.option("--proportions", default=None, metavar="G=P,...", help="group shares for --sampling skew")
@click.option("--reweight", type=click.Choice(["none", "group", "label-group"]), default="none", show_default=True,
              help="inverse-frequency loss weights")
@click.option("--augment", type=click.Choice(["none", "standard"]), default="none", show_default=True)
@click.option("--strong-augment", default=None, metavar="G,...|auto",
              help="groups that get stronger augmentation ('auto': groups below the uniform share)")
@click.option("--patience", type=click.IntRange(0, 10000), default=3, show_default=True,
              help="early stopping: epochs without a lower validation loss (0: off)")
@click.option("--generator", "generator_spec", default=None, metavar="MODULE:CALLABLE",
              help="your image generator (see biasscope.training.ImageGenerator)")
@click.option("--synthesize", multiple=True, metavar="GROUP=N",
              help="with --generator: N synthetic images per label for GROUP (repeatable)")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="folder bounding the manifest's paths")
@click.option("--no-plots", is_flag=True, help="skip the PNG/SVG curves")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@handle_errors
def train_cmd(manifest: str, out_dir: str, generator_spec: str | None, synthesize: tuple[str, ...], root: str | None,
              no_plots: bool, quiet: bool, as_json: bool, strong_augment: str | None, patience: int,
              **kw) -> None:
    """Fine-tune a torchvision backbone on MANIFEST (path,label,<group>) and save OUT/model.pt."""
    from ..errors import BiasscopeError
    from ..training import TrainConfig, add_synthetic_images, load_generator, parse_counts, train

    strong = [s.strip() for s in (strong_augment or "").split(",") if s.strip()]
    cfg = TrainConfig(strong_augment=strong, patience=patience or None, **kw)
    source: object = manifest
    if synthesize and not generator_spec:
        raise BiasscopeError("--synthesize needs --generator MODULE:CALLABLE")
    if generator_spec:
        counts = parse_counts(synthesize)
        if not counts:
            raise BiasscopeError("--generator needs --synthesize GROUP=N")
        source = add_synthetic_images(manifest, load_generator(generator_spec), counts, out_dir, group=cfg.group,
                                      target=cfg.target, seed=cfg.seed, root=root)
    res = train(source, out_dir, cfg, root=root, show_progress=not (quiet or as_json), plots=not no_plots)
    best = next(h for h in res.history if h["epoch"] == res.best_epoch)
    if as_json:
        click.echo(json.dumps(res.to_dict() | {"best": best}, indent=2))
        return
    click.echo(f"trained {cfg.backbone} on {res.n_train} images (validation {res.n_val}); best epoch {res.best_epoch}"
               + (" (stopped early)" if res.stopped_early else ""))
    if best["val_accuracy"] is not None:
        groups = ", ".join(f"{g} {d['accuracy']:.1%}" for g, d in best["val_by_group"].items())
        click.echo(f"validation accuracy {best['val_accuracy']:.1%} ({groups})")
    click.echo(f"wrote {res.checkpoint} (use it as --model {res.checkpoint})")


@click.command("compare")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--model", "models", multiple=True, required=True,
              help="model to compare (repeat; the first is the baseline): checkpoint file or torchvision name")
@click.option("--name", "names", multiple=True, help="display name per --model, in order")
@click.option("--group", default="group", show_default=True, help="group column")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--root", type=click.Path(file_okay=False), default=None, help="folder bounding the manifest's paths")
@click.option("--bootstrap", "n_boot", type=click.IntRange(100, 100000), default=1000, show_default=True)
@click.option("--permutations", "n_perm", type=click.IntRange(100, 100000), default=1000, show_default=True)
@click.option("--confidence", type=FiniteFloat(0.5, 0.999), default=0.95, show_default=True)
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="random seed (0 to 2**32-1)")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an earlier comparison in --out")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@handle_errors
def compare_cmd(manifest: str, models: tuple[str, ...], names: tuple[str, ...], group: str, out_dir: str,
                root: str | None, n_boot: int, n_perm: int, confidence: float, seed: int, batch_size: int,
                device: str, overwrite: bool, as_json: bool) -> None:
    """Audit two or more models on the same held-out MANIFEST and compare them with the first."""
    from tqdm import tqdm

    from ..training import compare_models

    bar = tqdm(total=None, desc="auditing", unit="img", disable=as_json)

    def progress(p) -> None:
        bar.total = p.total_all
        bar.n = p.done_all
        bar.set_postfix_str(p.model)
        bar.refresh()

    try:
        res = compare_models(manifest, list(models), out_dir, group=group, names=list(names) or None, root=root,
                             n_boot=n_boot, n_perm=n_perm, confidence=confidence, seed=seed, batch_size=batch_size,
                             device=device, overwrite=overwrite, progress=progress)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    for line in res["summary"]:
        click.echo(line)
    click.echo(f"wrote {out_dir}/compare.json, compare.md and the audit in {res['audit_dir']}")
