"""Options shared by every command that loads a model, and clean error reporting."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import BiasscopeError

__all__ = ["adapter_from_options", "handle_errors", "model_options", "parse_method_params"]


def model_options(fn: Callable) -> Callable:
    """``--model --weights --labels --input-size --mean --std --device --precision --backend --download
    --target-layer --classes --prompt --pretrained``."""
    opts = [
        click.option("--model", "model", default="resnet18", show_default=True,
                     help="torchvision model name (e.g. resnet18, mobilenet_v2:IMAGENET1K_V1, vit_b_16), "
                          "timm:NAME, hf:ID or a transformers folder, clip:ARCH (with --pretrained and --classes), "
                          "or a .onnx / TorchScript / biasscope checkpoint file"),
        click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="state dict for the --model architecture (loaded with weights_only=True)"),
        click.option("--labels", type=click.Path(dir_okay=False), default=None,
                     help="class names, one per line"),
        click.option("--input-size", type=click.IntRange(16, 2048), default=None,
                     help="square input size (default: from the model)"),
        click.option("--mean", default=None, metavar="R,G,B", help="normalisation mean (0-1 scale)"),
        click.option("--std", default=None, metavar="R,G,B", help="normalisation std (0-1 scale)"),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32",
                     show_default=True, help="dtype of gradient-free forwards; auto = bf16 where the hardware "
                     "runs it natively, checked against fp32 on the first job (else fp32)"),
        click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
                     show_default=True,
                     help="engine for gradient-free fp32 forwards (auto: ONNX Runtime where it matches PyTorch)"),
        click.option("--download", is_flag=True, help="allow downloading torchvision weights"),
        click.option("--target-layer", default=None, help="layer for CAM methods (dotted module path)"),
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


def adapter_from_options(kw: dict[str, Any]):
    """Pop the model options from ``kw`` and load the model."""
    from ..models import load_model

    return load_model(
        kw.pop("model"),
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


def parse_method_params(items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``--param lime.num_samples=500`` -> ``{"lime": {"num_samples": "500"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise click.BadParameter(f"{item!r}: expected METHOD.NAME=VALUE", param_hint="--param")
        out.setdefault(method.strip(), {})[name.strip()] = value.strip()
    return out


def handle_errors(fn: Callable) -> Callable:
    """Turn BiasscopeError into a one-line message and exit code 2 (JSON with --json)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BiasscopeError as exc:
            if kwargs.get("as_json"):
                click.echo(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            else:
                click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper
