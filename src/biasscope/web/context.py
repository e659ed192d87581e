"""The running app's shared state and the public form of messages, for routes (which the app factory in
:mod:`biasscope.web.app` registers, so routes import this module rather than the factory's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from .jobs import JobManager
from .paths import HUB_NAME, scrub_paths
from .state import ImageStore, ModelRegistry

__all__ = ["WebState", "public_message", "state"]


@dataclass
class WebState:
    """Everything the routes share: models, uploaded images and jobs."""

    models: ModelRegistry
    images: ImageStore
    jobs: JobManager
    audits: Any = None  # web.audit_manager.AuditManager (it imports this module)

    def close(self) -> None:
        self.jobs.shutdown()
        self.images.close()
        if self.audits is not None:
            self.audits.shutdown()


def state(app: Flask | None = None) -> WebState:
    """The app's :class:`WebState` (models, images, jobs, audits)."""
    return (app or current_app).extensions["biasscope"]


def public_message(text: str) -> str:
    """A message as clients see it: no absolute server paths (data root, runs, weights cache, uploads)."""
    from ..models.zoo import hub_checkpoint_dir

    st = state()
    if st.audits is not None:
        text = st.audits.public(text)
    return scrub_paths(text, [(hub_checkpoint_dir(), HUB_NAME), (Path(st.images.root), "uploads")])
