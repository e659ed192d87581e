"""Options shared by every command that loads a model, and clean error reporting."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import BiasscopeError

__all__ = ["PER_MODEL_OPTIONS", "FiniteFloat", "adapter_from_options", "handle_errors", "model_options",
           "parse_method_params", "split_model_options"]

#: the model of predict/explain without --model, and the one used when its weights are missing
DEFAULT_MODEL = "resnet18"
DEFAULT_FALLBACK = "mobilenet_v2"


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and inf (a range check lets nan through)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if rv is not None and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


#: options that describe one model (repeatable per --model in ``audit``); the others apply to all models
PER_MODEL_OPTIONS = ("weights", "labels", "input_size", "mean", "std", "target_layer")


def model_options(fn: Callable | None = None, *, several: bool = False) -> Callable:
    """``--model --weights --labels --input-size --mean --std --device --precision --backend --download
    --target-layer --classes --prompt --pretrained``.

    With ``several`` (``audit``), ``--model`` is repeatable and required, and so are the per-model options
    (:data:`PER_MODEL_OPTIONS`): given once, an option applies to every model; given once per ``--model``,
    the n-th value goes to the n-th model (see :func:`split_model_options`).
    """
    if fn is None:
        return functools.partial(model_options, several=several)
    each = " (once for every --model, or once per --model in the same order)" if several else ""
    opts = [
        click.option("--model", "models" if several else "model", multiple=several, required=several,
                     default=None,
                     help=("model to audit (repeatable): " if several else
                           f"[default: {DEFAULT_MODEL}, or {DEFAULT_FALLBACK} when {DEFAULT_MODEL}'s weights are not "
                           "on this machine] ")
                     + "torchvision model name (e.g. resnet18, mobilenet_v2:IMAGENET1K_V1, vit_b_16), timm:NAME, "
                     "hf:ID or a transformers folder, clip:ARCH (with --pretrained and --classes), a packaged face "
                     "model (gender, age), or a .onnx / TorchScript / biasscope checkpoint file"
                     + (", or ARCH=STATE_DICT.pth" if several else "")),
        click.option("--weights", type=click.Path(dir_okay=False), default=None, multiple=several,
                     help="state dict for the --model architecture (loaded with weights_only=True)"
                     + (" (once per --model, in the same order)" if several else "")),
        click.option("--labels", type=click.Path(dir_okay=False), default=None, multiple=several,
                     help="class names, one per line" + each),
        click.option("--input-size", type=click.IntRange(16, 2048), default=None, multiple=several,
                     help="square input size (default: from the model)" + each),
        click.option("--mean", default=None, metavar="R,G,B", multiple=several,
                     help="normalisation mean (0-1 scale)" + each),
        click.option("--std", default=None, metavar="R,G,B", multiple=several,
                     help="normalisation std (0-1 scale)" + each),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32",
                     show_default=True, help="dtype of gradient-free forwards; auto = bf16 where the hardware "
                     "runs it natively, checked against fp32 on representative photos (else fp32)"),
        click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
                     show_default=True,
                     help="engine for gradient-free fp32 forwards (auto: ONNX Runtime where it matches PyTorch)"),
        click.option("--download", is_flag=True, help="allow downloading torchvision weights"),
        click.option("--target-layer", default=None, multiple=several,
                     help="layer for CAM methods (dotted module path)" + each),
        click.option("--classes", default=None, metavar="A,B,...|FILE",
                     help="CLIP: the classes to choose between (comma-separated, or a file with one per line)"),
        click.option("--prompt", "prompts", multiple=True, metavar="TEMPLATE",
                     help='CLIP: prompt template with {} for the class, e.g. "a photo of a {}." (repeatable; '
                          "the embeddings are averaged; default: six generic photo prompts)"),
        click.option("--pretrained", default=None, metavar="TAG|FILE",
                     help="CLIP: open_clip weights tag (e.g. laion2b_s34b_b79k) or file; 'random' for tests"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def split_model_options(kw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Pop ``model_options(several=True)`` from ``kw``: one ``(spec, load_model options)`` per ``--model``.

    A per-model option given once applies to every model; given as many times as ``--model``, the
    n-th value goes to the n-th model; any other count is refused (it would be ambiguous), and so is
    one ``--weights`` for several models (one state dict cannot fit several models).
    """
    specs: tuple[str, ...] = kw.pop("models")
    shared = {k: kw.pop(k) for k in ("device", "precision", "backend", "download")}
    # CLIP's classes, prompts and weights tag go to every clip:ARCH model (the manifest's labels are its classes)
    clip = {"classes": kw.pop("classes", None), "prompts": list(kw.pop("prompts", None) or ()) or None,
            "pretrained": kw.pop("pretrained", None)}
    per: dict[str, tuple] = {k: tuple(kw.pop(k) or ()) for k in PER_MODEL_OPTIONS}
    out: list[tuple[str, dict[str, Any]]] = [
        (s, dict(shared) | (clip if s.lower().startswith("clip:") else {})) for s in specs]
    for k, vals in per.items():
        flag = "--" + k.replace("_", "-")
        if len(vals) not in (0, 1, len(specs)):
            raise click.BadParameter(
                f"given {len(vals)} times for {len(specs)} --model: give it once (it applies to every model) "
                f"or once per --model, in the same order", param_hint=flag)
        if k == "weights" and len(vals) == 1 and len(specs) > 1:
            raise click.BadParameter(
                f"one state dict for {len(specs)} --model is ambiguous: give --weights once per --model, in the "
                "same order, or name each state dict in the model, e.g. --model resnet18=finetuned.pth",
                param_hint=flag)
        for i, (spec, opts) in enumerate(out):
            v = vals[0] if len(vals) == 1 else (vals[i] if vals else None)
            if k == "weights" and v is not None and "=" in spec:
                raise click.BadParameter(f"--model {spec!r} already names its state dict (ARCH=FILE); "
                                         "drop --weights for it or give --model ARCH", param_hint=flag)
            opts[k] = v
    return out


def default_model(weights: str | None) -> str:
    """The model used without ``--model``: resnet18, or MobileNetV2 (whose real weights ship in a package)
    when resnet18's are not on this machine and no ``--weights`` are given; the switch is said on stderr."""
    from ..models.zoo import zoo_status

    if weights is not None:
        return DEFAULT_MODEL
    first = zoo_status(DEFAULT_MODEL)
    if first.ready or not zoo_status(DEFAULT_FALLBACK).ready:
        return DEFAULT_MODEL  # ready, or its error message says how to get it
    click.echo(f"note: {DEFAULT_MODEL} weights are not on this machine, so {DEFAULT_FALLBACK} (real ImageNet "
               f"weights) is used; pass --model to choose. To use {DEFAULT_MODEL}: {first.fix}", err=True)
    return DEFAULT_FALLBACK


def adapter_from_options(kw: dict[str, Any]):
    """Pop the model options from ``kw`` and load the model (:func:`default_model` without ``--model``)."""
    from ..models import load_model

    model = kw.pop("model")
    return load_model(
        model if model is not None else default_model(kw["weights"]),
        weights=kw.pop("weights"),
        labels=kw.pop("labels"),
        input_size=kw.pop("input_size"),
        mean=kw.pop("mean"),
        std=kw.pop("std"),
        device=kw.pop("device"),
        precision=kw.pop("precision"),
        backend=kw.pop("backend"),
        download=kw.pop("download"),
        target_layer=kw.pop("target_layer"),
        classes=kw.pop("classes"),
        prompts=kw.pop("prompts") or None,
        pretrained=kw.pop("pretrained"),
    )


def parse_method_params(items: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``--param lime.num_samples=500`` -> ``{"lime": {"num_samples": 500}}``, each value parsed and
    checked by the method's declared parameter (the registry's one validation); bools read
    true/false, 1/0 or yes/no. Unknown names are left for the method to refuse with its list."""
    from ..explainers import get_explainer

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise click.BadParameter(f"{item!r}: expected METHOD.NAME=VALUE", param_hint="--param")
        cls = get_explainer(method.strip())
        declared = {p.name: p for p in cls.params}
        name = name.strip()
        parsed: Any = declared[name].parse_text(value) if name in declared else value.strip()
        out.setdefault(cls.name, {})[name] = parsed
    return out


def handle_errors(fn: Callable) -> Callable:
    """Turn BiasscopeError (and an OSError about a file, e.g. a name over 255 bytes or no permission)
    into a one-line message and exit code 2 (JSON with --json)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (BiasscopeError, OSError) as exc:
            if isinstance(exc, OSError):  # a path the user gave: too long, unreadable, a folder, ...
                if exc.strerror is None:
                    raise
                where = f"{str(exc.filename)[:300]}: " if exc.filename else ""
                message = f"{where}{exc.strerror}"
            else:
                message = str(exc)
            if kwargs.get("as_json"):
                click.echo(json.dumps({"error": type(exc).__name__, "message": message}))
            else:
                click.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper
