"""The verification run's SQLite file (``verify.sqlite`` in the output folder, WAL).

It keeps the run's meta (model and settings, refused when they change), one embedding (or the error)
per image keyed by its file with a size-and-time stamp, and each explained pair's record and
heatmaps, so a killed run resumes where it stopped (see :mod:`biasscope.verify.runner`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..audit.store import init_store, json_safe, wal_connection
from ..errors import BiasscopeError

__all__ = ["DB_NAME", "VerifyStore"]

DB_NAME = "verify.sqlite"
MSG_CHANGED = ("{out} holds a verification run of a different {what}; use a new --out folder "
               "(or delete {db}) to audit this one")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    file TEXT PRIMARY KEY, stamp TEXT NOT NULL, status TEXT NOT NULL, error TEXT, dim INTEGER, vector BLOB);
CREATE TABLE IF NOT EXISTS explanations (
    key TEXT PRIMARY KEY, size INTEGER NOT NULL, record TEXT NOT NULL, heat_a BLOB NOT NULL, heat_b BLOB NOT NULL);
"""


class VerifyStore:
    """The run's SQLite file: meta, one embedding (or error) per image, explained pairs."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        with wal_connection(self.path) as conn:
            yield conn

    def init(self) -> None:
        """Create the tables (idempotent); a new store appears whole (:func:`~biasscope.audit.store.init_store`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        init_store(self.path, lambda conn: conn.executescript(_SCHEMA))

    def get_meta(self, key: str) -> object:
        with self.connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: object) -> None:
        with self.connect() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(json_safe(value))))

    def check_or_set(self, key: str, value: str, what: str) -> None:
        old = self.get_meta(key)
        if old is None:
            self.set_meta(key, value)
        elif old != value:
            raise BiasscopeError(MSG_CHANGED.format(out=self.run_dir, what=what, db=self.path))

    def stamps(self) -> dict[str, str]:
        """``{resolved image file: stamp}`` of every stored embedding (or error)."""
        with self.connect() as conn:
            return dict(conn.execute("SELECT file, stamp FROM embeddings").fetchall())

    def write_embeddings(self, rows: Sequence[tuple[str, str, np.ndarray | None, str | None]]) -> None:
        """One transaction: ``(file, stamp, vector or None, error or None)`` per image (replacing older ones)."""
        with self.connect() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)",
                [(f, st, "ok" if v is not None else "error", e, None if v is None else int(v.size),
                  None if v is None else np.asarray(v, dtype="<f8").tobytes()) for f, st, v, e in rows],
            )

    def embeddings(self, files: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Stored vectors and errors of ``files``."""
        want = set(files)
        vecs: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        with self.connect() as conn:
            for f, status, err, blob in conn.execute("SELECT file, status, error, vector FROM embeddings"):
                if f not in want:
                    continue
                if status == "ok":
                    vecs[f] = np.frombuffer(blob, dtype="<f8").copy()
                else:
                    errors[f] = err or "error"
        return vecs, errors

    def explanation(self, key: str) -> dict | None:
        with self.connect() as conn:
            row = conn.execute("SELECT size, record, heat_a, heat_b FROM explanations WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        size, rec, ha, hb = row
        d = json.loads(rec)
        d.update(heat_a=np.frombuffer(ha, dtype="<f4").reshape(size, size),
                 heat_b=np.frombuffer(hb, dtype="<f4").reshape(size, size))
        return d

    def write_explanation(self, key: str, record: dict, heat_a: np.ndarray, heat_b: np.ndarray) -> None:
        with self.connect() as conn:
            conn.execute("INSERT OR REPLACE INTO explanations VALUES (?, ?, ?, ?, ?)",
                         (key, int(heat_a.shape[0]), json.dumps(json_safe(record)),
                          np.asarray(heat_a, dtype="<f4").tobytes(), np.asarray(heat_b, dtype="<f4").tobytes()))
