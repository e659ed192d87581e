"""The audit commands end to end, on the real ImageNet MobileNetV2 and real photos."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from biasscope.cli import main

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.coffee()).save(root / "coffee.jpg")
    Image.fromarray(skimage_data.chelsea()).save(root / "chelsea.jpg")
    Image.fromarray(skimage_data.astronaut()).resize((256, 256)).save(root / "astronaut.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)
    (root / "m.csv").write_text(
        "path,label,kind,region:object\n"
        'coffee.jpg,espresso,a,"150,50,450,300"\n'  # the cup in the 600x400 photo
        "chelsea.jpg,cat,b,\n"
        "astronaut.jpg,cat,b,\n"
        "broken.jpg,espresso,a,\n"
    )
    return root


def test_audit_command_on_mobilenet(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, [
        "audit", str(photos / "m.csv"), "--model", "mobilenet_v2", "--group", "kind",
        "--concept", "cat = Egyptian cat, tabby, tiger cat", "--method", "gradcam", "--out", str(out),
        "--n-boot", "100", "--n-perm", "100", "--min-group-size", "2"])
    assert res.exit_code == 0, res.output
    assert "audit" in res.stderr and "img" in res.stderr  # tqdm bar with rate/ETA on stderr
    assert "== mobilenet_v2" in res.output and "over 3 images" in res.output
    df = pd.read_csv(out / "per_image.csv")
    rows = {p: r for p, r in zip(df["path"], df.to_dict("records"))}
    assert rows["coffee.jpg"]["pred_class"] == "espresso" and rows["coffee.jpg"]["p_true"] > 0.9
    assert rows["chelsea.jpg"]["pred_class"] == "Egyptian cat" and rows["chelsea.jpg"]["pred_label"] == "cat"
    # the concept score sums the three cat classes, so it is at least the top-1 probability
    assert rows["chelsea.jpg"]["p_true"] >= rows["chelsea.jpg"]["pred_prob"]
    assert rows["astronaut.jpg"]["correct"] in (False, "False")
    assert rows["broken.jpg"]["status"] == "error" and "not a readable image" in rows["broken.jpg"]["error"]
    # Grad-CAM for espresso concentrates on the cup more than its area would predict
    assert rows["coffee.jpg"]["ratio:gradcam:object"] > 1.2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["mobilenet_v2"]["overall"]["accuracy"] == pytest.approx(2 / 3)
    assert (out / "report.html").is_file()

    res = runner.invoke(main, ["audits", str(tmp_path), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)[0]["status"] == "done"
    res = runner.invoke(main, ["audit-report", str(out), "--stereotypical", "espresso:a", "--n-boot", "100",
                               "--n-perm", "100"])
    assert res.exit_code == 0, res.output
    bs = json.loads((out / "metrics.json").read_text())["models"]["mobilenet_v2"]["bias_score"]
    assert bs is None  # espresso has no atypical image with a readable file: no score, no crash


def test_audit_command_reports_manifest_problems(photos: Path, tmp_path: Path) -> None:
    bad = photos / "bad.csv"
    bad.write_text("path,label,kind\ncoffee.jpg,espresso,a\nnope.jpg,espresso,b\n../x.jpg,espresso,a\n")
    res = CliRunner().invoke(main, ["audit", str(bad), "--model", "mobilenet_v2", "--group", "kind",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "line 3: image 'nope.jpg' not found" in res.stderr
    assert "line 4: path '../x.jpg' is outside" in res.stderr
    res = CliRunner().invoke(main, ["audit", str(photos / "m.csv"), "--model", "mobilenet_v2", "--group", "gender",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown group column 'gender'" in res.stderr


def test_audit_manifest_command(tmp_path: Path) -> None:
    for label, group in (("doctor", "female"), ("nurse", "male")):
        (tmp_path / "set" / label / group).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "set" / label / group / "x.png")
    res = CliRunner().invoke(main, ["audit-manifest", str(tmp_path / "set"), "--group-column", "gender"])
    assert res.exit_code == 0, res.output
    assert "2 images, labels doctor, nurse, gender female, male" in res.output
    assert (tmp_path / "set" / "manifest.csv").read_text().splitlines()[1] == "doctor/female/x.png,doctor,female"
