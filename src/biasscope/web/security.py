"""Which files a client may name: paths relative to the data root, refused when they leave it.

Absolute paths, ``..``, NUL characters and over-long names are refused (400); a path that resolves
outside the root (through a symbolic link) is refused (403). Routes that serve a stored file check
again, at read time, that it still resolves inside the root (:func:`inside`).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import BiasscopeError

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MSG_ABSOLUTE",
    "MSG_DOTDOT",
    "MSG_OUTSIDE",
    "MSG_RUN_OUTSIDE",
    "RUN_ID_RE",
    "PathRefusedError",
    "inside",
    "resolve_in_root",
]

MSG_ABSOLUTE = "{what} {path!r} is absolute; give a path relative to the data root"
MSG_DOTDOT = "{what} {path!r} contains '..'; give a path inside the data root"
MSG_OUTSIDE = "{what} {path!r} resolves outside the data root (a symbolic link?); it cannot be read"
MSG_NAME_TOO_LONG = "{what} has a folder or file name of {n} bytes; names are at most {limit} bytes"
MSG_PATH_TOO_LONG = "{what} is {n} bytes long; paths are at most {limit} bytes"
MSG_RUN_OUTSIDE = ("run {run_id!r} audited files outside this server's data root; its images and report "
                   "cannot be served")
#: A run id: a plain folder name in the runs directory.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_NAME_BYTES = 255  # the file systems' limit per name (NAME_MAX)
MAX_PATH_BYTES = 4096  # ... and per path (PATH_MAX)


class PathRefusedError(BiasscopeError):
    """A path resolves outside the data root."""

    status = 403


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (already resolved) lies in ``root``."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def resolve_in_root(root: Path, rel: Any, what: str = "path") -> Path:
    """``root / rel`` resolved, refusing absolute paths and ``..`` (400) and escapes via links (403)."""
    if not isinstance(rel, str) or not rel.strip():
        raise BiasscopeError(f"'{what}' must be a path relative to the data root")
    text = rel.strip()
    if "\x00" in text:
        raise BiasscopeError(f"{what} contains a NUL character")
    posix = text.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or PurePosixPath(posix).is_absolute():
        raise BiasscopeError(MSG_ABSOLUTE.format(what=what, path=text))
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        raise BiasscopeError(MSG_DOTDOT.format(what=what, path=text))
    longest = max((len(p.encode("utf-8", "surrogatepass")) for p in parts), default=0)
    if longest > MAX_NAME_BYTES:
        raise BiasscopeError(MSG_NAME_TOO_LONG.format(what=what, n=longest, limit=MAX_NAME_BYTES))
    total = len(posix.encode("utf-8", "surrogatepass"))
    if total > MAX_PATH_BYTES:
        raise BiasscopeError(MSG_PATH_TOO_LONG.format(what=what, n=total, limit=MAX_PATH_BYTES))
    base = root.resolve()
    try:
        full = base.joinpath(*parts).resolve()
    except OSError as exc:  # e.g. a symlink loop
        raise BiasscopeError(f"{what} {text[:200]!r} cannot be resolved: {exc.strerror or exc}") from None
    if not inside(full, base):
        raise PathRefusedError(MSG_OUTSIDE.format(what=what, path=text))
    return full
