"""Training mechanics: determinism, early stopping, logged metrics, curves, checkpoint in every command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from biasscope.cli import main
from biasscope.models import load_model
from biasscope.training import TrainConfig, train


def _cfg(**kw) -> TrainConfig:
    base = dict(backbone="resnet18", input_size=32, epochs=2, batch_size=8, patience=None, seed=7,
                val_fraction=0.2)
    return TrainConfig(**(base | kw))


def test_two_seeded_runs_are_identical_and_a_third_seed_differs(tiny_set, tmp_path):
    # full fine-tuning (BatchNorm in train mode), standard + strong augmentation, balanced sampling
    kw = dict(augment="standard", strong_augment=["auto"], sampling="balanced-group")
    r1 = train(tiny_set, tmp_path / "r1", _cfg(**kw), show_progress=False, plots=False)
    r2 = train(tiny_set, tmp_path / "r2", _cfg(**kw), show_progress=False, plots=False)
    r3 = train(tiny_set, tmp_path / "r3", _cfg(seed=8, **kw), show_progress=False, plots=False)
    s1, s2, s3 = (torch.load(r.checkpoint, weights_only=True)["state_dict"] for r in (r1, r2, r3))
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in r1.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in r2.history]
    assert not all(torch.equal(s1[k], s3[k]) for k in s1 if s1[k].is_floating_point())
    assert not r1.feature_cache and r1.strong_groups == []  # 'a' and 'b' are equally common


def test_early_stopping_keeps_the_best_epoch(tiny_set, tmp_path):
    # lr so small that the validation loss cannot drop by min_delta: epoch 1 stays the best
    r = train(tiny_set, tmp_path / "es", _cfg(epochs=6, patience=2, lr=1e-12, min_delta=1.0, freeze_backbone=True),
              show_progress=False, plots=False)
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.best_epoch == 1 and r.stopped_early


def test_logged_validation_metrics_match_the_saved_model(tiny_set, tmp_path):
    """The best epoch's per-group validation accuracy equals that of the checkpoint reloaded with
    load_model on the validation images listed in split.csv (same preprocessing end to end), and
    equals fairlearn's MetricFrame on those predictions."""
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    from biasscope.images import load_image

    r = train(tiny_set, tmp_path / "m", _cfg(epochs=3, freeze_backbone=True, lr=1e-2), show_progress=False)
    rows = list(csv.DictReader((r.out_dir / "split.csv").read_text().splitlines()))
    val = [row for row in rows if row["split"] == "val"]
    assert len(val) == 8 and {(v["label"], v["group"]) for v in val} == {
        (lab, g) for lab in ("green", "red") for g in "ab"}
    adapter = load_model(r.checkpoint)
    assert adapter.class_names == ["green", "red"] and adapter.input_size == 32
    imgs = [load_image(tiny_set.parent / v["path"]) for v in val]
    pred = [p[0].label for p in adapter.predict(imgs, top=1)]
    truth = [v["label"] for v in val]
    groups = [v["group"] for v in val]
    mf = MetricFrame(metrics=accuracy_score, y_true=truth, y_pred=pred, sensitive_features=groups)
    best = next(h for h in r.history if h["epoch"] == r.best_epoch)
    for g in ("a", "b"):
        assert best["val_by_group"][g]["accuracy"] == pytest.approx(mf.by_group[g])
        assert best["val_by_group"][g]["n"] == 4
    assert best["val_accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(pred, truth)]))
    # curves: JSON numbers are the history's; PNG and SVG are real images
    curves = json.loads((r.out_dir / "curves.json").read_text())
    assert curves["val_accuracy"] == [h["val_accuracy"] for h in r.history]
    assert curves["val_group_accuracy"]["b"] == [h["val_by_group"]["b"]["accuracy"] for h in r.history]
    assert (r.out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (r.out_dir / "curves.svg").read_bytes()[:500]
    log = [json.loads(line) for line in (r.out_dir / "train_log.jsonl").read_text().splitlines()]
    assert [e["train_loss"] for e in log] == [h["train_loss"] for h in r.history]


def test_cli_train_then_predict_and_explain_accept_the_checkpoint(tiny_set, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["train", str(tiny_set), "--out", str(out), "--input-size", "32", "--epochs", "1",
                                    "--freeze-backbone", "--seed", "1", "--no-plots", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["class_names"] == ["green", "red"] and info["n_val"] == 8
    img = next((tiny_set.parent / "img").glob("red_b_*.png"))
    pred = CliRunner().invoke(main, ["predict", str(img), "--model", str(out / "model.pt"), "--json"])
    assert pred.exit_code == 0, pred.output
    probs = json.loads(pred.output)["images"][0]["predictions"]
    assert {p["label"] for p in probs} == {"green", "red"}
    assert sum(p["probability"] for p in probs) == pytest.approx(1.0, abs=1e-5)
    exp = CliRunner().invoke(main, ["explain", str(img), "--model", str(out / "model.pt"), "--method", "gradcam",
                                    "--out", str(tmp_path / "exp"), "--no-faithfulness", "--json"])
    assert exp.exit_code == 0, exp.output
    assert json.loads(exp.output)["methods"]["gradcam"]["target_name"] in ("green", "red")


def test_cli_errors_are_clear(tiny_set, tmp_path):
    r = CliRunner().invoke(main, ["train", str(tiny_set), "--out", str(tmp_path / "x"), "--pretrained",
                                  "--backbone", "resnet18"])
    assert r.exit_code == 2 and "weights for resnet18 are not on this machine" in r.output
    r = CliRunner().invoke(main, ["train", str(tiny_set), "--out", str(tmp_path / "x"), "--sampling", "skew"])
    assert r.exit_code == 2 and "needs proportions" in r.output
    r = CliRunner().invoke(main, ["train", str(tiny_set), "--out", str(tmp_path / "x"), "--group", "gender"])
    assert r.exit_code == 2 and "gender" in r.output
