"""The doctor/nurse question asked of an open-vocabulary classifier, end to end through the CLI: a CLIP
model whose classes are the manifest's labels ("doctor", "nurse"). Mechanics only: the CLIP weights are
random (pretrained weights cannot be downloaded here), so the oracle is the same model's own
predictions, not what a trained CLIP would say."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from biasscope.cli import main
from biasscope.images import load_image
from biasscope.models import load_model

from .synth import write_dataset

pytest.importorskip("open_clip")


@pytest.mark.slow
def test_audit_with_clip_prompt_classes_reports_label_by_group_confusions(tmp_path):
    manifest = write_dataset(tmp_path, n_per_cell=3)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "audit", str(manifest), "--model", "clip:ViT-B-32", "--pretrained", "random", "--classes", "doctor,nurse",
        "--prompt", "a photo of a {}.", "--prompt", "a photo of the {} at work.", "--group", "gender",
        "--method", "gradcam", "--stereotypical", "doctor:male", "--stereotypical", "nurse:female",
        "--n-boot", "100", "--n-perm", "100", "--backend", "torch", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())["models"]["clip:ViT-B-32"]
    with (out / "per_image.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)

    # the oracle: the same (seeded) random CLIP, loaded here, classifies each image itself
    model = load_model("clip:ViT-B-32", pretrained="random", classes="doctor,nurse",
                       prompts=["a photo of a {}.", "a photo of the {} at work."], backend="torch")
    images = [load_image(tmp_path / r["path"]) for r in rows]
    probs = model.probabilities(model.preprocess(images)).numpy()
    predicted = [model.class_names[i] for i in probs.argmax(1)]
    assert [r["pred_label"] for r in rows] == predicted
    np.testing.assert_allclose([float(r["score:nurse"]) for r in rows], probs[:, 1], rtol=1e-4, atol=1e-5)
    by_label = metrics["groupings"]["gender"]["by_label"]
    for label in ("doctor", "nurse"):
        for group in ("female", "male"):
            cell = [p for r, p in zip(rows, predicted) if r["label"] == label and r["gender"] == group]
            acc = np.mean([p == label for p in cell])
            # e.g. "female doctors are called nurses in (1 - acc) of images"
            assert by_label[label]["by_group"][group]["accuracy"] == pytest.approx(acc)
            assert by_label[label]["by_group"][group]["n"] == 3
    # the explanation is of the label's class (a CLIP class) and landed in the per-image regions
    assert all(r["target_class"] == r["label"] for r in rows)
    assert all(0.0 <= float(r["share:gradcam:tool"]) <= 1.0 for r in rows)
