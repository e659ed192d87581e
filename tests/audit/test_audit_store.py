"""Typed per-image results and the store's single-row and paged queries.

Oracles: records in the exact JSON form the store has held since schema version 1 (written by hand
below, as earlier versions wrote them) must read back and write out unchanged; the paged and
single-row queries must return exactly the rows a full scan filtered in Python returns.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from biasscope.audit.store import RunStore
from biasscope.audit.values import ImageResult

OK_RECORD = {
    "image_id": 3, "path": "img/a.png", "status": "ok", "error": None, "width": 40, "height": 30,
    "top": [{"index": 1, "class": "scrubs", "probability": 0.75}, {"index": 0, "class": "lab coat",
                                                                   "probability": 0.25}],
    "pred_index": 1, "pred_class": "scrubs", "pred_prob": 0.75, "pred_label": "nurse", "p_true": 0.25,
    "correct": False, "correct_top1": False, "correct_topk": True, "scores": {"doctor": 0.25, "nurse": 0.75},
    "predicted": {"doctor": False, "nurse": True}, "target_index": 0, "target_class": "lab coat",
    "shares": {"gradcam": {"hair": {"area_share": 0.5, "share": 0.25, "ratio": 0.5}}},
    "quality": {"gradcam": {"deletion_auc": 0.125}}, "agreement": {}, "removal": {"hair": {"effect": -0.5}},
    "seconds": 0.01, "face": None, "view": {"kind": "face_chip", "size": 8, "padding": 0.2, "landmarks": []},
}
ERROR_RECORD = {"image_id": 4, "path": "img/b.png", "status": "error", "error": "cannot read image"}


@pytest.mark.parametrize("record", [OK_RECORD, ERROR_RECORD,
                                    {k: v for k, v in OK_RECORD.items() if k not in ("face", "view")}])
def test_stored_records_read_back_and_write_out_unchanged(record: dict) -> None:
    """Key order included: a run written before keeps its exact JSON, and new runs write the same form."""
    r = ImageResult.from_json(record)
    assert json.dumps(r.to_json()) == json.dumps(record)
    assert r.ok == (record["status"] == "ok")


def test_records_from_before_quality_and_agreement_load_with_empty_values() -> None:
    old = {k: v for k, v in OK_RECORD.items() if k not in ("quality", "agreement", "face", "view")}
    r = ImageResult.from_json(old)
    assert r.quality == {} and r.agreement == {} and r.face is None and r.view is None
    assert r.shares["gradcam"]["hair"]["share"] == 0.25 and r.p_true == 0.25


def test_non_finite_numbers_are_stored_as_null() -> None:
    r = ImageResult.from_json(OK_RECORD)
    r.pred_prob = float("nan")
    r.scores = {"doctor": np.float32(0.5), "nurse": math.inf}
    d = r.to_json()
    assert d["pred_prob"] is None and d["scores"] == {"doctor": 0.5, "nurse": None}
    json.dumps(d, allow_nan=False)


@pytest.fixture
def store(tmp_path) -> RunStore:
    """Two models over five images; image 2 failed for model b; heatmaps for model a."""
    s = RunStore(tmp_path / "run")
    s.init()
    s.write_images([{"image_id": i, "line": i + 2, "path": f"img/{i}.png", "file": f"/data/img/{i}.png",
                     "label": "doctor" if i % 2 else "nurse", "attributes": {"g": str(i % 2)}, "regions": {}}
                    for i in range(5)])
    for pos, model in enumerate(("b", "a")):  # registration order, not name order, orders models
        s.add_model(model, {"name": model}, None)
        results = []
        for i in reversed(range(5)):
            if model == "b" and i == 2:
                results.append(ImageResult.failed(i, f"img/{i}.png", "unreadable"))
                continue
            r = ImageResult.from_json({**OK_RECORD, "image_id": i, "path": f"img/{i}.png", "p_true": i / 10 + pos})
            if model == "a":
                r.heatmaps = {"gradcam": np.full((2, 3), i, dtype=np.float32)}
            results.append(r)
        s.write_batch(model, results)
    return s


def test_paged_and_single_row_queries_equal_a_filtered_full_scan(store: RunStore) -> None:
    every = store.results()
    assert [(r.model, r.image_id) for r in every] == [("b", i) for i in range(5)] + [("a", i) for i in range(5)]
    key = [(r.model, r.image_id, r.status, r.p_true) for r in every]
    for model in (None, "a", "b"):
        for status in (None, "ok", "error"):
            want = [k for k in key if (model is None or k[0] == model) and (status is None or k[2] == status)]
            assert store.count(model, status=status) == len(want)
            for offset, limit in ((0, None), (1, 2), (3, 100), (20, 5)):
                got = store.results(model, status=status, offset=offset, limit=limit)
                end = None if limit is None else offset + limit
                assert [(r.model, r.image_id, r.status, r.p_true) for r in got] == want[offset:end]
    assert [r.model for r in store.results(image_id=2)] == ["b", "a"]
    one = store.result("a", 4)
    assert one is not None and one.model == "a" and one.p_true == pytest.approx(0.4 + 1)
    assert one.to_json() == {**OK_RECORD, "image_id": 4, "path": "img/4.png", "p_true": one.p_true}
    failed = store.result("b", 2)
    assert failed is not None and not failed.ok and failed.error == "unreadable"
    assert store.result("a", 99) is None and store.result("c", 0) is None
    assert store.counts() == {"a": {"ok": 5, "error": 0}, "b": {"ok": 4, "error": 1}}


def test_heatmaps_are_written_with_their_results(store: RunStore) -> None:
    h = store.heatmap("a", 3, "gradcam")
    assert h is not None and h.shape == (2, 3) and np.all(h == 3)
    assert store.heatmap("b", 3, "gradcam") is None


def test_manifest_rows_by_id_and_count(store: RunStore) -> None:
    assert store.n_images() == 5
    row = store.image_row(3)
    assert row == next(r for r in store.images() if r["image_id"] == 3)
    assert row["attributes"] == {"g": "1"} and row["line"] == 5
    assert store.image_row(7) is None


@pytest.mark.parametrize("kind", ["audit", "verify"])
def test_a_new_store_appears_with_its_tables(tmp_path, monkeypatch, kind: str) -> None:
    """The file is moved into place only once its tables exist: a reader polling a starting run (the
    dashboard) sees either no store or a whole one, never an empty SQLite file."""
    import os
    import sqlite3

    from biasscope.verify import VerifyStore

    seen: list[list[str]] = []
    real_replace = os.replace

    def watching_replace(src, dst):
        with sqlite3.connect(src) as conn:  # what a reader would find, just before the file appears
            seen.append(sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")))
        return real_replace(src, dst)

    monkeypatch.setattr("biasscope.audit.store.os.replace", watching_replace)
    st = RunStore(tmp_path / "run") if kind == "audit" else VerifyStore(tmp_path / "run")
    tables = (["heatmaps", "images", "meta", "models", "results"] if kind == "audit"
              else ["embeddings", "explanations", "meta"])
    if kind == "audit":
        assert st.get_meta("schema_version") is None  # no file yet: the default, no error
    st.init()
    assert seen == [tables]
    assert not [p.name for p in st.run_dir.iterdir() if ".tmp" in p.name]  # no temporary files left
    st.set_meta("status", "running")
    st.init()  # idempotent on an existing store: nothing is replaced or lost
    assert len(seen) == 1 and st.get_meta("status") == "running"
