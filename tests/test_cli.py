"""CLI: predict / explain / weights / models / methods, on the real MobileNetV2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage import data

from biasscope.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.coffee()).save(d / "coffee.jpg")
    Image.fromarray(data.chelsea()).save(d / "chelsea.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return d


def test_predict_json(photos):
    res = CliRunner().invoke(main, ["predict", str(photos / "coffee.jpg"), str(photos / "chelsea.png"),
                                    "--model", "mobilenet_v2", "--top", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["images"][0]["predictions"][0]["label"] == "espresso"
    assert out["images"][1]["predictions"][0]["label"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert len(out["images"][0]["predictions"]) == 3


def test_predict_reports_bad_image_and_goes_on(photos):
    res = CliRunner().invoke(main, ["predict", str(photos / "broken.jpg"), str(photos / "coffee.jpg"),
                                    "--model", "mobilenet_v2", "--json"])
    assert res.exit_code == 1
    out = json.loads(res.output)
    by_path = {i["path"]: i for i in out["images"]}
    assert "truncated or corrupt" in by_path[str(photos / "broken.jpg")]["error"]
    assert by_path[str(photos / "coffee.jpg")]["predictions"][0]["label"] == "espresso"


def test_explain_writes_overlays_heatmaps_and_summary(photos, tmp_path):
    out = tmp_path / "ex"
    res = CliRunner().invoke(main, ["explain", str(photos / "chelsea.png"), "--model", "mobilenet_v2",
                                    "--method", "gradcam,ig", "--param", "ig.steps=16",
                                    "--target", "tabby", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"gradcam", "integrated_gradients"}
    for name, m in summary["methods"].items():
        assert m["target_name"] == "tabby" and m["target"] == 281
        heat = np.load(out / m["heatmap"])
        assert heat.shape == (300, 451)  # aligned with the original image
        with Image.open(out / m["overlay"]) as overlay:
            assert overlay.size == (451, 300)
        assert 0 <= m["checks"]["deletion_auc"] <= 1 and 0 <= m["checks"]["insertion_auc"] <= 1, name
    assert summary["methods"]["integrated_gradients"]["params"]["steps"] == 16
    assert "completeness_error" in summary["methods"]["integrated_gradients"]["checks"]


def test_errors_are_one_line_not_tracebacks(photos, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["explain", str(photos / "coffee.jpg"), "--model", "mobilenet_v2",
                               "--method", "nosuch", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown method 'nosuch'" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["explain", str(photos / "coffee.jpg"), "--model", "mobilenet_v2",
                               "--param", "gradcam.steps=3", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "has no parameter(s) steps" in res.output
    res = runner.invoke(main, ["explain", str(photos / "coffee.jpg"), "--model", "mobilenet_v2",
                               "--method", "ig", "--param", "ig.steps=1", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "steps must be >= 2" in res.output


def test_models_and_methods_listing():
    runner = CliRunner()
    rows = json.loads(runner.invoke(main, ["models", "--json"]).output)
    mob = next(r for r in rows if r["name"] == "mobilenet_v2")
    assert mob["ready"] and mob["weights"] == "IMAGENET1K_V1"
    methods = json.loads(runner.invoke(main, ["methods", "--json"]).output)
    ig = next(m for m in methods if m["name"] == "integrated_gradients")
    steps = next(p for p in ig["params"] if p["name"] == "steps")
    assert ig["signed"] and steps == {"name": "steps", "type": "int", "default": 50, "min": 2, "max": 1000,
                                      "choices": None, "help": "integration steps (Gauss-Legendre)"}


def test_explain_a_concept_target_and_warnings(photos, tmp_path):
    """--target NAME with --concept explains the concept: summed probability of its classes, said plainly;
    a near-zero target probability is warned about."""
    out = tmp_path / "concept"
    res = CliRunner().invoke(main, ["explain", str(photos / "chelsea.png"), "--model", "mobilenet_v2",
                                    "--method", "gradcam", "--no-faithfulness", "--target", "cat",
                                    "--concept", "cat = Egyptian cat, tabby, tiger cat", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "concept cat = Egyptian cat + tabby + tiger cat" in res.output and "sum of their logits" in res.output
    summary = json.loads((out / "summary.json").read_text())
    preds = json.loads(CliRunner().invoke(main, ["predict", str(photos / "chelsea.png"), "--model", "mobilenet_v2",
                                                 "--top", "1000", "--json"]).output)["images"][0]["predictions"]
    p = {q["label"]: q["probability"] for q in preds}
    m = summary["methods"]["gradcam"]
    assert m["target_name"] == "cat" and summary["concept"]["classes"] == ["Egyptian cat", "tabby", "tiger cat"]
    assert m["target_probability"] == pytest.approx(p["Egyptian cat"] + p["tabby"] + p["tiger cat"], abs=1e-5)
    assert summary["warnings"] == []
    res = CliRunner().invoke(main, ["explain", str(photos / "chelsea.png"), "--model", "mobilenet_v2",
                                    "--method", "gradcam", "--no-faithfulness", "--target", "espresso",
                                    "--out", str(tmp_path / "low")])
    assert res.exit_code == 0, res.output
    assert p["espresso"] < 1e-3 and "warning: Grad-CAM: the target 'espresso' has probability" in res.output
