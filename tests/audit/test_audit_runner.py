"""End-to-end audits on synthetic data with a planted bias of known ground truth.

Ground truth (see synth.py): the biased model takes the female group's red hair as evidence for
"nurse", so female doctors lose accuracy and confidence, the hair region draws attribution for
female images, and removing it helps female doctors. The unbiased model ignores the hair.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biasscope.audit import (
    AuditConfig,
    finalize_run,
    list_runs,
    load_heatmap,
    load_manifest,
    per_image_frame,
    run_audit,
    run_info,
)
from biasscope.errors import BiasscopeError, CancelledError
from biasscope.explainers import get_explainer
from biasscope.jobs import BackgroundJob, JobPool, JobStatus
from tests.audit.synth import CONCEPTS, make_adapter, write_dataset

STATS = {"n_boot": 500, "n_perm": 500, "min_group_size": 10, "stereotypical": ["doctor:male", "nurse:female"]}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    os.environ.setdefault("BIASSCOPE_BATCH_SIZE", "64")
    base = tmp_path_factory.mktemp("planted")
    csv = write_dataset(base / "data", n_per_cell=20, seed=0, broken=1)
    m = load_manifest(csv, groups=["gender"])
    cfg = AuditConfig(groups=["gender"], methods=["gradcam"], concepts=CONCEPTS)
    res = run_audit(m, [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")], base / "run", cfg, batch_size=16,
                    metrics_options=STATS)
    return base / "run", res.metrics


def test_planted_bias_is_detected(planted) -> None:
    _, metrics = planted
    mm = metrics["models"]["biased"]
    g = mm["groupings"]["gender"]
    doc = g["by_label"]["doctor"]["gaps"]["accuracy"]
    assert doc["flagged"] and (doc["high_group"], doc["low_group"]) == ("male", "female")
    assert doc["difference_ci"][0] > 0 and doc["p_adjusted"] < 0.05
    assert g["by_label"]["doctor"]["by_group"]["male"]["accuracy"] == 1.0
    bs = mm["bias_score"]
    assert bs["significant"] and bs["score"] > 0.1 and bs["ci"][0] > 0
    # the planted region stands out for the female group, and only there
    regs = g["regions"]["by_group"]
    assert regs["female"]["ratio:gradcam:hair"] > 3.0
    assert regs["male"]["ratio:gradcam:hair"] < 0.2
    # region findings are per label x group, over the images that have the region
    hair = g["regions"]["cells"]["share:gradcam:hair"]
    hair_gap = hair["nurse"]["gap"]
    assert hair_gap["flagged"] and hair_gap["high_group"] == "female" and hair_gap["label"] == "nurse"
    assert hair["nurse"]["n"] == sum(c["n"] for c in hair["nurse"]["by_group"].values()) == 40
    # removing the hair helps female doctors (true label "doctor"), does nothing for male doctors
    cells = g["regions"]["by_label"]["doctor"]
    assert cells["female"]["removal:hair"] > 0.1
    assert abs(cells["male"]["removal:hair"]) < 0.01
    assert any("hair" in f and "female" in f for f in mm["findings"])


def test_no_planted_bias_is_not_flagged(planted) -> None:
    _, metrics = planted
    mm = metrics["models"]["fair"]
    assert mm["flagged"] == [] and mm["n_tests"] > 10
    assert not mm["bias_score"]["significant"]
    assert mm["bias_score"]["ci"][0] <= 0 <= mm["bias_score"]["ci"][1]
    regs = mm["groupings"]["gender"]["regions"]["by_group"]
    assert regs["female"]["ratio:gradcam:hair"] < 0.2 and regs["female"]["ratio:gradcam:tool"] > 3.0
    assert any("No gap between groups is significant" in f for f in mm["findings"])


def test_errors_exports_and_report(planted) -> None:
    run, metrics = planted
    for key in ("biased", "fair"):
        assert metrics["models"][key]["n_errors"] == 1
        assert "truncated or corrupt" in metrics["models"][key]["errors"][0]["error"]
        assert metrics["models"][key]["n_images"] == 80
    on_disk = json.loads((run / "metrics.json").read_text())  # strict JSON: no NaN
    assert on_disk["comparison"]["biased"]["n_flagged"] > 0 and on_disk["comparison"]["fair"]["n_flagged"] == 0
    df = pd.read_csv(run / "per_image.csv")
    assert len(df) == 2 * 81 and set(df["status"]) == {"ok", "error"}
    ok = df[df["status"] == "ok"]
    assert ok["correct"].isin([True, False]).all() and ok["p_true"].between(0, 1).all()
    for c in ("path", "label", "gender", "pred_class", "pred_label", "share:gradcam:hair", "removal:tool", "error"):
        assert c in df.columns
    # p_true is the summed probability of the concept's classes: recompute for a few images
    adapter = make_adapter(2.0)
    from biasscope.images import load_image

    man = load_manifest(run.parent / "data" / "manifest.csv")
    sub = ok[ok["model"] == "biased"].head(5)
    probs = adapter.probabilities(adapter.preprocess([load_image(man.root / p) for p in sub["path"]])).numpy()
    idx = {"doctor": [0, 1], "nurse": [2]}
    want = [probs[i, idx[lab]].sum() for i, lab in enumerate(sub["label"])]
    np.testing.assert_allclose(sub["p_true"].to_numpy(), want, atol=1e-5)
    html = (run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    assert html.count("data:image/png;base64,") >= 4 and "<svg" in html
    assert "Model comparison" in html and "biased" in html and "fair" in html and "Bias score" in html


def test_run_listing_detail_and_heatmaps(planted) -> None:
    run, _ = planted
    runs = list_runs(run.parent)
    assert [r["name"] for r in runs] == ["run"] and runs[0]["status"] == "done"
    info = run_info(run)
    assert info["models"] == ["biased", "fair"] and info["progress"] == 1.0 and info["n_images"] == 81
    assert info["counts"]["biased"] == {"ok": 80, "error": 1}
    h = load_heatmap(run, "biased", 0, "gradcam")
    assert h is not None and h.shape == (32, 32)
    # the stored Grad-CAM of a doctor (target stethoscope) lies on the tool box
    assert h[18:28, 2:12].sum() > 0.8 * h.sum()
    assert load_heatmap(run, "biased", 80, "gradcam") is None  # the broken image has none
    df = per_image_frame(run, "fair")
    assert len(df) == 81 and set(df["model"]) == {"fair"}


# ------------------------------------------------------------------ resume after interruption
def _frames_equal(a: Path, b: Path) -> None:
    fa = per_image_frame(a).sort_values(["model", "image_id"]).reset_index(drop=True)
    fb = per_image_frame(b).sort_values(["model", "image_id"]).reset_index(drop=True)
    assert list(fa.columns) == list(fb.columns) and len(fa) == len(fb)
    for c in fa.columns:
        if pd.api.types.is_float_dtype(fa[c]):
            np.testing.assert_allclose(fa[c].to_numpy(), fb[c].to_numpy(), atol=1e-6, equal_nan=True, err_msg=c)
        else:
            assert fa[c].astype(str).tolist() == fb[c].astype(str).tolist(), c
    for run in (a, b):  # no row lost or duplicated
        con = sqlite3.connect(run / "audit.sqlite")
        n = con.execute("SELECT COUNT(*), COUNT(DISTINCT model || ':' || image_id) FROM results").fetchone()
        h = con.execute("SELECT COUNT(*) FROM heatmaps").fetchone()[0]
        con.close()
        assert n[0] == n[1] == len(fa) and h == len(fa) - 2


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    os.environ.setdefault("BIASSCOPE_BATCH_SIZE", "64")
    base = tmp_path_factory.mktemp("small")
    csv = write_dataset(base / "data", n_per_cell=6, seed=1, broken=1)
    m = load_manifest(csv, groups=["gender"])
    run_audit(m, [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")], base / "ref", _cfg(), batch_size=4,
              finalize=False)
    return csv, base / "ref"


def _cfg() -> AuditConfig:
    return AuditConfig(groups=["gender"], methods=["gradcam"], concepts=CONCEPTS)


class StopRunError(Exception):
    pass


def test_interrupted_and_resumed_equals_uninterrupted(small, tmp_path: Path) -> None:
    csv, ref = small
    m = load_manifest(csv, groups=["gender"])
    models = [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")]
    seen: list[int] = []

    def stop_at(k: int):
        def cb(p) -> None:
            seen.append(p.done_all)
            if p.done_all >= k:
                raise StopRunError

        return cb

    out = tmp_path / "run"
    opts = {"n_boot": 200, "n_perm": 200}
    with pytest.raises(StopRunError):  # stops inside the first model
        run_audit(m, models, out, _cfg(), batch_size=4, progress=stop_at(9), finalize=False)
    assert run_info(out)["status"] == "error" and run_info(out)["counts"]["biased"]["ok"] == 12
    with pytest.raises(StopRunError):  # resumes, then stops inside the second model
        run_audit(m, models, out, _cfg(), batch_size=4, progress=stop_at(34), finalize=False)
    assert run_info(out)["counts"]["fair"] == {"ok": 12, "error": 0}  # batches of 4: stopped at 25 + 12
    res = run_audit(m, models, out, _cfg(), batch_size=4, finalize=False)
    assert res.counts == {"biased": {"ok": 24, "error": 1}, "fair": {"ok": 24, "error": 1}}
    _frames_equal(ref, out)
    # and so are the findings computed from them (seeded resampling)
    assert finalize_run(ref, opts, report=False)["models"] == finalize_run(out, opts, report=False)["models"]


def test_cancel_flag_then_resume(small, tmp_path: Path) -> None:
    csv, ref = small
    m = load_manifest(csv, groups=["gender"])
    models = [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")]
    cancel = threading.Event()
    out = tmp_path / "run"

    def cb(p) -> None:
        if p.done_all >= 8:
            cancel.set()

    with pytest.raises(CancelledError):
        run_audit(m, models, out, _cfg(), batch_size=4, progress=cb, cancel=cancel)
    assert run_info(out)["status"] == "cancelled" and run_info(out)["counts"]["biased"]["ok"] == 8
    # resuming with other settings is refused, naming what differs
    with pytest.raises(BiasscopeError, match="methods"):
        run_audit(m, models, out, AuditConfig(groups=["gender"], methods=["ig"], concepts=CONCEPTS))
    # the same key with other weights is refused
    other = make_adapter(1.0, "biased")
    with pytest.raises(BiasscopeError, match="different weights"):
        run_audit(m, [other], out, _cfg(), batch_size=4)
    run_audit(m, models, out, _cfg(), batch_size=4, finalize=False)
    _frames_equal(ref, out)


def test_background_job_reports_progress(small, tmp_path: Path) -> None:
    """An audit on the one job mechanism (as the web runs it): done, progress to the last image, same results."""
    csv, ref = small
    m = load_manifest(csv, groups=["gender"])
    seen = []

    def work(job: BackgroundJob) -> None:
        run_audit(m, [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")], tmp_path / "job", _cfg(), batch_size=4,
                  finalize=False, progress=seen.append, cancel=job.cancel_event)

    pool: JobPool[BackgroundJob] = JobPool(workers=1, name="test-audit")
    try:
        job = pool.submit(BackgroundJob(id="job"), work)
        assert job.future is not None
        job.future.result(timeout=120)
    finally:
        pool.shutdown()
    last = seen[-1]
    assert job.status == JobStatus.DONE and job.finished is not None and job.error is None
    assert last.fraction == 1.0 and last.done_all == last.total_all == 50 and last.errors == 1
    _frames_equal(ref, tmp_path / "job")


_KILL_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
os.environ["BIASSCOPE_BATCH_SIZE"] = "64"
from biasscope.audit import AuditConfig, load_manifest, run_audit
from tests.audit.synth import CONCEPTS, make_adapter
m = load_manifest({csv!r}, groups=["gender"])
cfg = AuditConfig(groups=["gender"], methods=["gradcam"], concepts=CONCEPTS)
def slow(p):
    print("done", p.done_all, flush=True)
    time.sleep(0.4)
run_audit(m, [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")], {out!r}, cfg, batch_size=4, progress=slow,
          finalize=False)
"""


def test_killed_process_resumes_without_loss_or_duplicates(small, tmp_path: Path) -> None:
    csv, ref = small
    out = tmp_path / "run"
    script = _KILL_SCRIPT.format(root=str(ROOT), csv=str(csv), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        deadline = time.time() + 120
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("done") and int(line.split()[1]) >= 12:
                break
            assert time.time() < deadline
        time.sleep(0.1)  # let it get into the next batch
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    counts = run_info(out)["counts"]
    assert 12 <= sum(c.get("ok", 0) + c.get("error", 0) for c in counts.values()) < 50
    m = load_manifest(csv, groups=["gender"])
    run_audit(m, [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")], out, _cfg(), batch_size=4, finalize=False)
    _frames_equal(ref, out)


def test_prediction_and_gradcam_share_one_forward_pass(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the runner predicts from Grad-CAM's own forward pass: same rows as predicting separately, one
    # forward pass per image instead of two (explained classes are chosen before the backward pass)
    csv, _ref = small
    m = load_manifest(csv, groups=["gender"])
    for explain_target in ("predicted", "label"):
        cfg = AuditConfig(groups=["gender"], methods=["gradcam"], concepts=CONCEPTS, explain_target=explain_target,
                          removal=None)  # region removal has forward passes of its own
        counted = {}
        adapters = []
        for name, bias in (("biased", 2.0), ("fair", 0.0)):
            ad = make_adapter(bias, name)
            forward = ad.model.forward

            def counting(x, _forward=forward, _name=name, _counted=counted):
                _counted[_name] = _counted.get(_name, 0) + x.shape[0]
                return _forward(x)

            ad.model.forward = counting
            adapters.append(ad)
        run_audit(m, adapters, tmp_path / f"one-{explain_target}", cfg, batch_size=4, finalize=False)
        one = dict(counted)
        with monkeypatch.context() as mp:
            mp.setattr(get_explainer("gradcam"), "predicts_in_pass", False)  # predict in a separate forward pass
            counted.clear()
            run_audit(m, adapters, tmp_path / f"two-{explain_target}", cfg, batch_size=4, finalize=False)
        _frames_equal(tmp_path / f"one-{explain_target}", tmp_path / f"two-{explain_target}")
        n_ok = len(m.rows) - 1  # one broken image
        assert one == {"biased": n_ok, "fair": n_ok}
        assert counted == {"biased": 2 * n_ok, "fair": 2 * n_ok}


def test_audit_report_keeps_stored_options_and_takes_min_effect(planted, tmp_path) -> None:
    """audit-report without --stereotypical keeps the run's cells (the bias score survives); --min-effect
    decides what is large enough to flag; the CLI prints each finding once and the warnings grouped."""
    import shutil

    from click.testing import CliRunner

    from biasscope.cli import main

    run = tmp_path / "run"
    shutil.copytree(planted[0], run)
    res = CliRunner().invoke(main, ["audit-report", str(run), "--n-boot", "200", "--n-perm", "200",
                                    "--min-group-size", "50"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["run"]["metrics_options"]["stereotypical"] == ["doctor:male", "nurse:female"]
    biased = m["models"]["biased"]
    assert biased["bias_score"]["significant"] and biased["bias_score"]["flagged"]
    acc = biased["groupings"]["gender"]["by_label"]["doctor"]["gaps"]["accuracy"]
    assert acc["flagged"] and acc["min_effect"] == 0.05
    lines = res.output.splitlines()
    assert sum("warnings (" in ln for ln in lines) == 2  # one line per model, not one per warning
    assert all(lines.count(ln) == 1 for ln in lines if ln.startswith("  - Within label"))
    assert "Small label x group cells" in res.output
    page = (run / "report.html").read_text()
    assert page.count("<details class='warn'>") == 2 and page.count("Small label x group cells") == 2
    # a minimum effect larger than the planted gap: significant, no longer flagged
    res = CliRunner().invoke(main, ["audit-report", str(run), "--n-boot", "200", "--n-perm", "200",
                                    "--min-effect", f"accuracy={acc['difference'] + 0.01}"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    acc2 = m["models"]["biased"]["groupings"]["gender"]["by_label"]["doctor"]["gaps"]["accuracy"]
    assert acc2["status"] == "too small" and not acc2["flagged"] and acc2["p_adjusted"] < 0.05
    assert m["run"]["metrics_options"]["stereotypical"] == ["doctor:male", "nurse:female"]
    assert m["run"]["metrics_options"]["min_group_size"] == 50  # stored from the previous call
    res = CliRunner().invoke(main, ["audit-report", str(run), "--min-effect", "acc=0.1"])
    assert res.exit_code == 2 and "KIND one of accuracy" in res.output


def test_explanation_quality_per_label_x_group(tmp_path) -> None:
    """With faithfulness, each image stores its deletion/insertion AUC and IG completeness error, equal to what
    the single-image API computes; the metrics give per label x group means over those images with intervals."""
    from biasscope.api import explain
    from biasscope.images import load_image

    csv = write_dataset(tmp_path / "data", n_per_cell=6, seed=1)
    m = load_manifest(csv, groups=["gender"])
    cfg = AuditConfig(groups=["gender"], methods=["gradcam", "integrated_gradients"], concepts=CONCEPTS,
                      faithfulness=True, method_params={"integrated_gradients": {"steps": 16}})
    adapter = make_adapter(2.0, "biased")
    res = run_audit(m, [adapter], tmp_path / "run", cfg, metrics_options={"n_boot": 200, "n_perm": 200,
                                                                            "min_group_size": 2})
    df = per_image_frame(tmp_path / "run")
    row = df.iloc[0]
    exps = explain(adapter, load_image(m.root / row["path"]), ["gradcam", "integrated_gradients"],
                   target=row["target_class"], params=cfg.method_params)
    for method, e in exps.items():
        for k in ("deletion_auc", "insertion_auc"):
            assert row[f"faith:{method}:{k}"] == pytest.approx(e.checks[k], abs=1e-4)
    assert row["faith:integrated_gradients:completeness_relative"] == pytest.approx(
        exps["integrated_gradients"].checks["completeness_relative"], rel=1e-3, abs=1e-4)
    # agreement between methods: Spearman correlation of the two maps at model resolution (scipy as reference)
    from scipy.stats import spearmanr

    rho = spearmanr(exps["gradcam"].model_heatmap.ravel(), exps["integrated_gradients"].model_heatmap.ravel())[0]
    assert row["agree:gradcam~integrated_gradients"] == pytest.approx(rho, abs=1e-3)
    cells = res.metrics["models"]["biased"]["groupings"]["gender"]["faithfulness"]["cells"]
    assert set(cells["agree:gradcam~integrated_gradients"]) == {"doctor", "nurse"}
    assert "faith:gradcam:completeness_relative" not in cells  # only IG has a completeness error
    for col in ("faith:gradcam:deletion_auc", "faith:integrated_gradients:completeness_relative"):
        for (lab, grp), part in df.groupby(["label", "gender"]):
            c = cells[col][lab]["by_group"][grp]
            assert c["n"] == len(part) and c["mean"] == pytest.approx(part[col].mean(), abs=1e-9)
            assert c["ci"][0] <= c["mean"] + 1e-12 and c["mean"] <= c["ci"][1] + 1e-12
        assert cells[col]["doctor"]["gap"]["scope"] == "label=doctor"


def test_report_answers_first_and_states_each_finding_once(planted) -> None:
    import re

    from markupsafe import escape

    from biasscope.audit.results import fmt_number, gap_sentence

    run, metrics = planted
    page = (run / "report.html").read_text()
    mm = metrics["models"]["biased"]
    # the answer per model, then how to read it, then the evidence
    assert page.index("biased: the answer") < page.index("How to read this") < page.index("Model biased: evidence")
    # every flagged finding is stated exactly once (in the answer or in the evidence's findings list)
    assert mm["flagged"]
    for g in mm["flagged"]:
        assert page.count(escape(gap_sentence(g))) == 1  # escaped as the template does, g["metric"]
    # the answer carries the bias score with its interval, as in metrics.json
    bs = mm["bias_score"]
    assert f"bias score {fmt_number(bs['score'])} (95% CI [{fmt_number(bs['ci'][0])}, {fmt_number(bs['ci'][1])}]" \
        in page
    # warnings: one grouped, collapsible list per model that has any
    assert page.count("<details class='warn'>") == sum(bool(m["warnings"]) for m in metrics["models"].values())
    # removal charts of one model share one scale
    biased = page[page.index("Model biased: evidence"):page.index("Model fair: evidence")]
    charts = re.findall(r'aria-label="Removal effect on p\(true\)[^"]*".*?</svg>', biased)
    assert len(charts) == 2  # regions tool and hair
    ends = {re.findall(r'text-anchor="end">([^<]+)</text></svg>', c)[0] for c in charts}
    assert len(ends) == 1
    # tiles say which class was predicted
    assert "predicted class <b>" in page
    assert fmt_number(2.4e-4) == "2.40e-04" and fmt_number(0.0123) == "0.012" and fmt_number(0.0) == "0.000"
    assert fmt_number(3e-5, pct=True) == "3.0e-03%" and fmt_number(0.25, pct=True) == "25.0%"
