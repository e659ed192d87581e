"""The embedded run store: one SQLite file in RUN_DIR, written batch by batch.

Each batch of results (one row per model x image, plus its small heatmaps) is committed in one
transaction, so a run killed at any moment leaves only whole batches behind; restarting it skips
the committed images. ``(model, image_id)`` is the primary key: a row can never be written twice.
WAL mode lets readers (the web dashboard) follow a run while it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BiasscopeError
from .values import ImageResult, json_safe

__all__ = ["DB_NAME", "RUNS_SUBDIR", "RunStore", "init_store", "json_safe", "wal_connection"]

#: where a data root keeps its audit runs unless told otherwise (``biasscope serve --runs-dir``)
RUNS_SUBDIR = ".biasscope-runs"

DB_NAME = "audit.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY, line INTEGER, path TEXT NOT NULL, file TEXT NOT NULL,
    label TEXT NOT NULL, attributes TEXT NOT NULL, regions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    key TEXT PRIMARY KEY, position INTEGER NOT NULL, info TEXT NOT NULL, fingerprint TEXT);
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL, image_id INTEGER NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (model, image_id));
CREATE TABLE IF NOT EXISTS heatmaps (
    model TEXT NOT NULL, image_id INTEGER NOT NULL, method TEXT NOT NULL,
    h INTEGER NOT NULL, w INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (model, image_id, method));
"""


def _dumps(obj: Any) -> str:
    return json.dumps(json_safe(obj), allow_nan=False)


@contextlib.contextmanager
def wal_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A SQLite connection in WAL mode (readers never block the writer): commits on success, rolls back
    on error, always closes. Shared by the audit and verification stores."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with conn:
            yield conn
    finally:
        conn.close()


def init_store(path: Path, create: Callable[[sqlite3.Connection], None]) -> None:
    """Run ``create`` (idempotent DDL) on the SQLite file ``path``. A new file is built under a temporary name
    and moved into place, so a reader (a dashboard polling a run that is starting) sees either no store or one
    with its tables, never an empty file. Shared by the audit and verification stores."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with wal_connection(tmp) as conn:
                create(conn)
            os.replace(tmp, path)  # the connection is closed: its WAL was checkpointed and removed
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)
    with wal_connection(path) as conn:
        create(conn)


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


class RunStore:
    """Access to one run's SQLite file. Every method opens its own short-lived connection."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in WAL mode; commits on success, rolls back on error, always closes."""
        if not self.path.parent.is_dir():
            raise BiasscopeError(f"run folder {self.run_dir} not found")
        with wal_connection(self.path) as conn:
            yield conn

    def init(self) -> None:
        """Create the tables (idempotent); a new store appears whole (:func:`init_store`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        init_store(self.path, _create_tables)

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        if not self.exists:
            return default
        with self.connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self.connect() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _dumps(value)))

    def all_meta(self) -> dict[str, Any]:
        with self.connect() as conn:
            return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}

    # ------------------------------------------------------------------ images and models
    def write_images(self, rows: Sequence[dict]) -> None:
        with self.connect() as conn:
            conn.executemany(
                "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r["image_id"], r["line"], r["path"], r["file"], r["label"], _dumps(r["attributes"]),
                  _dumps(r["regions"])) for r in rows],
            )

    def images(self) -> list[dict]:
        """Every manifest row of the run, by image id."""
        return self._image_rows("", ())

    def image_row(self, image_id: int) -> dict | None:
        """One manifest row (path, file, label, attributes, regions), or ``None``."""
        rows = self._image_rows("WHERE image_id = ?", (int(image_id),))
        return rows[0] if rows else None

    def n_images(self) -> int:
        """How many images the run's manifest has."""
        with self.connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def _image_rows(self, where: str, args: tuple) -> list[dict]:
        with self.connect() as conn:
            rows = conn.execute("SELECT image_id, line, path, file, label, attributes, regions FROM images "
                                f"{where} ORDER BY image_id", args).fetchall()
        return [{"image_id": r[0], "line": r[1], "path": r[2], "file": r[3], "label": r[4],
                 "attributes": json.loads(r[5]), "regions": json.loads(r[6])} for r in rows]

    def add_model(self, key: str, info: dict, fingerprint: str | None) -> None:
        """Register a model, or check that an already registered one has the same weights."""
        with self.connect() as conn:
            row = conn.execute("SELECT fingerprint FROM models WHERE key = ?", (key,)).fetchone()
            if row is None:
                pos = conn.execute("SELECT COUNT(*) FROM models").fetchone()[0]
                conn.execute("INSERT INTO models VALUES (?, ?, ?, ?)", (key, pos, _dumps(info), fingerprint))
            elif row[0] and fingerprint and row[0] != fingerprint:
                raise BiasscopeError(
                    f"model {key!r} in {self.run_dir} was run with different weights; "
                    "use a new run folder to audit the changed model"
                )

    def models(self) -> list[dict]:
        if not self.exists:
            return []
        with self.connect() as conn:
            rows = conn.execute("SELECT key, info, fingerprint FROM models ORDER BY position").fetchall()
        return [{"key": k, "info": json.loads(i), "fingerprint": f} for k, i, f in rows]

    # ------------------------------------------------------------------ results
    def done_ids(self, model: str) -> set[int]:
        with self.connect() as conn:
            return {r[0] for r in conn.execute("SELECT image_id FROM results WHERE model = ?", (model,))}

    def counts(self) -> dict[str, dict[str, int]]:
        """``{model: {"ok": n, "error": m}}``."""
        out: dict[str, dict[str, int]] = {}
        if not self.exists:
            return out
        with self.connect() as conn:
            for model, status, n in conn.execute("SELECT model, status, COUNT(*) FROM results GROUP BY 1, 2"):
                out.setdefault(model, {"ok": 0, "error": 0})[status] = n
        return out

    def count(self, model: str | None = None, *, status: str | None = None) -> int:
        """How many results are stored (all models or one; every status or one), without reading them."""
        where, args = _where(model, None, status)
        with self.connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM results r {where}", args).fetchone()[0])

    def write_batch(self, model: str, results: Sequence[ImageResult]) -> None:
        """Commit one batch of per-image results and their heatmaps atomically."""
        with self.connect() as conn:
            conn.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?)",
                [(model, int(r.image_id), r.status, _dumps(r.to_json())) for r in results],
            )
            conn.executemany(
                "INSERT INTO heatmaps VALUES (?, ?, ?, ?, ?, ?)",
                [(model, int(r.image_id), m, int(h.shape[0]), int(h.shape[1]), np.asarray(h, dtype="<f2").tobytes())
                 for r in results for m, h in r.heatmaps.items()],
            )

    def results(
        self,
        model: str | None = None,
        *,
        image_id: int | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[ImageResult]:
        """Stored results ordered by model position then image id: all, or one model's, one image's, one
        status's; ``offset``/``limit`` page through them in SQLite (nothing else is read)."""
        where, args = _where(model, image_id, status)
        q = ("SELECT r.model, r.record FROM results r JOIN models m ON m.key = r.model "
             f"{where} ORDER BY m.position, r.image_id LIMIT ? OFFSET ?")
        with self.connect() as conn:
            rows = conn.execute(q, (*args, -1 if limit is None else int(limit), int(offset))).fetchall()
        return [ImageResult.from_json(json.loads(rec), model=key) for key, rec in rows]

    def page(self, model: str | None = None, *, where: Mapping[str, str] | None = None, order: str = "manifest",
             offset: int = 0, limit: int = 200) -> tuple[int, list[tuple[ImageResult, dict]]]:
        """One page of (result, manifest row) pairs and how many match in all, read in SQLite.

        ``where`` keeps rows whose column equals the text given (the per-image CSV's spelling: ``True``/``False``
        for flags), over :meth:`filter_columns`; ``order`` is ``manifest`` (model position, image id) or
        ``telling`` (misclassified first, then the lowest probability of the true label)."""
        conds, args = [], []
        if model is not None:
            conds.append("r.model = ?")
            args.append(model)
        columns = self.filter_columns()
        for col, value in (where or {}).items():
            if col not in columns:
                raise BiasscopeError(f"no column {col!r} to filter on; filter on one of: {', '.join(columns)}")
            cond, more = _equals(*columns[col], col, value)
            conds.append(cond)
            args += more
        where_sql = ("WHERE " + " AND ".join(conds)) if conds else ""
        order_sql = "m.position, r.image_id"
        if order == "telling":  # as pandas' stable sort on (wrong first, p_true ascending, missing = 1)
            order_sql = ("CASE WHEN json_extract(r.record, '$.correct') = 0 THEN 0 ELSE 1 END, "
                         "COALESCE(json_extract(r.record, '$.p_true'), 1.0), " + order_sql)
        base = "FROM results r JOIN models m ON m.key = r.model JOIN images i ON i.image_id = r.image_id"
        with self.connect() as conn:
            total = int(conn.execute(f"SELECT COUNT(*) {base} {where_sql}", args).fetchone()[0])
            rows = conn.execute(
                f"SELECT r.model, r.record, i.image_id, i.line, i.path, i.file, i.label, i.attributes, i.regions "
                f"{base} {where_sql} ORDER BY {order_sql} LIMIT ? OFFSET ?", (*args, int(limit), int(offset))
            ).fetchall()
        out = [(ImageResult.from_json(json.loads(r[1]), model=r[0]),
                {"image_id": r[2], "line": r[3], "path": r[4], "file": r[5], "label": r[6],
                 "attributes": json.loads(r[7]), "regions": json.loads(r[8])}) for r in rows]
        return total, out

    def filter_columns(self) -> dict[str, tuple[str, tuple]]:
        """Columns :meth:`page` filters on, with their SQL: the manifest's (path, label, attribute columns),
        model, image id, status and the prediction's scalar fields. Region shares, scores and face columns
        are nested in the stored record and not filterable."""
        cols: dict[str, tuple[str, tuple]] = {k: (v, ()) for k, v in (
            ("model", "r.model"), ("image_id", "r.image_id"), ("path", "i.path"), ("label", "i.label"),
            ("status", "r.status"))}
        for c in (self.get_meta("manifest", {}) or {}).get("attribute_columns", []):
            cols.setdefault(c, ("json_extract(i.attributes, ?)", ('$."' + c.replace('"', '\\"') + '"',)))
        for key in _RECORD_SCALARS:
            cols.setdefault(key, (f"json_extract(r.record, '$.{key}')", ()))
        return cols

    def result(self, model: str, image_id: int) -> ImageResult | None:
        """One model's stored result on one image, or ``None``."""
        with self.connect() as conn:
            row = conn.execute("SELECT record FROM results WHERE model = ? AND image_id = ?",
                               (model, int(image_id))).fetchone()
        return ImageResult.from_json(json.loads(row[0]), model=model) if row else None

    def heatmap(self, model: str, image_id: int, method: str) -> np.ndarray | None:
        """The stored (downsampled, model-resolution) heatmap, or ``None``."""
        with self.connect() as conn:
            row = conn.execute("SELECT h, w, data FROM heatmaps WHERE model = ? AND image_id = ? AND method = ?",
                               (model, int(image_id), method)).fetchone()
        if row is None:
            return None
        h, w, data = row
        return np.frombuffer(data, dtype="<f2").reshape(h, w).astype(np.float32)


#: scalar fields of a stored record that are per-image CSV columns of the same name
_RECORD_SCALARS = ("error", "pred_class", "pred_prob", "pred_label", "correct", "correct_top1", "correct_topk",
                   "p_true", "target_class", "width", "height")
_FLAGS = {"correct", "correct_top1", "correct_topk"}
_NUMBERS = {"image_id", "pred_class", "pred_prob", "p_true", "target_class", "width", "height"}


def _equals(expr: str, params: tuple, col: str, value: str) -> tuple[str, list]:
    """``expr = value`` (SQL and its arguments) as the per-image table compares text: flags as True/False
    (or true/false, 1/0), numbers by value, anything else as text; a value of the wrong kind matches nothing."""
    if col in _FLAGS:
        flag = {"true": 1, "1": 1, "false": 0, "0": 0}.get(value.strip().lower())
        return (f"{expr} = ?", [*params, flag]) if flag is not None else ("0", [])
    if col in _NUMBERS:
        try:
            return f"{expr} = ?", [*params, float(value)]
        except ValueError:
            return "0", []
    return f"CAST({expr} AS TEXT) = ?", [*params, value]


def _where(model: str | None, image_id: int | None, status: str | None) -> tuple[str, tuple]:
    """A ``WHERE`` clause over the results table (alias ``r``) and its arguments."""
    conds, args = [], []
    for col, v in (("model", model), ("image_id", None if image_id is None else int(image_id)), ("status", status)):
        if v is not None:
            conds.append(f"r.{col} = ?")
            args.append(v)
    return ("WHERE " + " AND ".join(conds)) if conds else "", tuple(args)
