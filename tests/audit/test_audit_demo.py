"""The offline demo audit that `make run` builds: photos shipped with scikit-image and matplotlib."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from biasscope.audit import per_image_frame
from biasscope.audit.demo import DEMO_RUN, build_demo_manifest, ensure_demo, transform_box

pytest.importorskip("skimage.data")


def test_transform_box_hand_computed() -> None:
    assert transform_box((10, 20, 50, 60), (0, 0, 100, 80), False) == (10, 20, 50, 60)
    assert transform_box((10, 20, 50, 60), (0, 0, 100, 80), True) == (50, 20, 90, 60)  # mirrored in a 100-wide image
    assert transform_box((10, 20, 50, 60), (30, 10, 100, 80), False) == (0, 10, 20, 50)  # clipped by the crop
    assert transform_box((10, 20, 50, 60), (45, 0, 100, 80), False) is None  # only 5 px left


def test_demo_manifest_boxes_follow_crops_and_flips(tmp_path) -> None:
    csv = build_demo_manifest(tmp_path, views=2)
    df = pd.read_csv(csv, keep_default_na=False)
    assert len(df) == 4 * 2 * 2 and set(df["style"]) == {"colour", "grayscale"}
    assert set(df.loc[df["region:face"] != "", "label"]) == {"cat", "uniform"}  # faces only where there are faces
    assert set(df.loc[df["region:object"] != "", "label"]) == {"coffee", "uniform"}
    gray = np.asarray(Image.open(tmp_path / df.loc[df["style"] == "grayscale", "path"].iloc[0]), dtype=int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 2  # JPEG keeps a grey photo grey
    # the face box of the mirrored photo holds the mirrored pixels of the original's face box
    cat = df[(df["label"] == "cat") & (df["style"] == "colour")]
    cat = cat.set_index(cat["path"].str.extract(r"-(full|flip)-")[0])
    full = np.asarray(Image.open(tmp_path / cat.loc["full", "path"]), dtype=float)
    flip = np.asarray(Image.open(tmp_path / cat.loc["flip", "path"]), dtype=float)
    a = [int(v) for v in cat.loc["full", "region:face"].split(",")]
    b = [int(v) for v in cat.loc["flip", "region:face"].split(",")]
    face_full = full[a[1]:a[3], a[0]:a[2]]
    face_flip = flip[b[1]:b[3], b[0]:b[2]][:, ::-1]
    assert face_full.shape == face_flip.shape
    assert np.abs(face_full - face_flip).mean() < 3.0  # equal up to JPEG noise
    other = full[a[1]:a[3], :a[2] - a[0]]
    assert np.abs(other - face_flip).mean() > 10.0  # and not just any patch of the photo


def test_demo_audit_runs_once_with_label_aware_regions(tmp_path) -> None:
    run = ensure_demo(tmp_path, "mobilenet_v2", views=1)
    assert run == tmp_path / ".biasscope-runs" / DEMO_RUN and (run / "report.html").is_file()
    # what `make run` serves: the Audits page of that data root lists the finished demo
    from biasscope.web import create_app

    app = create_app({"TESTING": True, "DATA_ROOT": str(tmp_path), "DEFAULT_MODEL": "mobilenet_v2"})
    try:
        runs = app.test_client().get("/api/audits").get_json()["runs"]
    finally:
        app.extensions["biasscope"].close()
    assert [(r["id"], r["status"]) for r in runs] == [(DEMO_RUN, "done")]
    df = per_image_frame(run)
    coffee = df[(df["label"] == "coffee") & (df["style"] == "colour")].iloc[0]
    assert coffee["pred_class"] == "espresso" and bool(coffee["correct"])
    import json

    m = json.loads((run / "metrics.json").read_text())["models"]["mobilenet_v2"]
    cells = m["groupings"]["style"]["regions"]["cells"]
    assert set(cells["share:gradcam:face"]) == {"cat", "uniform"}
    assert set(cells["removal:object"]) == {"coffee", "uniform"}
    assert m["bias_score"] is not None and m["answer"][1].startswith("Stereotypical cells")
    before = (run / "metrics.json").stat().st_mtime_ns
    assert ensure_demo(tmp_path, "mobilenet_v2", views=1) == run  # complete: not run again
    assert (run / "metrics.json").stat().st_mtime_ns == before
