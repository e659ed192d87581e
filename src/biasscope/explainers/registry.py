"""One registry of explainers: names feed the CLI choices, web forms and validation."""

from __future__ import annotations

from ..errors import ExplainerError
from .base import Explainer

__all__ = ["EXPLAINERS", "get_explainer", "list_explainers", "register"]

EXPLAINERS: dict[str, type[Explainer]] = {}
ALIASES: dict[str, str] = {}


def register(cls: type[Explainer] | None = None, *, aliases: tuple[str, ...] = ()):
    """Class decorator: ``@register`` or ``@register(aliases=("ig",))``."""

    def deco(c: type[Explainer]) -> type[Explainer]:
        if c.name in EXPLAINERS and EXPLAINERS[c.name] is not c:
            raise ValueError(f"explainer {c.name!r} registered twice")
        EXPLAINERS[c.name] = c
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
    return list(EXPLAINERS.values())
