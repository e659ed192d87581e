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


@pytest.mark.parametrize("resnet_ready", [False, True])
def test_predict_without_model_falls_back_to_mobilenet_when_resnet18_is_missing(photos, monkeypatch,
                                                                                   resnet_ready: bool):
    from dataclasses import replace

    from biasscope.models import zoo

    real = zoo.zoo_status
    loaded: list[str] = []
    monkeypatch.setattr(zoo, "zoo_status", lambda name: replace(real(name), ready=resnet_ready, fix="FIX")
                        if name == "resnet18" else real(name))
    monkeypatch.setattr("biasscope.models.load_model", lambda name, **kw: loaded.append(name) or _NoModel())
    res = CliRunner().invoke(main, ["predict", str(photos / "coffee.jpg"), "--json"])
    assert isinstance(res.exception, _LoadedError), res.output
    if resnet_ready:
        assert loaded == ["resnet18"] and "note:" not in res.stderr
    else:
        assert loaded == ["mobilenet_v2"]
        assert "resnet18 weights are not on this machine, so mobilenet_v2" in res.stderr and "FIX" in res.stderr
        assert "note:" not in res.stdout  # --json output stays JSON
    # --weights means the default architecture with the user's state dict: no fallback
    loaded.clear()
    res = CliRunner().invoke(main, ["predict", str(photos / "coffee.jpg"), "--weights", str(photos / "coffee.jpg")])
    assert loaded == ["resnet18"]


class _LoadedError(Exception):
    """Raised in place of loading a model: the test only checks which one was asked for."""


class _NoModel:
    def __getattr__(self, name):
        raise _LoadedError(name)


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


# ------------------------------------------------------------------ bad input: one line, exit code 2
def _fails_cleanly(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert needle in res.output, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_bad_parameter_text_is_refused(photos, tmp_path):
    runner = CliRunner()
    base = ["explain", str(photos / "coffee.jpg"), "--model", "mobilenet_v2", "--out", str(tmp_path)]
    for method, param, needle in [
        ("smoothgrad", "smoothgrad.absolute=maybe", "absolute must be true or false (also 1/0, yes/no), got 'maybe'"),
        ("smoothgrad", "smoothgrad.noise_level=nan", "noise_level must be float in [0, 1] (a finite number)"),
        ("gradient_shap", "gradient_shap.stdev=1e308", "stdev must be <= 10, got 1e+308"),
        ("lime", "lime.kernel_width=inf", "kernel_width must be float in [0.001, 100]"),
        ("ig", "ig.steps=3.7", "steps must be int in [2, 1000] (a whole number), got '3.7'"),
        ("ig", f"ig.seed={2**64}", f"seed must be <= 4294967295, got {2**64}"),
    ]:
        _fails_cleanly(runner.invoke(main, [*base, "--method", method, "--param", param]), needle)


def test_bool_parameter_words(photos, tmp_path):
    """true/false, 1/0 and yes/no are read as booleans: absolute=no gives SmoothGrad's signed map."""
    runner = CliRunner()
    for word, signed in (("no", True), ("False", True), ("1", False), ("yes", False)):
        res = runner.invoke(main, ["explain", str(photos / "coffee.jpg"), "--model", "mobilenet_v2",
                                   "--method", "smoothgrad", "--param", f"smoothgrad.absolute={word}",
                                   "--param", "smoothgrad.n_samples=2", "--no-faithfulness", "--json",
                                   "--out", str(tmp_path / word)])
        assert res.exit_code == 0, res.output
        m = json.loads(res.output)["methods"]["smoothgrad"]
        assert m["params"]["absolute"] is (not signed)
        heat = np.load(tmp_path / word / "smoothgrad.npy")
        assert bool(heat.min() < 0) is signed  # |gradient| averages are never negative


def test_seed_options_are_bounded():
    res = CliRunner().invoke(main, ["audit", "m.csv", "--model", "x", "--group", "g", "--out", "o",
                                    "--seed", str(2**64)])
    _fails_cleanly(res, "4294967295")


def test_binary_labels_file(photos, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(bytes(range(256)))
    res = CliRunner().invoke(main, ["predict", str(photos / "coffee.jpg"), "--model", "mobilenet_v2",
                                    "--labels", str(labels)])
    _fails_cleanly(res, "is not UTF-8 text (a binary file?); expected one class name per line")


def test_weights_download_without_network_is_one_sentence(tmp_path, monkeypatch):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    res = CliRunner().invoke(main, ["weights", "fetch", "resnet18", "--download"])
    _fails_cleanly(res, "downloading resnet18-f37072fd.pth failed")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]  # and torch's own "Downloading: URL to FILE"
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(lines) <= 2 and len(errors) == 1 and errors[0].startswith("error: downloading")
    assert str(tmp_path / "hub" / "checkpoints") in errors[0] and "https://download.pytorch.org/" in errors[0]


def test_non_finite_and_malformed_numbers_in_options(photos):
    runner = CliRunner()
    res = runner.invoke(main, ["audit", "m.csv", "--model", "x", "--group", "g", "--out", "o", "--alpha", "nan"])
    _fails_cleanly(res, "'nan' is not a finite number")
    res = runner.invoke(main, ["serve", "--max-upload-mb", "inf"])
    _fails_cleanly(res, "inf is not in the range 0.01<=x<=1024")
    for opt, value, needle in (("--mean", "0.5,x,0.5", "three comma-separated finite numbers"),
                               ("--mean", "nan,0,0", "three comma-separated finite numbers"),
                               ("--std", "0.2,0,0.2", "std must be positive")):
        res = runner.invoke(main, ["predict", str(photos / "coffee.jpg"), "--model", "mobilenet_v2", opt, value])
        _fails_cleanly(res, needle)


def test_unusable_paths_in_options(photos, tmp_path):
    runner = CliRunner()
    long = str(tmp_path / ("a" * 256 + ".txt"))
    for extra in (["--labels", long], ["--weights", long], ["--model", long + ".onnx"]):
        res = runner.invoke(main, ["predict", str(photos / "coffee.jpg"), *(["--model", "mobilenet_v2"] if
                                   extra[0] != "--model" else []), *extra])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert "File name too long" in res.output, res.output
    res = runner.invoke(main, ["explain", long + ".png", "--model", "mobilenet_v2", "--out", str(tmp_path / "o")])
    _fails_cleanly(res, "File name too long")
