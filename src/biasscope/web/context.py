"""The running app's shared state and the public form of messages, for routes (which the app factory in
:mod:`biasscope.web.app` registers, so routes import this module rather than the factory's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, current_app

from .paths import HUB_NAME, scrub_paths

if TYPE_CHECKING:
    from .app import WebState

__all__ = ["public_message", "state"]


def state(app: Flask | None = None) -> WebState:
    """The app's :class:`~biasscope.web.app.WebState` (models, images, jobs, audits)."""
    return (app or current_app).extensions["biasscope"]


def public_message(text: str) -> str:
    """A message as clients see it: no absolute server paths (data root, runs, weights cache, uploads)."""
    from ..models.zoo import hub_checkpoint_dir

    st = state()
    if st.audits is not None:
        text = st.audits.public(text)
    return scrub_paths(text, [(hub_checkpoint_dir(), HUB_NAME), (Path(st.images.root), "uploads")])
