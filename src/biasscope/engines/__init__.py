"""Engines: where an audit's batches are computed. ``local`` (default) or ``ray`` (a Ray cluster).

Both write the same results: the runner owns the store, resuming and cancelling; an engine only
maps batches of manifest rows to per-image results (see :class:`Engine`).
"""

from __future__ import annotations

from typing import Any

from ..errors import BiasscopeError
from .base import BatchResult, Engine
from .local import LocalEngine
from .ray_engine import MSG_NO_RAY, RayEngine

__all__ = ["ENGINES", "MSG_NO_RAY", "BatchResult", "Engine", "LocalEngine", "RayEngine", "get_engine"]

ENGINES: dict[str, type[Engine]] = {"local": LocalEngine, "ray": RayEngine}


def get_engine(engine: Engine | str | None = None, **options: Any) -> Engine:
    """An engine instance: ``None`` -> local; a name (``local``, ``ray``) with its options; or as given."""
    if engine is None:
        return LocalEngine()
    if isinstance(engine, Engine):
        return engine
    key = str(engine).strip().lower()
    if key not in ENGINES:
        raise BiasscopeError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if key == "local":
        if any(v is not None for v in options.values()):
            raise BiasscopeError(f"the local engine takes no options (got {', '.join(sorted(options))})")
        return LocalEngine()
    return ENGINES[key](**{k: v for k, v in options.items() if v is not None})
