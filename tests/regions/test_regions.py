"""Region masks, attribution shares and removal, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from biasscope.errors import BiasscopeError
from biasscope.regions import (
    RemovalConfig,
    attribution_share,
    box_mask,
    load_mask,
    parse_region,
    region_mask,
    region_removal_effects,
    remove_region,
)
from tests.audit.synth import HAIR, TOOL, make_adapter, make_image


def test_box_mask_is_half_open_and_clipped() -> None:
    m = box_mask((1, 2, 4, 3), (5, 6))
    assert m.shape == (5, 6)
    assert m.sum() == 3 and m[2, 1:4].all() and not m[2, 4] and not m[3, 1]
    clipped = box_mask((-3, -3, 2, 100), (4, 4))
    assert clipped.sum() == 2 * 4 and clipped[:, :2].all()


def test_parse_region_box_and_mask(tmp_path) -> None:
    spec = parse_region("tool", " 1, 2,30 ,40 ")
    assert spec.kind == "box" and spec.box == (1.0, 2.0, 30.0, 40.0)
    assert spec.to_text() == "1,2,30,40"
    spec = parse_region("hair", "masks/a.png", tmp_path)
    assert spec.kind == "mask" and spec.path == tmp_path / "masks/a.png"
    with pytest.raises(ValueError, match="x0 < x1"):
        parse_region("tool", "5,0,5,10")
    with pytest.raises(ValueError, match="neither a box"):
        parse_region("tool", "1,2,3")


def test_load_mask_gray_alpha_and_resize(tmp_path) -> None:
    gray = np.zeros((4, 6), np.uint8)
    gray[1:3, 2:5] = 255
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert (load_mask(tmp_path / "g.png", (4, 6)) == (gray > 127)).all()
    # a mask drawn at half resolution is resized with nearest neighbour
    m = load_mask(tmp_path / "g.png", (8, 12))
    assert m.sum() == 4 * gray.astype(bool).sum() and m[2:6, 4:10].all()
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: only alpha defines the region
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    am = load_mask(tmp_path / "a.png", (4, 6))
    assert am.sum() == 1 and am[0, 0]
    with pytest.raises(BiasscopeError, match="not found"):
        load_mask(tmp_path / "missing.png", (4, 6))
    assert region_mask(parse_region("r", "g.png", tmp_path), (4, 6)).sum() == 6


def test_attribution_share_hand_computed() -> None:
    h = np.array([[1.0, 2.0, -5.0], [0.0, 3.0, 4.0]])
    m = np.array([[True, True, True], [False, False, False]])
    s = attribution_share(h, m)
    # positive mass: 1 + 2 + 3 + 4 = 10; inside the top row 1 + 2 = 3 (the -5 does not count)
    assert s.share == pytest.approx(0.3)
    assert s.area_share == pytest.approx(0.5)
    assert s.ratio == pytest.approx(0.6)
    assert s.positive_mass == pytest.approx(3.0)
    empty = attribution_share(-np.ones((2, 2)), np.eye(2, dtype=bool))
    assert math.isnan(empty.share) and math.isnan(empty.ratio)
    with pytest.raises(ValueError, match="does not match"):
        attribution_share(h, np.ones((3, 3), bool))


def test_remove_region_fill_uses_mean_outside_and_leaves_rest() -> None:
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[:, :2] = (200, 100, 0)
    arr[:, 2:] = (0, 50, 100)
    arr[0, 0] = (255, 255, 255)  # inside the region: must not leak into the fill colour
    img = Image.fromarray(arr)
    mask = box_mask((0, 0, 1, 1), (4, 4))
    out = np.asarray(remove_region(img, mask, RemovalConfig(mode="fill")))
    outside = arr[~mask].astype(float).mean(axis=0)
    assert (out[0, 0] == np.round(outside)).all()
    assert (out[~mask] == arr[~mask]).all()
    red = np.asarray(remove_region(img, mask, RemovalConfig(fill=(255, 0, 0))))
    assert tuple(red[0, 0]) == (255, 0, 0)


def test_remove_region_blur_changes_only_masked_pixels() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    mask = box_mask((5, 5, 15, 15), (20, 20))
    out = np.asarray(remove_region(Image.fromarray(arr), mask, RemovalConfig(mode="blur", blur_radius=3)))
    assert (out[~mask] == arr[~mask]).all()
    # blurring noise lowers its variance inside the region
    assert out[mask].astype(float).std() < 0.5 * arr[mask].astype(float).std()
    with pytest.raises(BiasscopeError):
        RemovalConfig(mode="erase")  # type: ignore[arg-type]


def test_remove_region_blur_default_radius_is_a_quarter_of_the_region() -> None:
    """No radius given: max(2, shorter side / 4) (the web's removal=blur); was a crash on numpy ints."""
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    mask = box_mask((2, 4, 22, 16), (24, 24))  # 20 x 12: radius 3
    out = np.asarray(remove_region(Image.fromarray(arr), mask, RemovalConfig(mode="blur")))
    want = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(3.0)))
    assert (out[mask] == want[mask]).all() and (out[~mask] == arr[~mask]).all()


def test_removal_effects_batched_equal_one_by_one() -> None:
    adapter = make_adapter(2.0)
    rng = np.random.default_rng(1)
    imgs = [make_image("doctor", "female", rng), make_image("nurse", "male", rng), make_image("doctor", "male", rng)]
    masks = [{"tool": box_mask(TOOL, (32, 32)), "hair": box_mask(HAIR, (32, 32))} for _ in imgs]
    classes = [(0, 1), (2,), (0, 1)]
    got = region_removal_effects(adapter, imgs, masks, classes)
    for img, named, cls, res in zip(imgs, masks, classes, got):
        p0 = adapter.probabilities(adapter.preprocess([img]))[0]
        for name, m in named.items():
            p1 = adapter.probabilities(adapter.preprocess([remove_region(img, m)]))[0]
            before, after = float(p0[list(cls)].sum()), float(p1[list(cls)].sum())
            assert res[name]["before"] == pytest.approx(before, abs=1e-5)
            assert res[name]["after"] == pytest.approx(after, abs=1e-5)
            assert res[name]["effect"] == pytest.approx(after - before, abs=1e-5)
    # planted ground truth: removing the red hair helps the female doctor, removing the tool hurts doctors
    assert got[0]["hair"]["effect"] > 0.05
    assert got[0]["tool"]["effect"] < -0.05 and got[2]["tool"]["effect"] < -0.05
    assert abs(got[2]["hair"]["effect"]) < 0.01  # grey hair carries no evidence
