"""One registry of explainers: names feed the CLI choices, web forms and validation.

Adding a method is one new module in :mod:`biasscope.explainers` with a ``@register``-ed class:
:func:`discover` imports every module of the package whose name does not start with ``_`` (private
helpers such as ``_cam``), and listings follow each class's ``order`` (then its name), not the order
of the imports."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from ..errors import ExplainerError
from .base import Explainer

__all__ = ["EXPLAINERS", "discover", "get_explainer", "is_signed", "list_explainers", "register"]

EXPLAINERS: dict[str, type[Explainer]] = {}
ALIASES: dict[str, str] = {}


def register(cls: type[Explainer] | None = None, *, aliases: tuple[str, ...] = ()):
    """Class decorator: ``@register`` or ``@register(aliases=("ig",))``."""

    def deco(c: type[Explainer]) -> type[Explainer]:
        if c.name in EXPLAINERS and EXPLAINERS[c.name] is not c:
            raise ValueError(f"explainer {c.name!r} registered twice")
        EXPLAINERS[c.name] = c
        ranked = sorted(EXPLAINERS.values(), key=lambda e: (e.order, e.name))
        EXPLAINERS.clear()
        EXPLAINERS.update((e.name, e) for e in ranked)  # kept in listing order
        for a in aliases:
            ALIASES[a] = c.name
        return c

    return deco(cls) if cls is not None else deco


def get_explainer(name: str) -> type[Explainer]:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in EXPLAINERS:
        raise ExplainerError(f"unknown method {name!r}; choose from {', '.join(EXPLAINERS)}")
    return EXPLAINERS[key]


def list_explainers() -> list[type[Explainer]]:
    """Every registered method in listing order (``order``, then name)."""
    return list(EXPLAINERS.values())


def discover(package: str, path: list[str]) -> list[str]:
    """Import every module of ``package`` (found on ``path``) whose name does not start with ``_``,
    alphabetically, so that their ``@register`` decorators run; returns the modules' names.
    ``base`` and ``registry`` (this machinery) are skipped."""
    names = sorted(m.name for m in pkgutil.iter_modules(path)
                   if not m.name.startswith("_") and m.name not in ("base", "registry"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


def is_signed(method: str, params: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Whether ``method``'s maps are signed with the parameters it ran with: ``params`` maps method
    names (as asked for, or the registry name) to their parameters, like an audit's ``method_params``.
    Stored maps are drawn with the colour map this says (a signed map never gets the unsigned one)."""
    cls = get_explainer(method)
    params = params or {}
    try:
        config = cls.configure(params.get(method, params.get(cls.name)))
    except ExplainerError:  # a run stored by a version with other parameters: the method's default
        return cls.signed
    return cls.signed_for(config)
