"""Server paths in messages sent to clients: relative to the data root, or the cache's documented name.

A message from the core (a manifest problem, missing weights) names absolute paths on the server;
a web client needs the path it gave (relative to the data root) and learns nothing from the rest.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["HUB_NAME", "scrub_paths"]

#: How messages name torch hub's weights folder (``torch.hub.get_dir()/checkpoints``).
HUB_NAME = "$TORCH_HOME/hub/checkpoints"


def _variants(path: Path) -> list[str]:
    out = {str(path)}
    with contextlib.suppress(OSError):
        out.add(str(path.resolve()))
    return [p.rstrip("/") for p in out if p.rstrip("/")]


def scrub_paths(text: str, places: Iterable[tuple[Path | None, str]]) -> str:
    """``text`` with each ``(folder, name)``'s folder replaced: ``folder/x`` -> ``name/x`` (``x`` alone
    when ``name`` is empty), ``folder`` -> ``name`` (or 'the data root'). Longer folders go first, so a
    runs folder inside the data root is named as such."""
    pairs = [(v, name) for folder, name in places if folder is not None for v in _variants(Path(folder))]
    for folder, name in sorted(pairs, key=lambda p: len(p[0]), reverse=True):
        text = re.sub(re.escape(folder) + "/", (f"{name}/" if name else "").replace("\\", "\\\\"), text)
        text = re.sub(re.escape(folder) + r"(?![\w-]|\.\w)", (name or "the data root").replace("\\", "\\\\"), text)
    return text
