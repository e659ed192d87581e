"""Smoke test of the benchmark harness (bench/bench_explainers.py --quick on a tiny model).

No timing thresholds: it checks that the JSON record has its structure, that every ratio is the
quotient of the medians of the recorded times, and that the side-by-side runs computed the same
thing as the references where they must (IG vs Captum, occlusion vs Captum, in fp32).
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_explainers.py"


@pytest.fixture(scope="module")
def bench_module():
    spec = importlib.util.spec_from_file_location("bench_explainers", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def record(bench_module, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    returned = bench_module.main(["--quick", "--model", "tiny", "--out", str(out)])
    return returned, json.loads(out.read_text())


def _check_comparison(rec: dict, repeats: int) -> None:
    variants = rec["variants"]
    assert rec["ours"] in variants and rec["reference"] in variants
    for v in variants.values():
        assert len(v["times_s"]) == repeats and all(t > 0 for t in v["times_s"])
        assert v["median_s"] == pytest.approx(statistics.median(v["times_s"]), rel=1e-12)
        assert v["label"]
    ref = statistics.median(variants[rec["reference"]]["times_s"])
    for name, ratio in rec["ratios"].items():
        assert ratio == pytest.approx(statistics.median(variants[name]["times_s"]) / ref, rel=1e-12)
    assert rec["ratio"] == rec["ratios"][rec["ours"]]
    assert set(rec["ratios"]) == set(variants) - {rec["reference"]}


def test_record_structure_and_ratios(record, bench_module) -> None:
    returned, rec = record
    assert returned["results"].keys() == rec["results"].keys()
    assert rec["schema"] == 1 and rec["complete"] is True
    assert set(rec["results"]) == set(bench_module.METHODS)
    cfg = rec["config"]
    assert cfg["quick"] is True and cfg["model"] == "tiny" and cfg["repeats"] == 1
    assert cfg["layout_ours"] in ("channels_last", "contiguous") and cfg["layout_reference"] == "contiguous"
    assert len(rec["loadavg_start"]) == 3 and len(rec["loadavg_end"]) == 3
    assert set(rec["environment"]["cpu_flags"]) == {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    for method, r in rec["results"].items():
        assert len(r["loadavg"]["start"]) == 3
        if method == "floor":
            continue
        _check_comparison(r, cfg["repeats"])
        if "batched" in r:
            _check_comparison(r["batched"], cfg["repeats"])
    assert "batched" in rec["results"]["gradcam"]
    assert rec["results"]["occlusion"]["ratio_vs_batched_reference"] == pytest.approx(
        rec["results"]["occlusion"]["variants"]["ours"]["median_s"]
        / rec["results"]["occlusion"]["variants"]["captum_batched"]["median_s"])


def test_floor_per_image_times_come_from_the_recorded_times(record) -> None:
    floor = record[1]["results"]["floor"]
    bs = floor["batch_size"]
    for name, times in floor["times_s"].items():
        per = statistics.median(times) / (bs["backward"] if "backward" in name else bs["forward"])
        assert floor["per_image_s"][name] == pytest.approx(per, rel=1e-12)


def test_side_by_side_runs_agree_with_the_references(record) -> None:
    res = record[1]["results"]
    ig = res["ig"]["agreement"]
    assert ig["max_abs_diff"] <= 1e-3 * ig["max_abs_ref"]  # same quadrature, same model: same map
    assert ig["completeness_error"] == pytest.approx(ig["captum_delta"], rel=1e-3, abs=1e-6)
    occ = res["occlusion"]["agreement_fp32"]
    assert occ["max_abs_diff"] <= 1e-3 * occ["max_abs_ref"]


def test_quality_section(record) -> None:
    q = record[1]["quality"]
    assert q["ref_samples"] == 200 and q["images"] == ["coffee", "chelsea"] and q["seeds"] == [0, 1]
    for method in ("lime", "kernel_shap"):
        m = q[method]
        lib = m["library"]
        assert -1.0 <= lib["spearman"] <= 1.0 and lib["samples"] == m["standard_samples"]
        assert any(r["samples"] == m["standard_samples"] for r in m["runs"])
        for r in m["runs"]:
            assert -1.0 <= r["spearman"] <= 1.0 or math.isnan(r["spearman"])
            assert r["ratio_to_library_time"] == pytest.approx(r["seconds"] / lib["seconds"], rel=1e-12)
        for r in (lib, *m["runs"]):  # means over every (photo, seed) trial, not one run
            trials = r["trials"]
            assert {(tr["image"], tr["seed"]) for tr in trials} == {(im, sd) for im in q["images"] for sd in q["seeds"]}
            assert r["spearman"] == pytest.approx(statistics.mean(tr["spearman"] for tr in trials), rel=1e-12)
            assert r["spearman_min"] == min(tr["spearman"] for tr in trials)
            assert r["seconds"] == pytest.approx(statistics.mean(tr["seconds"] for tr in trials), rel=1e-12)
            assert set(r["per_image"]) == set(q["images"])
        seeded = {tr["seed"]: tr["spearman"] for tr in m["runs"][0]["trials"] if tr["image"] == q["images"][0]}
        assert len(seeded) == 2
        best = m["cheapest_matching_library_quality"]
        assert best is None or (best in m["runs"] and best["spearman"] >= lib["spearman"])


def test_table_lists_every_comparison(record, bench_module) -> None:
    table = bench_module.format_table(record[1])
    for method in ("gradcam", "gradcam (batched)", "ig", "gradient_shap", "occlusion", "lime", "kernel_shap",
                   "quality lime", "quality kernel_shap", "floor forward_fp32"):
        assert method in table
