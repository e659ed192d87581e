"""Verification metrics on hand-made scores and embeddings: every figure computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from biasscope.verify import (
    VerifyOptions,
    compute_verify_metrics,
    cosine_similarity,
    fmr,
    fnmr,
    identity_bootstrap_rates,
    roc_points,
    tar_at_far,
    threshold_at_far,
)


def test_threshold_rates_by_hand():
    imp = np.arange(1, 11) / 10  # 0.1 .. 1.0
    gen = [0.5, 0.85, 0.9, 0.95]
    # far 0.2 over 10 impostors: k = 2, the 3rd highest impostor score is 0.8
    t = threshold_at_far(imp, 0.2)
    assert t == 0.8
    assert fmr(imp, t) == 0.2  # 0.9 and 1.0 are above
    assert fnmr(gen, t) == 0.25  # only 0.5 is at or below
    assert tar_at_far(gen, imp, 0.2) == 0.75
    # k = 0: the highest impostor score; nothing is strictly above it
    assert threshold_at_far(imp, 0.05) == 1.0
    assert fmr(imp, 1.0) == 0.0
    # ties: the achieved FMR stays at or below the target
    tied = [0.5, 0.9, 0.9, 0.9, 0.1]
    t2 = threshold_at_far(tied, 0.4)  # k = 2 -> 3rd highest = 0.9; nobody is above 0.9
    assert t2 == 0.9 and fmr(tied, t2) == 0.0
    # a FAR the data cannot resolve (10 impostors, 1e-2) has no TAR
    assert tar_at_far(gen, imp, 1e-2) is None
    assert math.isnan(threshold_at_far([], 0.1))
    assert math.isnan(fmr(imp, math.nan)) and math.isnan(fnmr(gen, math.nan))  # no threshold, no rate


def test_roc_points_by_hand():
    roc = roc_points([0.6, 0.9], [0.1, 0.6])
    assert roc["threshold"] == [0.1, 0.6, 0.9]
    assert roc["fmr"] == [0.5, 0.0, 0.0]  # impostors strictly above each threshold
    assert roc["fnmr"] == [0.0, 0.5, 1.0]  # genuine at or below


def _angle_vectors(angles_deg):
    a = np.deg2rad(np.asarray(angles_deg, dtype=float))
    return np.stack([np.cos(a), np.sin(a)], axis=1) * 3.0  # norm 3: cosine ignores it


def test_cosine_of_hand_made_embeddings():
    base = _angle_vectors([0, 0, 0])
    other = _angle_vectors([0, 60, 90])
    assert np.allclose(cosine_similarity(base, other), [1.0, 0.5, 0.0], atol=1e-12)


def _frame(rows):
    return pd.DataFrame(rows, columns=["pair_id", "kind", "subgroup", "identity_a", "identity_b", "g_a", "g_b",
                                       "score"])


def _synthetic():
    """Subgroup A: 100 impostor pairs scoring 0.00..0.99, 4 genuine (0.7, 0.8, 0.9, 0.95); subgroup B:
    impostors at half A's scores, genuine 0.6..0.9; subgroup C like B. Each impostor pair has two
    identities of its subgroup (20 per subgroup), each genuine pair one."""
    rows = []
    pid = 0
    rng = np.random.default_rng(1)
    for g, scale, gen in (("A", 1.0, [0.7, 0.8, 0.9, 0.95]), ("B", 0.5, [0.6, 0.7, 0.8, 0.9]),
                          ("C", 0.5, [0.6, 0.7, 0.8, 0.9])):
        for i in range(100):
            a, b = rng.choice(20, size=2, replace=False)
            rows.append((pid, "impostor", g, f"{g}{a}", f"{g}{b}", g, g, scale * i / 100))
            pid += 1
        for k, s in enumerate(gen):
            rows.append((pid, "genuine", g, f"{g}{k}", f"{g}{k}", g, g, s))
            pid += 1
    rows.append((pid, "cross", "cross-group", "A0", "B0", "A", "B", 0.99))
    return _frame(rows)


def test_global_and_subgroup_thresholds_by_hand():
    df = _synthetic()
    m = compute_verify_metrics(df, ["g"], VerifyOptions(far=0.1, fars=(0.1, 0.01), n_boot=200))
    o = m["overall"]
    # 300 same-group impostors, k = 30: A's 0.71..0.99 (29 scores) and 0.70 are the top 30;
    # B's and C's impostors are at most 0.495. The 31st highest is A's 0.69.
    assert o["threshold"] == pytest.approx(0.69)
    assert o["fmr"] == pytest.approx(30 / 300)
    assert o["n_genuine"] == 12 and o["n_impostor"] == 300
    subs = m["groupings"]["g"]["subgroups"]
    assert subs["A"]["fmr"] == pytest.approx(0.30)
    assert subs["B"]["fmr"] == 0.0 and subs["C"]["fmr"] == 0.0
    assert subs["A"]["fnmr"] == 0.0  # 0.7 > 0.69
    assert subs["B"]["fnmr"] == pytest.approx(0.25)  # 0.6 <= 0.69
    # own thresholds: the 11th highest of each subgroup's 100 impostors, FMR exactly 0.1
    assert subs["A"]["threshold"] == pytest.approx(0.89)
    assert subs["B"]["threshold"] == pytest.approx(0.445)
    for s in subs.values():
        assert s["fmr_own_threshold"] == pytest.approx(0.1)
    assert subs["A"]["fnmr_own_threshold"] == pytest.approx(0.5)  # 0.7, 0.8 <= 0.89
    assert subs["B"]["fnmr_own_threshold"] == 0.0
    # TAR at FAR 0.1 per subgroup uses the subgroup's own impostors; 0.01 needs 100 impostors: resolved
    assert subs["A"]["tar_at_far"]["0.1"] == pytest.approx(0.5)
    assert subs["A"]["tar_at_far"]["0.01"] == 0.0  # k = 1: t = 0.98, and every genuine score is below it
    assert subs["B"]["tar_at_far"]["0.01"] == 1.0  # t = 0.49: all of B's genuine scores are above
    # the cross-group pair is reported apart
    assert m["cross_group"]["n_impostor"] == 1 and m["cross_group"]["fmr"] == 1.0


def test_gap_flags_and_degenerate_comparisons():
    m = compute_verify_metrics(_synthetic(), ["g"], VerifyOptions(far=0.1, n_boot=300))
    tests = {(t["metric"], frozenset((t.get("high_group"), t.get("low_group")))): t
             for t in m["groupings"]["g"]["tests"]}
    ab = tests[("fmr", frozenset(("A", "B")))]
    assert ab["high_group"] == "A" and ab["difference"] == pytest.approx(0.3)
    assert ab["ratio"] == "inf" and ab["flagged"]
    bc = tests[("fmr", frozenset(("B", "C")))]
    assert bc["degenerate"] and not bc["flagged"] and bc["p_value"] is None
    # Holm adjusts over the non-degenerate tests only
    assert m["n_tests"] == sum(1 for t in m["groupings"]["g"]["tests"] if not t["degenerate"])
    # a large minimum ratio keeps the FNMR gap (0.25 vs 0: ratio inf) but a minimum difference of 0.5 drops it
    m2 = compute_verify_metrics(_synthetic(), ["g"], VerifyOptions(far=0.1, n_boot=300, min_difference=0.5))
    assert not m2["flagged"]


def test_identity_bootstrap_resamples_identities_not_pairs():
    # identity X: 5 genuine pairs all errors; Y: 5 all correct. Drawing 2 identities with replacement,
    # a replicate is 1 (XX), 0.5 (XY) or 0 (YY): never the in-between values a pair bootstrap gives.
    e = np.array([1.0] * 5 + [0.0] * 5)
    ids = np.array([0] * 5 + [1] * 5)
    b = identity_bootstrap_rates(e, ids, ids, n_boot=4000, rng=np.random.default_rng(0))
    assert set(np.unique(b)) <= {0.0, 0.5, 1.0}
    assert np.mean(b == 0.5) == pytest.approx(0.5, abs=0.03)
    # impostor pairs count with the product of their identities' draws: reproduce one replicate by hand
    e2 = np.array([1.0, 0.0])
    a, bb = np.array([0, 0]), np.array([1, 2])  # (X,Y) is an error, (X,Z) is not
    rep = identity_bootstrap_rates(e2, a, bb, n_boot=50, rng=np.random.default_rng(3))
    draws = np.random.default_rng(3).multinomial(3, [1 / 3] * 3, size=50).astype(float)
    w = np.stack([draws[:, 0] * draws[:, 1], draws[:, 0] * draws[:, 2]], axis=1)
    with np.errstate(invalid="ignore"):
        expect = w[:, 0] / w.sum(1)
    assert np.allclose(rep, expect, equal_nan=True)


def test_subgroup_thresholds_hit_target_fmr_on_continuous_scores():
    rng = np.random.default_rng(7)
    rows = []
    pid = 0
    for g, n, mu in (("P", 1000, 0.2), ("Q", 2000, 0.35), ("R", 3000, 0.1)):
        for s in rng.normal(mu, 0.1, size=n):
            rows.append((pid, "impostor", g, f"{g}{pid % 50}", f"{g}{(pid + 1) % 50}", g, g, s))
            pid += 1
        for s in rng.normal(0.8, 0.1, size=200):
            rows.append((pid, "genuine", g, f"{g}{pid % 50}", f"{g}{pid % 50}", g, g, s))
            pid += 1
    m = compute_verify_metrics(_frame(rows), ["g"], VerifyOptions(far=0.01, fars=(0.01,), n_boot=100))
    for s in m["groupings"]["g"]["subgroups"].values():
        assert s["fmr_own_threshold"] == 0.01  # n * far is an integer and the scores are distinct
    # one global threshold: Q (highest impostor scores) has the highest FMR, R the lowest
    subs = m["groupings"]["g"]["subgroups"]
    assert subs["Q"]["fmr"] > m["overall"]["fmr"] > subs["R"]["fmr"]
    assert m["overall"]["fmr"] == pytest.approx(0.01)


def test_why_shares_per_subgroup_by_hand():
    from biasscope.faces import FACE_PARTS
    from biasscope.verify import why_metrics

    explained, rows = [], []
    for k in range(60):
        gender = "female" if k < 30 else "male"
        hair = (0.4 if gender == "female" else 0.1) + (0.02 if k % 2 else -0.02)
        shares = {p: 0.0 for p in FACE_PARTS}
        shares.update(hair_band=hair, eyes=0.2, face_skin=0.8 - hair)
        explained.append({"pair_id": k, "method": "occlusion", "shares": shares, "areas": {"hair_band": 0.1}})
        rows.append({"pair_id": k, "gender_a": gender})
    scores = pd.DataFrame(rows)
    why = why_metrics(explained, scores, ["gender"], VerifyOptions(n_boot=500), min_share_difference=0.05)
    subs = why["groupings"]["gender"]["subgroups"]
    assert subs["female"]["hair_band"]["mean"] == pytest.approx(0.4)
    assert subs["male"]["hair_band"]["mean"] == pytest.approx(0.1)
    assert subs["female"]["hair_band"]["area"] == pytest.approx(0.1)
    lo, hi = subs["female"]["hair_band"]["ci"]
    assert 0.39 <= lo < 0.4 < hi <= 0.41  # 30 values of 0.38 or 0.42
    flagged = {(f["part"], f["high_group"]) for f in why["flagged"]}
    assert flagged == {("hair_band", "female"), ("face_skin", "male")}
    tests = why["groupings"]["gender"]["tests"]
    assert tests["eyes"]["degenerate"] and not tests["eyes"]["flagged"]  # 0.2 everywhere
    assert tests["hair_band"]["difference"] == pytest.approx(0.3)
    strict = why_metrics(explained, scores, ["gender"], VerifyOptions(n_boot=500), min_share_difference=0.5)
    assert strict["flagged"] == []


def test_without_groups_and_report(tmp_path):
    from biasscope.verify import verify_report_section
    from biasscope.verify.report import write_plots

    df = _synthetic()
    df = df[df["kind"] != "cross"]
    m = compute_verify_metrics(df, [], VerifyOptions(far=0.1, n_boot=100))
    assert list(m["groupings"]) == ["all"]
    e = m["groupings"]["all"]["subgroups"]["all"]
    assert e["fmr"] == m["overall"]["fmr"] == pytest.approx(0.1) and e["n_genuine"] == 12
    plots = write_plots(m, df, tmp_path)
    html = verify_report_section(m, plots)
    assert f"{m['overall']['threshold']:.4f}" in html
    assert html.count("data:image/png;base64,") == 3


def test_no_impostors_means_no_threshold_and_no_rates():
    df = _synthetic()
    df = df[df["kind"] == "genuine"]
    m = compute_verify_metrics(df, ["g"], VerifyOptions(far=0.1, n_boot=50))
    assert m["overall"]["threshold"] is None and m["overall"]["fnmr"] is None
    a = m["groupings"]["g"]["subgroups"]["A"]
    assert a["fnmr"] is None and a["fnmr_ci"] == [None, None] and a["n_impostor"] == 0
    assert all(t["degenerate"] for t in m["groupings"]["g"]["tests"]) and m["flagged"] == []
    assert any("need both genuine and same-group impostor pairs" in w for w in m["warnings"])
