"""Face parts and quality flags inside audits, on real photos and the CC0 gender model.

The manifest holds dlib-aligned 128-pixel face chips (padding 0.2, the gender model's own framing, so
the model sees what it was trained on once its adapter resizes them to 32 px): skimage's astronaut and
matplotlib's Grace Hopper ("photo"), and five faces of skimage's lfw_subset upscaled from 25 px ("lfw",
which the blur check must flag). Oracles: face-part shares recomputed independently from a fresh
explanation and fresh face geometry; group means of the per-image CSV; flags counted by hand; the
aligned group heatmaps recomputed from full-resolution explanations and averaged by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("dlib", reason="face audits need the faces extra: pip install 'biasscope[faces]'")

from biasscope.audit import AuditConfig, finalize_run, load_manifest, run_audit
from biasscope.errors import BiasscopeError

STATS = {"n_boot": 200, "n_perm": 200, "min_group_size": 2}
LFW = ((0, "male"), (1, "male"), (2, "male"), (18, "female"), (31, "female"))


def write_face_manifest(root: Path) -> Path:
    """Face chips of real photos and a manifest ``path,label,source`` (label: perceived gender)."""
    from matplotlib import cbook
    from skimage import data

    from biasscope.faces import detect_faces, extract_chip

    (root / "img").mkdir(parents=True, exist_ok=True)
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = Image.open(f).convert("RGB")
    items = [("astronaut", Image.fromarray(data.astronaut()), "female", "photo"),
             ("grace_hopper", grace, "female", "photo")]
    lfw = data.lfw_subset()
    for i, g in LFW:
        up = Image.fromarray((lfw[i] * 255).astype(np.uint8)).resize((200, 200), Image.Resampling.BICUBIC)
        items.append((f"lfw{i}", up.convert("RGB"), g, "lfw"))
    lines = ["path,label,source"]
    for name, im, g, src in items:
        extract_chip(im, detect_faces(im)[0], 128, 0.2).image.save(root / "img" / f"{name}.png")
        lines.append(f"img/{name}.png,{g},{src}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def gender():
    pytest.importorskip("onnx2torch")
    from biasscope.faces import FacesUnavailableError, load_face_model

    try:
        return load_face_model("gender")
    except FacesUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def face_run(tmp_path_factory, gender):
    base = tmp_path_factory.mktemp("faces")
    csv = write_face_manifest(base / "data")
    m = load_manifest(csv, groups=["source"])
    cfg = AuditConfig(groups=["source"], methods=["gradcam"], face_parts=True)
    res = run_audit(m, [gender.adapter], base / "run", cfg, batch_size=4, metrics_options=STATS)
    return base, m, res.metrics


def test_face_records_and_part_shares_match_an_independent_computation(face_run, gender) -> None:
    from biasscope.api import explain
    from biasscope.audit import RunStore
    from biasscope.faces import FACE_PARTS, face_regions
    from biasscope.images import load_image
    from biasscope.regions import attribution_share

    base, _m, _ = face_run
    recs = {r.path: r.to_json() for r in RunStore(base / "run").results()}
    assert len(recs) == 7 and all(r["status"] == "ok" for r in recs.values())
    assert recs["img/astronaut.png"]["face"]["flags"] == []
    assert recs["img/grace_hopper.png"]["face"]["flags"] == []
    for i, _ in LFW:  # 25-pixel faces blown up to 128: blurry
        assert "blurry" in recs[f"img/lfw{i}.png"]["face"]["flags"]
    rec = recs["img/astronaut.png"]
    img = load_image(base / "data" / "img" / "astronaut.png")
    ex = explain(gender.adapter, img, ["gradcam"], target=rec["target_index"], faithfulness=False)["gradcam"]
    masks = face_regions(img)
    assert set(rec["shares"]["gradcam"]) == set(FACE_PARTS)
    for part in FACE_PARTS:
        ref = attribution_share(ex.heatmap, masks[part])
        got = rec["shares"]["gradcam"][part]
        assert got["area_share"] == pytest.approx(ref.area_share, abs=1e-12)
        assert got["share"] == pytest.approx(ref.share, abs=1e-5)
    # the parts partition the image: areas and shares each sum to one
    assert sum(rec["shares"]["gradcam"][p]["area_share"] for p in FACE_PARTS) == pytest.approx(1.0)
    assert sum(rec["shares"]["gradcam"][p]["share"] for p in FACE_PARTS) == pytest.approx(1.0)
    assert set(rec["removal"]) == set(FACE_PARTS)


def test_metrics_csv_and_report_carry_face_parts_and_flags(face_run) -> None:
    base, _, metrics = face_run
    run = base / "run"
    mm = metrics["models"]["gender-v1"]
    df = pd.read_csv(run / "per_image.csv")
    assert {"face_flags", "flag:blurry", "yaw_ratio", "sharpness", "share:gradcam:eyes", "removal:hair_band"} <= set(df)
    by_group = mm["groupings"]["source"]["regions"]["by_group"]
    for src, sub in df.groupby("source"):
        for col in ("share:gradcam:eyes", "ratio:gradcam:mouth", "removal:nose"):
            assert by_group[src][col] == pytest.approx(sub[col].mean(), rel=1e-9, abs=1e-12)  # means near 0
    q = mm["faces"]["quality"]["source"]
    assert q["lfw"]["n"] == 5 and q["lfw"]["flags"]["blurry"] == {"count": 5, "rate": 1.0}
    assert q["photo"]["flags"]["blurry"]["count"] == 0 and q["photo"]["n_with_face"] == 2
    assert any("blurry 100%" in f for f in mm["findings"])
    html = (run / "report.html").read_text()
    assert "Faces: quality flags and aligned heatmaps" in html and "mean aligned heatmap per group" in html


def test_aligned_group_heatmaps_equal_hand_computed_means(face_run, gender) -> None:
    from biasscope.api import explain
    from biasscope.faces import FaceFrame, align_heatmap, detect_faces
    from biasscope.images import load_image

    base, m, metrics = face_run
    entry = metrics["models"]["gender-v1"]["faces"]["heatmaps"]["gradcam"]["groupings"]["source"]["group"]
    assert [(g["key"], g["n"]) for g in entry["groups"]] == [("lfw", 5), ("photo", 2)]
    saved = np.load(base / "run" / entry["arrays"])
    assert saved["keys"].tolist() == ["lfw", "photo"]
    frame = FaceFrame(size=saved["means"].shape[-1])
    for k, src in enumerate(("lfw", "photo")):
        aligned = []
        for row in (r for r in m.rows if r.attributes["source"] == src):
            img = load_image(row.file)
            ex = explain(gender.adapter, img, ["gradcam"], target=row.label, faithfulness=False)["gradcam"]
            a = align_heatmap(ex.heatmap, detect_faces(img)[0], frame)
            aligned.append(a / np.nanmax(np.abs(a)))
        stack = np.stack(aligned)
        count = (~np.isnan(stack)).sum(0)
        ref = np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)  # mean where covered
        got = saved["means"][k]
        both = ~np.isnan(ref) & ~np.isnan(got)
        assert both.mean() > 0.6
        assert np.abs(got[both] - ref[both]).max() < 0.03
    assert (base / "run" / entry["file"]).stat().st_size > 5_000


def test_exclude_flags_leave_flagged_images_out(face_run, tmp_path) -> None:
    import shutil

    base, _, _ = face_run
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    metrics = finalize_run(run, STATS | {"exclude_flags": ["blurry"]})
    mm = metrics["models"]["gender-v1"]
    assert mm["overall"]["n"] == 2 and mm["faces"]["n_excluded"] == 5
    assert set(mm["groupings"]["source"]["by_group"]) == {"photo"}
    df = pd.read_csv(run / "per_image.csv")
    assert df["excluded"].sum() == 5 and len(df) == 7  # the CSV keeps every image, marked
    assert json.loads((run / "metrics.json").read_text())["run"]["metrics_options"]["exclude_flags"] == ["blurry"]
    with pytest.raises(BiasscopeError, match="unknown quality flag"):
        finalize_run(run, STATS | {"exclude_flags": ["sunglasses"]})


def test_cli_face_parts_and_exclude_flags(face_run, tmp_path) -> None:
    from biasscope.cli import main

    base, _, _ = face_run
    runner = CliRunner()
    r = runner.invoke(main, ["audit-report", str(base / "run"), "--exclude-flags", "blurry,tiny_face",
                             "--n-boot", "100", "--n-perm", "100", "--min-group-size", "1"])
    assert r.exit_code == 0, r.output
    mm = json.loads((base / "run" / "metrics.json").read_text())["models"]["gender-v1"]
    assert mm["overall"]["n"] == 2
    r = runner.invoke(main, ["audit-report", str(base / "run"), "--exclude-flags", "sunglasses"])
    assert r.exit_code == 2 and "unknown quality flag(s) sunglasses" in r.output
    # a manifest region named like a face part is refused before any image is processed
    csv = tmp_path / "m.csv"
    img = base / "data" / "img" / "astronaut.png"
    csv.write_text(f"path,label,source,region:eyes\n{img.name},female,photo,\"1,1,5,5\"\n")
    (tmp_path / img.name).write_bytes(img.read_bytes())
    r = runner.invoke(main, ["audit", str(csv), "--model", "mobilenet_v2", "--group", "source", "--face-parts",
                             "--concept", "female = wig", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "face-part names" in r.output
    # without face data, excluding by flag is refused with the fix
    from tests.audit.synth import make_adapter

    csv2 = tmp_path / "plain.csv"
    (tmp_path / "lfw0.png").write_bytes((base / "data" / "img" / "lfw0.png").read_bytes())
    csv2.write_text(f"path,label,source\n{img.name},female,photo\nlfw0.png,male,lfw\n")
    run_audit(load_manifest(csv2, groups=["source"]), [make_adapter(0.0)], tmp_path / "r2",
              AuditConfig(groups=["source"], concepts={"female": ["scrubs"], "male": ["lab coat"]}),
              metrics_options=STATS)
    with pytest.raises(BiasscopeError, match="run the audit with --face-parts"):
        finalize_run(tmp_path / "r2", STATS | {"exclude_flags": ["blurry"]})
