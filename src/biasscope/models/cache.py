"""A small persistent cache of one-off work, shared by processes: measured batch sizes, ONNX exports.

Measuring the best batch size costs seconds (tens on a loaded machine) and its answer only depends on
the model's architecture and the machine, so it is kept across processes: a CLI call or a notebook
pays for it once per machine, not once per process. The same holds for a model's ONNX export (seconds),
keyed by a digest of its weights. Entries live in ``$BIASSCOPE_CACHE_DIR``, else
``$XDG_CACHE_HOME/biasscope``, else ``~/.cache/biasscope``; ``BIASSCOPE_CACHE_DIR=off`` disables it.

One JSON file per key (named by the key's hash and holding the key itself), written to a temporary
file and renamed into place (``os.replace``): concurrent processes never see a half-written entry and
never lose each other's entries. A missing, unreadable, corrupt or foreign entry reads as a miss.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["cache_dir", "cpu_model", "model_fingerprint", "read_blob", "read_entry", "weights_digest", "write_blob",
           "write_entry"]

#: values that turn the cache off when given as BIASSCOPE_CACHE_DIR
DISABLED = ("", "0", "off", "none", "false", "no")


def cache_dir() -> Path | None:
    """The cache directory, or None when ``BIASSCOPE_CACHE_DIR`` turns the cache off."""
    env = os.environ.get("BIASSCOPE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in DISABLED else Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "biasscope"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def model_fingerprint(model: nn.Module) -> str:
    """A cheap digest of what decides a model's speed: its module tree (types), and each parameter's
    and buffer's name, shape, dtype, device and memory layout; not the values (no hashing of weights)."""
    h = hashlib.sha256()
    for name, m in model.named_modules():
        h.update(f"m|{name}|{getattr(m, 'original_name', type(m).__qualname__)}\n".encode())
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        h.update(f"t|{name}|{tuple(t.shape)}|{t.dtype}|{t.device}|{'cl' if cl else 'c'}\n".encode())
    return h.hexdigest()[:32]


def _path(kind: str, key: dict[str, Any]) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return root / kind / f"{digest}.json"


def read_entry(kind: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored value for ``key``, or None: missing, unreadable, corrupt or another key's entry."""
    path = _path(kind, key)
    if path is None:
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(key)):
        return None
    value = entry.get("value")
    return value if isinstance(value, dict) else None


def write_entry(kind: str, key: dict[str, Any], value: dict[str, Any]) -> bool:
    """Store ``value`` for ``key`` atomically; False (and nothing stored) where the directory is not
    writable: the cache only saves time, it never makes a caller fail."""
    path = _path(kind, key)
    data = json.dumps({"key": key, "value": value}, sort_keys=True).encode("utf-8")
    return path is not None and _write_atomic(path, data)


def _write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to a temporary file beside ``path``, then ``os.replace`` it: readers see the old
    file or the new one, never a partial one. False (and the temporary file removed) on any OS error."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False



def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter's and buffer's values (and names, shapes, dtypes): what a cached
    artefact derived from the weights themselves (an exported graph) is keyed by. About 1 GB/s."""
    h = hashlib.blake2b(digest_size=20)
    h.update(model_fingerprint(model).encode())
    for _, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _blob_path(kind: str, key: dict[str, Any], suffix: str) -> Path | None:
    path = _path(kind, key)
    return None if path is None else path.with_suffix(suffix)


def read_blob(kind: str, key: dict[str, Any], suffix: str = ".bin") -> bytes | None:
    """The bytes stored for ``key`` (the file's name is the key's hash), or None."""
    path = _blob_path(kind, key, suffix)
    try:
        return path.read_bytes() if path is not None else None
    except OSError:
        return None


def write_blob(kind: str, key: dict[str, Any], data: bytes, suffix: str = ".bin") -> bool:
    """Store ``data`` for ``key`` atomically (temporary file, then ``os.replace``); False if not stored."""
    path = _blob_path(kind, key, suffix)
    return path is not None and _write_atomic(path, data)
