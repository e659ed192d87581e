"""Typed metric values: their JSON form is exactly metrics.json's, stored runs load, recomputing gives the same.

``data/metrics_v1.json`` and ``data/per_image_v1.csv`` were written by the dict-based metrics code (commit
cd598ae, before the typed values) for a synthetic audit: the planted-bias ColourNet of ``synth.py``,
12 images per label x gender cell plus one unreadable image, Grad-CAM and Integrated Gradients,
faithfulness, region removal, stereotypical cells, ``n_boot = n_perm = 100``, ``seed = 1``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from biasscope.audit.metric_values import Gap, ImageError
from biasscope.audit.metrics import MetricsOptions, compute_model_metrics
from biasscope.audit.model_metrics import ComparisonRow, ModelMetrics
from biasscope.audit.results import answer, findings, gap_sentence
from tests.audit.test_audit_metrics import _frame

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def stored() -> dict:
    return json.loads((DATA / "metrics_v1.json").read_text(encoding="utf-8"))


def _same_text(a: Any, b: Any) -> bool:
    """Equal as metrics.json text: the same keys in the same order, the same numbers."""
    return json.dumps(a, allow_nan=False) == json.dumps(b, allow_nan=False)


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal keys (in order), strings, ints and None; floats equal within 1e-9 of their magnitude."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b and type(a) is type(b), (path, a, b)


def test_stored_metrics_load_and_write_back_identically(stored) -> None:
    groups = stored["run"]["config"]["groups"]
    for key, entry in stored["models"].items():
        mm = ModelMetrics.from_json(entry)
        assert _same_text(mm.to_json(), entry)
        assert _same_text(ComparisonRow.of(mm, groups).to_json(), stored["comparison"][key])
        # the typed view: derived counts agree with what the old code wrote
        assert mm.n_tests == entry["n_tests"] == 44 and len(mm.flagged) == len(entry["flagged"]) == 17
        assert [g.flagged_json() for g in mm.flagged] == entry["flagged"]
        assert mm.errors == [ImageError("img/broken_0.png", entry["errors"][0]["error"])]
        # the sentences, now written from typed values, are the stored ones
        opts = stored["run"]["metrics_options"]
        assert findings(mm, alpha=opts["alpha"]) == entry["findings"]
        assert answer(mm, opts["stereotypical"], alpha=opts["alpha"]) == entry["answer"]
        for f in entry["flagged"]:  # a flagged-list entry reads as the gap it summarises (findings may add a caution)
            assert sum(s.startswith(gap_sentence(f)) for s in entry["findings"]) == 1


def test_metrics_recomputed_from_the_stored_table_equal_the_stored_metrics(stored) -> None:
    """The refactored computation reproduces what the dict-based code wrote (same seeds, draws, Holm)."""
    run = stored["run"]
    df = pd.read_csv(DATA / "per_image_v1.csv")
    ok = df[df["status"] == "ok"].copy()
    for c in ("correct", "correct_top1", "correct_topk", "predicted:doctor", "predicted:nurse"):
        ok[c] = ok[c].map({True: True, False: False, "True": True, "False": False}).astype(bool)
    opts = MetricsOptions(**run["metrics_options"])
    mm = compute_model_metrics(ok, groups=run["config"]["groups"], labels=run["manifest"]["labels"],
                               methods=run["config"]["methods"], regions=run["manifest"]["region_names"],
                               options=opts)
    entry = stored["models"]["biased"]
    got = mm.to_json()
    for k in ("n_errors", "errors", "findings", "answer"):  # filled by finalize_run, not by the metrics
        got[k] = entry[k]
    _close(got, entry)
    # a real computed value round-trips through its JSON form
    assert ModelMetrics.from_json(json.loads(json.dumps(mm.to_json()))) == mm


def test_round_trip_with_two_groupings_regions_and_quality() -> None:
    df = _frame(4)
    df["age"] = np.where(np.arange(len(df)) % 3 == 0, "young", "old")
    df["faith:gradcam:deletion_auc"] = np.random.default_rng(1).random(len(df))
    mm = compute_model_metrics(df, groups=["gender", "age"], labels=["doctor", "nurse"], methods=["gradcam"],
                               regions=["hair"], options=MetricsOptions(n_boot=50, n_perm=50, min_group_size=40,
                                                                        stereotypical=["doctor:male"]))
    assert set(mm.groupings) == {"gender", "age", "gender x age"} and mm.warnings
    text = json.dumps(mm.to_json(), allow_nan=False)  # strict JSON: no NaN anywhere
    back = ModelMetrics.from_json(json.loads(text))
    assert back == mm and json.dumps(back.to_json()) == text
    # Holm's family is every gap in test order; each gap knows what it is computed over
    gaps = mm.all_gaps()
    assert len({g.key for g in gaps}) == len(gaps) == mm.n_tests
    assert all(g.status is not None and g.p_adjusted >= g.p_value for g in gaps)
    cell_gap = mm.groupings["gender"].regions.cells["share:gradcam:hair"]["doctor"].gap
    assert list(cell_gap.to_json())[18:20] == ["label", "p_adjusted"]  # where region gaps have kept it
    assert list(mm.groupings["gender"].gaps["accuracy"].to_json())[-2:] == ["label", "n_images"]


def test_empty_model_and_old_entries_without_later_keys(stored) -> None:
    empty = ModelMetrics(n_images=0)
    assert empty.to_json() == {"n_images": 0, "groupings": {}, "warnings": [], "n_errors": 0, "errors": [],
                               "findings": [], "answer": []}
    assert ModelMetrics.from_json(empty.to_json()) == empty
    assert findings(empty) == ["No image could be evaluated."]
    # an entry from before gaps had a status and models had warning groups still reads, statuses derived
    old = copy.deepcopy(stored["models"]["biased"])
    for e in old["groupings"].values():
        for gaps in [e["gaps"], *(lab["gaps"] for lab in e["by_label"].values())]:
            for g in gaps.values():
                del g["status"]
    del old["warning_groups"], old["n_not_flagged"]
    mm = ModelMetrics.from_json(old)
    assert len(mm.flagged) == 17
    assert mm.groupings["gender"].concepts["doctor"].gaps["fpr"].status == "degenerate"
    assert mm.groupings["gender"].gaps["accuracy"].status == "not significant"


def test_gap_test_keeps_nan_for_a_missing_ratio_and_typed_gaps_use_none() -> None:
    from biasscope.audit.stats import estimate_gap, gap_test

    g = np.r_[["a"] * 40, ["b"] * 40]
    v = np.r_[np.full(40, -0.1), np.full(40, -0.3)]
    d = gap_test(v, g, n_boot=100, n_perm=100, seed=2)
    typed = estimate_gap(v, g, n_boot=100, n_perm=100, seed=2)
    assert math.isnan(d["ratio"]) and all(math.isnan(x) for x in d["ratio_ci"])
    assert typed.ratio is None and typed.ratio_ci == (None, None) and typed.ratio_note == d["ratio_note"]
    assert (typed.difference, list(typed.difference_ci), typed.p_value) == (
        d["difference"], d["difference_ci"], d["p_value"])
    assert isinstance(typed, Gap) and typed.status is None and not typed.flagged
