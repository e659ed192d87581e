"""The user's own models: state dicts (with an architecture), biasscope checkpoints, ONNX, TorchScript.

Untrusted files are never unpickled: state dicts and checkpoints go through
``torch.load(weights_only=True)``; TorchScript goes through ``torch.jit.load``; ONNX through onnx.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelError

__all__ = [
    "CHECKPOINT_FORMAT",
    "load_checkpoint",
    "load_labels",
    "load_onnx",
    "load_state_dict",
    "load_torchscript",
    "onnx_file_bytes",
    "save_checkpoint",
]

#: Marker key of a biasscope checkpoint (state dict + labels + preprocessing, no pickled code).
CHECKPOINT_FORMAT = "biasscope_checkpoint"


def load_labels(path: str | Path) -> list[str]:
    """One class name per line (UTF-8 text); blank lines and surrounding spaces are ignored."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"labels file {p} not found (expected one class name per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        raise ModelError(f"labels file {p} is not UTF-8 text (a binary file?); expected one class name per line")
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise ModelError(f"labels file {p} is empty (expected one class name per line)")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ModelError(f"labels file {p} repeats class names: {', '.join(dup[:5])}")
    return names


def _first_reason(exc: BaseException, limit: int = 200) -> str:
    """The most telling sentence of an exception's message (no ANSI codes), or its type's name.

    torch's weights_only refusals bury the reason after 'WeightsUnpickler error:' (the object that
    is not a tensor, e.g. 'Unsupported global: GLOBAL print'); that sentence is taken when present.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (rest if marker else text).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    sentence = re.split(r"(?<=[^.\s]{2})\. ", lines[0], maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def _safe_load(path: Path) -> object:
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path} cannot be loaded safely as weights (torch.load with weights_only=True refused it: "
            f"{_first_reason(exc)}). It must hold only tensors: save it with "
            "torch.save(model.state_dict(), path), or export the model to TorchScript or ONNX."
        ) from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely; unwraps ``{'state_dict': ...}`` and DataParallel prefixes."""
    obj = _safe_load(Path(path))
    if isinstance(obj, dict) and (CHECKPOINT_FORMAT in obj or isinstance(obj.get("state_dict"), dict)):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(path: str | Path) -> dict | None:
    """A biasscope checkpoint dict if ``path`` is one, else ``None``."""
    p = Path(path)
    if p.suffix.lower() not in (".pt", ".pth", ".ckpt", ".bin"):
        return None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return obj if isinstance(obj, dict) and CHECKPOINT_FORMAT in obj else None


def save_checkpoint(
    path: str | Path,
    *,
    arch: str,
    state_dict: dict[str, torch.Tensor],
    class_names: list[str],
    input_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    extra: dict | None = None,
) -> None:
    """Save a checkpoint every biasscope command accepts as ``--model FILE`` (no pickled code)."""
    torch.save(
        {
            CHECKPOINT_FORMAT: 1,
            "arch": arch,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "class_names": list(class_names),
            "input_size": int(input_size),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "extra": extra or {},
        },
        path,
    )


def head_classes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> int | None:
    """Number of classes in ``state_dict`` for the architecture ``model`` (its last layer)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            last = name
    if last is None:
        return None
    w = state_dict.get(f"{last}.weight")
    return int(w.shape[0]) if w is not None else None


def load_torchscript(path: str | Path, device: torch.device) -> nn.Module:
    p = Path(path)
    try:
        return torch.jit.load(str(p), map_location=device)
    except Exception as exc:
        raise ModelError(
            f"{p} is not a loadable TorchScript file ({_first_reason(exc)}); save the model with "
            "torch.jit.save(torch.jit.script(model), path), or export it to ONNX"
        ) from None


def is_torchscript(path: str | Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_onnx(path: str | Path, *, check: bool = True) -> tuple[nn.Module, int | None, float | None]:
    """Convert an ONNX classifier to a differentiable torch module with onnx2torch.

    Returns ``(module, input_size_or_None, max_abs_diff_vs_onnxruntime_or_None)``. With ``check``
    the converted module's outputs are compared with onnxruntime's on a random input and a
    :class:`ModelError` is raised if they disagree.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ONNX file {p} not found")
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise ModelError("ONNX support needs the onnx extra: pip install 'biasscope[onnx]'") from None
    from .onnx_ops import register_onnx_converters

    register_onnx_converters()  # e.g. opset 18's Pad
    if p.stat().st_size == 0:
        raise ModelError(f"ONNX file {p} is empty (0 bytes)")
    try:
        proto = onnx.load(str(p))
    except Exception as exc:
        raise ModelError(f"{p} is not an ONNX model: it cannot be parsed ({_first_reason(exc)})") from None
    if not proto.graph.node or not proto.graph.input:
        raise ModelError(f"{p} is not an ONNX model: it holds no graph (is it a complete .onnx export?)")
    try:
        module = convert(proto)
    except Exception as exc:
        raise ModelError(f"could not convert ONNX model {p}: {_first_reason(exc)}") from None
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else None for d in dims]
    size = shape[2] if len(shape) == 4 and shape[2] and shape[2] == shape[3] else None
    batch_fixed = shape[0] if shape and shape[0] else None
    diff = None
    if check:
        diff = _compare_onnxruntime(p, module, size or 224, batch_fixed or 2)
    module.eval()
    return module, size, diff


def onnx_file_bytes(path: str | Path) -> bytes:
    """The ONNX file as one self-contained model, for ONNX Runtime to run the user's graph unchanged.

    The file's own bytes, unless its weights live in external data files: those are inlined (which
    raises ``ValueError`` for a model over protobuf's 2 GB limit).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    p = Path(path)
    raw = p.read_bytes()
    proto = onnx.load_model_from_string(raw)
    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return raw
    load_external_data_for_model(proto, str(p.parent))
    return proto.SerializeToString()


def _compare_onnxruntime(path: Path, module: nn.Module, size: int, batch: int) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    if isinstance(out, list | tuple):
        out = out[0]
    diff = float(np.abs(out.numpy() - ref).max())
    scale = float(np.abs(ref).max()) + 1e-6
    if diff > 1e-3 * max(1.0, scale):
        raise ModelError(
            f"ONNX model {path} converted with onnx2torch disagrees with onnxruntime "
            f"(max abs difference {diff:.3g}); it cannot be explained reliably"
        )
    return diff
