"""The planted shortcut: a skewed training sample makes a group gap; balancing or reweighting shrinks it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from biasscope.cli import main
from biasscope.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained(skewed_train, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    base = dict(backbone="resnet18", freeze_backbone=True, input_size=32, epochs=10, patience=None, seed=0)
    runs = {}
    for name, extra in [("skewed", {}), ("balanced", {"sampling": "balanced-label-group"}),
                        ("reweighted", {"reweight": "label-group"})]:
        runs[name] = train(skewed_train, out / name, TrainConfig(**base, **extra), show_progress=False, plots=False)
    return runs


@pytest.fixture(scope="module")
def compared(trained, balanced_test, tmp_path_factory):
    cmp_dir = tmp_path_factory.mktemp("cmp")
    args = ["compare", str(balanced_test), "--group", "group", "--out", str(cmp_dir), "--bootstrap", "500",
            "--permutations", "200", "--json"]
    for name in ("skewed", "balanced", "reweighted"):
        args += ["--model", str(trained[name].checkpoint), "--name", name]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return cmp_dir, json.loads(res.output)


def test_skewed_gap_and_mitigation_with_intervals(trained, compared):
    assert all(r.feature_cache for r in trained.values())  # frozen backbone: only the head is trained
    cmp_dir, out = compared
    assert out == json.loads((cmp_dir / "compare.json").read_text())
    assert out["n_images"] == 600 and out["baseline"] == "skewed"

    skew = out["per_model"]["skewed"]
    # the shortcut: red images of group b are called green, so b loses accuracy on the balanced set
    assert skew["gap"]["high_group"] == "a" and skew["gap"]["low_group"] == "b"
    assert skew["gap"]["difference"] > 0.15
    assert skew["gap"]["ci"][0] > 0.05  # the interval excludes no gap
    assert skew["audit_gap"]["flagged"] is True  # the audit's own test agrees (CI and Holm-adjusted p)
    for name in ("balanced", "reweighted"):
        fixed = out["per_model"][name]
        change = out["changes"][name]["gap_change"]
        assert change["verdict"] == "shrank"
        assert change["ci"][1] < -0.05  # the whole interval of the change is below zero
        assert abs(fixed["gap"]["difference"]) < 0.08
        assert fixed["gap"]["ci"][0] < 0.0 < fixed["gap"]["ci"][1] + 0.02
        assert out["changes"][name]["by_group"]["b"]["verdict"] == "rose"
    text = " ".join(out["summary"])
    assert "From skewed to balanced, the gap shrank" in text
    assert "From skewed to reweighted, the gap shrank" in text
    assert (cmp_dir / "compare.md").read_text().count("| skewed |") == 1


def test_compare_numbers_match_the_per_image_audit(compared):
    """Per-group accuracies and changes equal the audit's per-image correctness, model by model."""
    import pandas as pd

    cmp_dir, out = compared
    df = pd.read_csv(cmp_dir / "audit" / "per_image.csv")
    for key in out["models"]:
        sub = df[df["model"] == key]
        for g in ("a", "b"):
            assert out["per_model"][key]["by_group"][g]["accuracy"] == pytest.approx(
                sub.loc[sub["group"] == g, "correct"].mean())
        lo, hi = out["per_model"][key]["by_group"]["b"]["ci"]
        assert lo <= out["per_model"][key]["by_group"]["b"]["accuracy"] <= hi
    for key in ("balanced", "reweighted"):
        ch = out["changes"][key]
        assert ch["accuracy_change"]["change"] == pytest.approx(
            out["per_model"][key]["accuracy"] - out["per_model"]["skewed"]["accuracy"])
        assert ch["gap_change"]["change"] == pytest.approx(
            out["per_model"][key]["gap"]["difference"] - out["per_model"]["skewed"]["gap"]["difference"])
