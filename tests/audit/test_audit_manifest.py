"""Manifest parsing: every problem reported with its CSV line; the folder-layout helper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from biasscope.audit import load_manifest, manifest_from_folder
from biasscope.errors import ManifestError


def _img(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "white").save(p)


def test_valid_manifest_with_regions(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _img(root / "a.png")
    _img(root / "sub" / "b.png")
    Image.new("L", (8, 8), 255).save(root / "mask_b.png")
    (root / "m.csv").write_text(
        'path,label,gender,age,region:tool,region:hair\n'
        'a.png,doctor,female,30,"1,1,4,4",\n'
        '\n'
        'sub/b.png,nurse,male,40,,mask_b.png\n'
    )
    m = load_manifest(root / "m.csv", groups=["gender"])
    assert len(m) == 2 and m.labels == ["doctor", "nurse"]
    assert m.attribute_columns == ["gender", "age"] and m.region_names == ["tool", "hair"]
    a, b = m.rows
    assert (a.line, b.line) == (2, 4)  # the blank line is skipped, line numbers stay true
    assert a.file == (root / "a.png").resolve() and a.attributes == {"gender": "female", "age": "30"}
    assert a.regions["tool"].box == (1, 1, 4, 4) and "hair" not in a.regions
    assert b.regions["hair"].path == (root / "mask_b.png").resolve()
    assert m.group_values("gender") == ["female", "male"]
    assert len(m.fingerprint) == 64


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _img(root / "a.png")
    _img(root / "b.png")
    _img(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    (root / "m.csv").write_text(
        "path,label,gender,region:tool\n"
        "a.png,doctor,female,\n"  # 2 ok
        "missing.png,doctor,male,\n"  # 3 missing file
        "../outside.png,doctor,male,\n"  # 4 escapes
        f"{tmp_path / 'outside.png'},doctor,male,\n"  # 5 absolute path outside
        "link.png,doctor,male,\n"  # 6 symlink escaping the root
        "./a.png,nurse,male,\n"  # 7 duplicate of line 2
        "b.png,,male,\n"  # 8 empty label
        "b.png,nurse,,\n"  # 9 empty group value
        'b.png,nurse,male,"5,5,1,1"\n'  # 10 bad box
        "b.png,nurse,male,../m.png\n"  # 11 mask outside root
        "b.png,nurse,male,nomask.png\n"  # 12 missing mask
        "b.png,nurse\n"  # 13 wrong number of cells
    )
    with pytest.raises(ManifestError) as ei:
        load_manifest(root / "m.csv", groups=["gender"])
    probs = ei.value.problems
    expect = [
        "line 3: image 'missing.png' not found",
        "line 4: path '../outside.png' is outside",
        "line 5: path",
        "line 6: path 'link.png' is outside",
        "line 7: './a.png' is a duplicate of line 2",
        "line 8: empty 'label'",
        "line 9: empty 'gender'",
        "line 10: region 'tool': box '5,5,1,1' must have x0 < x1",
        "line 11: region 'tool' mask '../m.png' is outside",
        "line 12: region 'tool' mask 'nomask.png' not found",
        "line 13: has 2 cells but the header has 4",
    ]
    for e in expect:
        assert any(p.startswith(e) for p in probs), (e, probs)
    assert not any(p.startswith("line 2:") for p in probs)
    assert "has 1" in str(ei.value) or str(len(probs)) in str(ei.value)


def test_header_problems(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,gender,gender,region:\nx.png,f,f,\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(tmp_path / "m.csv", groups=["race"])
    probs = ei.value.problems
    assert "column 'gender' appears more than once" in probs
    assert any(p.startswith("missing required column 'path'") for p in probs)
    assert any(p.startswith("missing required column 'label'") for p in probs)
    assert any(p.startswith("unknown group column 'race'") for p in probs)
    assert any("region column needs a name" in p for p in probs)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(tmp_path / "empty.csv")
    assert ei.value.problems == ["the manifest has no image rows"]


def test_manifest_from_folder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for label, group, name in [("doctor", "female", "1.jpg"), ("doctor", "male", "2.png"), ("nurse", "male", "3.png")]:
        _img(root / label / group / name)
    (root / "README.txt").write_text("not an image")
    csv = manifest_from_folder(root, group_column="gender")
    assert csv == root / "manifest.csv"
    m = load_manifest(csv, groups=["gender"])
    assert [(r.path, r.label, r.attributes["gender"]) for r in m.rows] == [
        ("doctor/female/1.jpg", "doctor", "female"), ("doctor/male/2.png", "doctor", "male"),
        ("nurse/male/3.png", "nurse", "male")]
    # written above the root: paths keep the root's folder name
    up = manifest_from_folder(root, tmp_path / "all.csv", group_column="gender")
    assert load_manifest(up).rows[0].path == "set/doctor/female/1.jpg"
    _img(root / "stray.png")
    with pytest.raises(ManifestError) as ei:
        manifest_from_folder(root)
    assert ei.value.problems == ["stray.png: expected <label>/<group>/<image>"]
