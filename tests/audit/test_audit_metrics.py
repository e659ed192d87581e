"""Group metrics equal fairlearn's; gap intervals and p-values behave as statistics should."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
)
from sklearn.metrics import accuracy_score

from biasscope.audit import MetricsOptions, bias_score, compute_model_metrics, gap_test, holm_adjust

FAST = MetricsOptions(n_boot=300, n_perm=300, min_group_size=5)


def _frame(seed: int = 0, n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(["doctor", "nurse"], n)
    gender = rng.choice(["female", "male", "other"], n, p=[0.45, 0.45, 0.10])
    pred = np.where(rng.random(n) < 0.7, label, np.where(label == "doctor", "nurse", "doctor"))
    pred = np.where(rng.random(n) < 0.05, "(none)", pred)
    p_true = np.clip(rng.normal(0.6, 0.2, n), 0, 1)
    df = pd.DataFrame({"label": label, "gender": gender, "pred_label": pred, "p_true": p_true})
    df["correct"] = df["pred_label"] == df["label"]
    df["correct_top1"] = df["correct"]
    df["correct_topk"] = df["correct"] | (rng.random(n) < 0.5)
    for lab in ("doctor", "nurse"):
        df[f"predicted:{lab}"] = df["pred_label"] == lab
        df[f"score:{lab}"] = rng.random(n)
    df["share:gradcam:hair"] = np.where(rng.random(n) < 0.1, np.nan, rng.random(n))
    df["ratio:gradcam:hair"] = df["share:gradcam:hair"] / 0.1
    df["removal:hair"] = rng.normal(0, 0.1, n)
    return df


def test_group_metrics_equal_fairlearn() -> None:
    df = _frame()
    mm = compute_model_metrics(df, groups=["gender"], labels=["doctor", "nurse"], methods=["gradcam"],
                               regions=["hair"], options=FAST)
    g = mm.groupings["gender"]
    mf = MetricFrame(metrics=accuracy_score, y_true=df["label"], y_pred=df["pred_label"],
                     sensitive_features=df["gender"])
    for grp, v in mf.by_group.items():
        assert g.by_group[grp].accuracy == pytest.approx(v, abs=1e-12)
        assert g.by_group[grp].n == int((df["gender"] == grp).sum())
    assert g.gaps["accuracy"].difference == pytest.approx(mf.difference(), abs=1e-12)
    assert g.gaps["accuracy"].fairlearn_difference == pytest.approx(mf.difference(), abs=1e-12)
    assert g.gaps["accuracy"].ratio == pytest.approx(mf.ratio(), abs=1e-12)
    # label x group cells: fairlearn with control features == a plain pandas groupby
    cells = df.groupby(["label", "gender"])["p_true"].mean()
    for (lab, grp), v in cells.items():
        assert g.by_label[lab].by_group[grp].mean_p_true == pytest.approx(v, abs=1e-12)
    for lab in ("doctor", "nurse"):
        yt, yp = (df["label"] == lab).astype(int), df[f"predicted:{lab}"].astype(int)
        ref = MetricFrame(metrics={"sr": selection_rate, "fpr": false_positive_rate, "fnr": false_negative_rate},
                          y_true=yt, y_pred=yp, sensitive_features=df["gender"])
        c = g.concepts[lab]
        for grp, row in ref.by_group.iterrows():
            assert c.by_group[grp].selection_rate == pytest.approx(row["sr"], abs=1e-12)
            assert c.by_group[grp].fpr == pytest.approx(row["fpr"], abs=1e-12)
            assert c.by_group[grp].fnr == pytest.approx(row["fnr"], abs=1e-12)
        assert c.demographic_parity_difference == pytest.approx(
            demographic_parity_difference(yt, yp, sensitive_features=df["gender"]), abs=1e-12)
        assert c.equalized_odds_difference == pytest.approx(
            equalized_odds_difference(yt, yp, sensitive_features=df["gender"]), abs=1e-12)
    # region shares ignore images without positive attribution (NaN)
    share = df.groupby("gender")["share:gradcam:hair"].mean()
    for grp, v in share.items():
        assert g.regions.by_group[grp]["share:gradcam:hair"] == pytest.approx(v, abs=1e-12)
    assert mm.overall.accuracy == pytest.approx(df["correct"].mean())
    assert any("group 'other'" in w for w in compute_model_metrics(
        df, groups=["gender"], labels=["doctor"], options=MetricsOptions(n_boot=100, n_perm=100)).warnings)


def test_intersectional_grouping_and_rate_with_empty_denominator() -> None:
    df = _frame(1)
    df["age"] = np.where(np.arange(len(df)) % 2 == 0, "young", "old")
    mm = compute_model_metrics(df, groups=["gender", "age"], labels=["doctor", "nurse"], options=FAST)
    inter = mm.groupings["gender x age"].by_group
    assert inter["female & young"].n == int(((df["gender"] == "female") & (df["age"] == "young")).sum())
    # a group with no negatives for a concept has an undefined FPR (fairlearn itself reports 0)
    df2 = df.copy()
    df2.loc[df2["gender"] == "other", "label"] = "doctor"
    c = compute_model_metrics(df2, groups=["gender"], labels=["doctor", "nurse"], options=FAST)
    assert c.groupings["gender"].concepts["doctor"].by_group["other"].fpr is None


def test_gap_test_hand_computed_extremes() -> None:
    v = np.r_[np.ones(20), np.zeros(20)]
    g = np.r_[["a"] * 20, ["b"] * 20]
    r = gap_test(v, g, n_boot=200, n_perm=500, seed=3)
    assert (r["high_group"], r["low_group"], r["difference"], r["ratio"]) == ("a", "b", 1.0, 0.0)
    assert r["difference_ci"] == [1.0, 1.0]
    assert r["p_value"] == pytest.approx(1 / 501)  # no permutation separates the groups perfectly
    same = gap_test(np.full(40, 0.3), g, n_boot=200, n_perm=200)
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    assert gap_test(v, ["a"] * 40) is None


def test_gap_test_against_naive_loops() -> None:
    rng = np.random.default_rng(5)
    v = rng.random(30)
    g = np.r_[["a"] * 12, ["b"] * 18]
    r = gap_test(v, g, n_boot=2000, n_perm=2000, seed=0)
    # naive references with their own random streams: agree within Monte Carlo error
    rr = np.random.default_rng(99)
    a, b = v[:12], v[12:]
    boots = [rr.choice(a, 12).mean() - rr.choice(b, 12 + 6).mean() for _ in range(2000)]
    sign = 1 if a.mean() >= b.mean() else -1
    lo, hi = np.quantile(np.multiply(sign, boots), [0.025, 0.975])
    assert r["difference_ci"][0] == pytest.approx(lo, abs=0.04)
    assert r["difference_ci"][1] == pytest.approx(hi, abs=0.04)
    obs = abs(a.mean() - b.mean())
    perm = []
    for _ in range(2000):
        s = rr.permutation(v)
        perm.append(abs(s[:12].mean() - s[12:].mean()))
    p_ref = (1 + np.sum(np.array(perm) >= obs - 1e-12)) / 2001
    assert r["p_value"] == pytest.approx(p_ref, abs=0.03)


def test_gap_intervals_cover_and_pvalues_are_uniform_under_no_effect() -> None:
    """Under no group effect: 95% intervals contain 0 about 95% of the time, p < 0.05 about 5%."""
    rng = np.random.default_rng(11)
    cover, small_p, reps = 0, 0, 300
    g = np.r_[["a"] * 40, ["b"] * 40]
    for i in range(reps):
        v = (rng.random(80) < 0.6).astype(float)
        r = gap_test(v, g, n_boot=300, n_perm=300, seed=i)
        cover += r["difference_ci"][0] <= 0 <= r["difference_ci"][1]
        small_p += r["p_value"] < 0.05
    assert 0.90 <= cover / reps <= 0.99
    assert 0.01 <= small_p / reps <= 0.10


def test_holm_adjust_hand_computed() -> None:
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bias_score_hand_computed() -> None:
    df = pd.DataFrame({
        "label": ["doctor"] * 4 + ["nurse"] * 4 + ["pilot"] * 2,
        "gender": ["male", "male", "female", "female", "female", "female", "male", "male", "male", "female"],
        "p_true": [0.9, 0.8, 0.4, 0.5, 0.7, 0.9, 0.6, 0.6, 0.0, 1.0],
    })
    r = bias_score(df, "gender", ["doctor:male", "nurse:female"], n_boot=500, n_perm=500, seed=0)
    # stereotypical: 0.9, 0.8, 0.7, 0.9 -> 0.825; atypical: 0.4, 0.5, 0.6, 0.6 -> 0.525; pilots ignored
    assert r["score"] == pytest.approx(0.3)
    assert (r["stereotypical_mean"], r["atypical_mean"]) == pytest.approx((0.825, 0.525))
    assert (r["n_stereotypical"], r["n_atypical"]) == (4, 4)
    assert r["ci"][0] <= 0.3 <= r["ci"][1]
    with pytest.raises(ValueError, match="LABEL:GROUP"):
        bias_score(df, "gender", ["doctor"])


def test_permutation_resolution_is_raised_for_holm() -> None:
    """With few permutations the smallest p-value (1 / (n_perm + 1)) could never survive Holm over many
    tests; gaps at that floor are re-tested with ceil(2 m / alpha) permutations."""
    df = _frame(2)
    df.loc[df["gender"] == "male", "correct"] = True
    df.loc[df["gender"] == "female", "correct"] = False  # a planted, unmistakable accuracy gap
    opts = MetricsOptions(n_boot=100, n_perm=100, min_group_size=5)
    mm = compute_model_metrics(df, groups=["gender"], labels=["doctor", "nurse"], options=opts)
    gap = mm.groupings["gender"].gaps["accuracy"]
    m = mm.n_tests
    assert m >= 20 and gap.n_perm == int(np.ceil(2 * m / 0.05))
    assert gap.p_value == pytest.approx(1 / (gap.n_perm + 1)) and gap.flagged
    assert gap.p_adjusted < 0.05
    untouched = mm.groupings["gender"].gaps["accuracy_topk"]
    assert untouched.n_perm == 100 and not untouched.flagged


def _two_groups(n: int, p_a: float, p_b: float, seed: int = 0) -> pd.DataFrame:
    """One label, two groups of ``n`` images each; accuracy exactly ``p_a`` / ``p_b``; p_true tiny or zero."""
    rng = np.random.default_rng(seed)
    ca = np.r_[np.ones(round(n * p_a)), np.zeros(n - round(n * p_a))].astype(bool)
    cb = np.r_[np.ones(round(n * p_b)), np.zeros(n - round(n * p_b))].astype(bool)
    df = pd.DataFrame({"label": "doctor", "gender": ["a"] * n + ["b"] * n, "correct": np.r_[ca, cb]})
    df["correct_top1"] = df["correct_topk"] = df["correct"]
    df["pred_label"] = np.where(df["correct"], "doctor", "(none)")
    df["p_true"] = np.r_[rng.uniform(2e-4, 3e-4, n), rng.uniform(1e-5, 2e-5, n)]  # significant, tiny
    return df


def test_large_effect_is_flagged_tiny_significant_effect_is_not() -> None:
    df = _two_groups(200, 0.9, 0.5)
    mm = compute_model_metrics(df, groups=["gender"], labels=["doctor"], options=FAST)
    acc = mm.groupings["gender"].gaps["accuracy"]
    assert acc.flagged and acc.status == "flagged" and acc.difference == pytest.approx(0.4)
    assert acc.min_effect == 0.05 and acc.n == {"a": 200, "b": 200} and acc.n_images == 400
    p = mm.groupings["gender"].gaps["mean_p_true"]
    # every permutation separates less: p at its floor, Holm-significant, but 2.4e-4 is far below 0.05
    assert p.p_adjusted < 0.05 and p.difference_ci[0] > 0
    assert p.status == "too small" and not p.flagged
    assert {(f.metric, f.scope) for f in mm.flagged} >= {("accuracy", "all")}
    assert all(f.metric != "mean_p_true" for f in mm.flagged)
    assert mm.n_not_flagged["too small"] >= 1
    # the user's minimum decides: with 0 any significant gap is flagged, with 0.5 the accuracy gap is not
    zero = compute_model_metrics(df, groups=["gender"], labels=["doctor"],
                                 options=MetricsOptions(n_boot=300, n_perm=300, min_group_size=5,
                                                        min_effect={"probability": 0.0}))
    assert zero.groupings["gender"].gaps["mean_p_true"].flagged
    high = compute_model_metrics(df, groups=["gender"], labels=["doctor"],
                                 options=MetricsOptions(n_boot=300, n_perm=300, min_group_size=5,
                                                        min_effect={"accuracy": 0.5}))
    assert high.groupings["gender"].gaps["accuracy"].status == "too small"
    with pytest.raises(ValueError, match="unknown kind"):
        MetricsOptions(min_effect={"accuracyy": 0.1})


def test_all_zero_cells_are_degenerate_and_never_flagged() -> None:
    df = _two_groups(100, 0.0, 0.0)
    df["p_true"] = 0.0
    mm = compute_model_metrics(df, groups=["gender"], labels=["doctor"], options=FAST)
    for k in ("accuracy", "mean_p_true"):
        g = mm.groupings["gender"].gaps[k]
        assert g.degenerate == "both groups are 0 on every image" and g.status == "degenerate"
        assert not g.flagged and g.ratio is None and g.ratio_ci == (None, None)
    assert mm.flagged == []


def test_ratio_interval_only_when_the_denominator_interval_excludes_zero() -> None:
    g = np.r_[["a"] * 40, ["b"] * 40]
    # high group: one image of 1 among 40 -> its bootstrap interval reaches 0: no ratio interval
    v = np.r_[np.r_[1.0, np.zeros(39)], np.zeros(40)]
    r = gap_test(v, g, n_boot=500, n_perm=200)
    assert r["ratio"] == 0.0 and r["ratio_ci"] == [pytest.approx(np.nan, nan_ok=True)] * 2
    assert "interval reaches 0" in r["ratio_note"] and r["degenerate"] is None
    # signed values (removal effects): no ratio at all
    s = gap_test(np.r_[np.full(40, -0.1), np.full(40, -0.3)], g, n_boot=200, n_perm=200)
    assert math.isnan(s["ratio"]) and "signed" in s["ratio_note"]
    # well away from 0: a ratio interval that contains the ratio
    w = gap_test(np.r_[np.full(40, 0.8), np.full(40, 0.4)] + np.tile([0.0, 0.05], 40), g, n_boot=300, n_perm=200)
    assert w["ratio_ci"][0] <= w["ratio"] <= w["ratio_ci"][1] and w["ratio_note"] is None


def test_region_findings_are_per_label_x_group_over_images_with_the_region() -> None:
    df = _frame(3)
    # the 'face' region exists only on doctor rows (as in a manifest that fills region:face for doctors)
    df.loc[df["label"] != "doctor", "share:gradcam:hair"] = np.nan
    df.loc[df["label"] != "doctor", "removal:hair"] = np.nan
    fem = (df["label"] == "doctor") & (df["gender"] == "female")
    df.loc[fem, "share:gradcam:hair"] = 0.6 + 0.1 * np.random.default_rng(0).random(fem.sum())
    df.loc[(df["label"] == "doctor") & (df["gender"] == "male"), "share:gradcam:hair"] = 0.1
    mm = compute_model_metrics(df, groups=["gender"], labels=["doctor", "nurse"], methods=["gradcam"],
                               regions=["hair"], options=FAST)
    cells = mm.groupings["gender"].regions.cells
    assert set(cells["share:gradcam:hair"]) == {"doctor"}  # no nurse cell: nurses have no such region
    doc = cells["share:gradcam:hair"]["doctor"]
    sub = df[(df["label"] == "doctor") & df["share:gradcam:hair"].notna()]
    assert doc.n == len(sub) and doc.n_label == int((df["label"] == "doctor").sum())
    for grp, part in sub.groupby("gender"):
        c = doc.by_group[grp]
        assert c.n == len(part) and c.mean == pytest.approx(part["share:gradcam:hair"].mean(), abs=1e-12)
        assert c.ci[0] <= c.mean <= c.ci[1]
        for outcome, flag in ((doc.correct, True), (doc.wrong, False)):
            o = part[part["correct"] == flag]["share:gradcam:hair"]
            oc = outcome[grp]
            assert oc.n == len(o)
            if len(o):
                assert oc.mean == pytest.approx(o.mean(), abs=1e-12)
    gap = doc.gap
    assert gap.label == "doctor" and gap.scope == "label=doctor" and gap.high_group == "female"
    assert gap.low_group == "male" and gap.flagged and gap.n_images == len(sub)
    assert gap.fairlearn_difference == pytest.approx(gap.difference, abs=1e-12)
    assert any(f.metric == "share:gradcam:hair" and f.label == "doctor" for f in mm.flagged)
    # share / area is described, not tested (it is the share over a per-image constant)
    assert cells["ratio:gradcam:hair"]["doctor"].gap is None


def test_warnings_with_two_group_columns_are_grouped_once() -> None:
    """Two group columns (and their intersection) must not repeat a warning: one list per kind, each item once."""
    from biasscope.audit.metrics import group_warnings

    df = _frame(4)
    df["age"] = np.where(np.arange(len(df)) % 3 == 0, "young", "old")
    mm = compute_model_metrics(df, groups=["gender", "age"], labels=["doctor", "nurse"],
                               options=MetricsOptions(n_boot=100, n_perm=100, min_group_size=100))
    groups = {g["kind"]: g["items"] for g in mm.to_json()["warning_groups"]}
    assert set(groups) == {"small_group", "small_cell"}
    for items in groups.values():
        assert len(items) == len(set(items))
    assert sum(map(len, groups.values())) == len(mm.warnings) == len(set(mm.warnings))
    # every group (and intersectional group) below 100 images is named once
    small = set(groups["small_group"])
    assert "gender group 'other' has only {} image(s)".format(int((df["gender"] == "other").sum())) in small
    assert any(w.startswith("gender x age group 'female & young'") for w in small)
    assert group_warnings(["x happened", "x happened"]) == [{"kind": "other", "title": "Other warnings",
                                                             "items": ["x happened"]}]
    assert not any(f.startswith("Warning") for f in mm.findings)
