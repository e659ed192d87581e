"""Smoke test of bench/bench_web_memory.py: a real ``biasscope serve`` (MobileNetV2), 12 requests.

No timing or memory thresholds (12 requests say nothing about a slope): it checks that the record
has its structure, that the counts add up to the requests sent, that no request got a 5xx or an
unexpected status, that the bad input got a 4xx, that the figures are computed from the recorded
samples, and that the server was stopped cleanly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_web_memory.py"
N = 12

pytestmark = pytest.mark.slow  # a real server with real weights (about 10 s)


@pytest.fixture(scope="module")
def bench_module():
    from biasscope.models import zoo_status

    if not zoo_status("mobilenet_v2").ready:
        pytest.skip("mobilenet_v2 weights are not installed")
    saved = list(sys.path)  # the script puts bench/ on the path to reuse bench_memory
    spec = importlib.util.spec_from_file_location("bench_web_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path[:] = saved


@pytest.fixture(scope="module")
def record(bench_module, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("bench") / "web.json"
    # lazy model loading and no faithfulness/LIME: nothing measures batch sizes, so it stays quick
    returned = bench_module.main(["--requests", str(N), "--concurrency", "2", "--sample-every", "3",
                                  "--no-preload", "--no-faithfulness", "--lime-every", "0",
                                  "--max-slope-mb", "inf", "--out", str(out)])
    return returned, json.loads(out.read_text())


def test_counts_add_up_and_nothing_failed(record) -> None:
    returned, rec = record
    assert returned["status_counts"] == rec["status_counts"]
    assert rec["requests"] == N and rec["requests_done"] == N
    assert sum(rec["status_counts"].values()) == N
    assert sum(sum(v.values()) for v in rec["status_by_kind"].values()) == N
    assert sum(v["n"] for v in rec["latency"].values()) == N
    assert rec["server_errors_5xx"] == 0 and not any(k.startswith("5") for k in rec["status_counts"])
    assert rec["unexpected_status_count"] == 0 and rec["unexpected_status"] == []
    assert rec["client_errors"] == [] and rec["job_failures"] == [] and rec["server_tracebacks"] == 0
    assert rec["failures"] == [] and rec["passed"] is True
    assert rec["clean_shutdown"] is True and rec["server_exit_code"] == 0
    assert rec["model"] == "mobilenet_v2" and "--no-preload" in rec["server_command"]


def test_the_mix_reached_the_api(record) -> None:
    kinds = record[1]["status_by_kind"]
    assert set(kinds["upload"]) == {"201"}
    assert set(kinds["bad_upload"]) and all(k.startswith("4") for k in kinds["bad_upload"])
    assert kinds["job_submit"].get("202", 0) >= 1 and kinds["predict"].get("200", 0) >= 1
    assert record[1]["jobs"]["submitted"] == kinds["job_submit"]["202"]


def test_memory_figures_come_from_the_samples(record, bench_module) -> None:
    rec = record[1]
    samples = rec["samples"]
    assert [s["done"] for s in samples] == [0, 3, 6, 9, 12]
    assert all(s["rss_mb"] > 50 for s in samples)  # a Python process with torch and a model loaded
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    r = rec["rss_mb"]
    assert r["end"] == pytest.approx(samples[-1]["rss_mb"], abs=0.01)
    assert r["after_10pct"] == pytest.approx(samples[1]["rss_mb"], abs=0.01)  # first sample at >= 10% of 12
    assert r["peak_sampled"] == pytest.approx(max(s["rss_mb"] for s in samples), abs=0.01)
    assert r["hwm"] >= r["peak_sampled"] - 0.01 and r["ready"] > 50
    assert rec["growth_after_warmup_mb"] == pytest.approx(r["end"] - r["after_10pct"], abs=0.02)
    half = [(s["done"], s["rss_mb"]) for s in samples if s["done"] >= N / 2]
    assert rec["slope_second_half_mb_per_1000"] == pytest.approx(bench_module.slope_per_1000(half), rel=1e-3, abs=1)
    assert math.isinf(rec["max_slope_mb"])
    assert rec["startup_s"] > 0 and rec["run_s"] > 0 and len(rec["loadavg_end"]) == 3
