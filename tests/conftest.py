"""Suite-wide fixtures: the tests never read or write the user's real cache directory.

biasscope keeps measured batch sizes in ``$BIASSCOPE_CACHE_DIR`` (default ``~/.cache/biasscope``).
The whole run (collection and session-scoped fixtures included) gets a temporary one, and every test
its own empty one, so a test that counts measurements never reads another test's entries, and
subprocesses the tests start inherit the same setting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR: str | None = None
_SAVED: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_DIR, _SAVED
    _SAVED = os.environ.get("BIASSCOPE_CACHE_DIR")
    _SESSION_DIR = tempfile.mkdtemp(prefix="biasscope-test-cache-")
    os.environ["BIASSCOPE_CACHE_DIR"] = _SESSION_DIR


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SAVED is None:
        os.environ.pop("BIASSCOPE_CACHE_DIR", None)
    else:
        os.environ["BIASSCOPE_CACHE_DIR"] = _SAVED
    if _SESSION_DIR:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory for this test alone."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BIASSCOPE_CACHE_DIR", str(path))
    return path
