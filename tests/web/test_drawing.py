"""Region drawing: a box region is outlined exactly on its mask's bounding box; mask files are checked first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biasscope.errors import BiasscopeError
from biasscope.web.drawing import REGION_PALETTE, draw_regions


def test_box_outlined_on_its_bounding_box_and_image_left_untouched(tmp_path: Path) -> None:
    img = Image.new("RGB", (100, 80))
    out = np.asarray(draw_regions(img, {"tool": "10,20,40,50"}, tmp_path))
    # box 10,20,40,50 covers columns 10..39 and rows 20..49 (x1, y1 exclusive); a 1-pixel outline at 100 px wide
    colour = REGION_PALETTE[0]
    for x, y in ((10, 35), (39, 35), (25, 49), (25, 20)):
        assert tuple(out[y, x]) == colour
    for x, y in ((9, 35), (40, 35), (25, 50), (30, 45)):  # outside, and inside below the label
        assert tuple(out[y, x]) == (0, 0, 0)
    assert np.asarray(img).max() == 0  # the input is not drawn on


def test_mask_files_are_checked_before_they_are_read(tmp_path: Path) -> None:
    Image.fromarray(np.full((80, 100), 255, np.uint8)).save(tmp_path / "m.png")
    seen = []

    def refuse(path: Path, text: str) -> None:
        seen.append((path, text))
        raise BiasscopeError(f"mask {text!r} is outside the data root")

    with pytest.raises(BiasscopeError, match="outside"):
        draw_regions(Image.new("RGB", (100, 80)), {"hair": "m.png"}, tmp_path, check_mask=refuse)
    assert seen == [(tmp_path / "m.png", "m.png")]
    out = np.asarray(draw_regions(Image.new("RGB", (100, 80)), {"hair": "m.png"}, tmp_path,
                                  check_mask=lambda p, t: None))
    assert tuple(out[40, 0]) == REGION_PALETTE[0] and tuple(out[40, 99]) == REGION_PALETTE[0]
