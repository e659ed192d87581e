"""Group metrics equal fairlearn's; gap intervals and p-values behave as statistics should."""

from __future__ import annotations

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
    g = mm["groupings"]["gender"]
    mf = MetricFrame(metrics=accuracy_score, y_true=df["label"], y_pred=df["pred_label"],
                     sensitive_features=df["gender"])
    for grp, v in mf.by_group.items():
        assert g["by_group"][grp]["accuracy"] == pytest.approx(v, abs=1e-12)
        assert g["by_group"][grp]["n"] == int((df["gender"] == grp).sum())
    assert g["gaps"]["accuracy"]["difference"] == pytest.approx(mf.difference(), abs=1e-12)
    assert g["gaps"]["accuracy"]["fairlearn_difference"] == pytest.approx(mf.difference(), abs=1e-12)
    assert g["gaps"]["accuracy"]["ratio"] == pytest.approx(mf.ratio(), abs=1e-12)
    # label x group cells: fairlearn with control features == a plain pandas groupby
    cells = df.groupby(["label", "gender"])["p_true"].mean()
    for (lab, grp), v in cells.items():
        assert g["by_label"][lab]["by_group"][grp]["mean_p_true"] == pytest.approx(v, abs=1e-12)
    for lab in ("doctor", "nurse"):
        yt, yp = (df["label"] == lab).astype(int), df[f"predicted:{lab}"].astype(int)
        ref = MetricFrame(metrics={"sr": selection_rate, "fpr": false_positive_rate, "fnr": false_negative_rate},
                          y_true=yt, y_pred=yp, sensitive_features=df["gender"])
        c = g["concepts"][lab]
        for grp, row in ref.by_group.iterrows():
            assert c["by_group"][grp]["selection_rate"] == pytest.approx(row["sr"], abs=1e-12)
            assert c["by_group"][grp]["fpr"] == pytest.approx(row["fpr"], abs=1e-12)
            assert c["by_group"][grp]["fnr"] == pytest.approx(row["fnr"], abs=1e-12)
        assert c["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(yt, yp, sensitive_features=df["gender"]), abs=1e-12)
        assert c["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(yt, yp, sensitive_features=df["gender"]), abs=1e-12)
    # region shares ignore images without positive attribution (NaN)
    share = df.groupby("gender")["share:gradcam:hair"].mean()
    for grp, v in share.items():
        assert g["regions"]["by_group"][grp]["share:gradcam:hair"] == pytest.approx(v, abs=1e-12)
    assert mm["overall"]["accuracy"] == pytest.approx(df["correct"].mean())
    assert any("group 'other'" in w for w in compute_model_metrics(
        df, groups=["gender"], labels=["doctor"], options=MetricsOptions(n_boot=100, n_perm=100))["warnings"])


def test_intersectional_grouping_and_rate_with_empty_denominator() -> None:
    df = _frame(1)
    df["age"] = np.where(np.arange(len(df)) % 2 == 0, "young", "old")
    mm = compute_model_metrics(df, groups=["gender", "age"], labels=["doctor", "nurse"], options=FAST)
    inter = mm["groupings"]["gender x age"]["by_group"]
    assert inter["female & young"]["n"] == int(((df["gender"] == "female") & (df["age"] == "young")).sum())
    # a group with no negatives for a concept has an undefined FPR (fairlearn itself reports 0)
    df2 = df.copy()
    df2.loc[df2["gender"] == "other", "label"] = "doctor"
    c = compute_model_metrics(df2, groups=["gender"], labels=["doctor", "nurse"], options=FAST)
    assert c["groupings"]["gender"]["concepts"]["doctor"]["by_group"]["other"]["fpr"] is None


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
    gap = mm["groupings"]["gender"]["gaps"]["accuracy"]
    m = mm["n_tests"]
    assert m >= 20 and gap["n_perm"] == int(np.ceil(2 * m / 0.05))
    assert gap["p_value"] == pytest.approx(1 / (gap["n_perm"] + 1)) and gap["flagged"]
    assert gap["p_adjusted"] < 0.05
    untouched = mm["groupings"]["gender"]["gaps"]["accuracy_topk"]
    assert untouched["n_perm"] == 100 and not untouched["flagged"]
