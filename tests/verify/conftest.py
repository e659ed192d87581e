"""Real photos the packages ship, as genuine pairs (one photo under crops, flips, rotation, lighting)
and impostor pairs (different people): skimage's astronaut, matplotlib's Grace Hopper, and faces of
skimage's ``lfw_subset`` (25 px, upscaled to 150 px so dlib's detector finds them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps


def variants(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    return {
        "orig": im,
        "crop": im.crop((w // 10, h // 12, w - w // 12, h - h // 10)),
        "flip": ImageOps.mirror(im),
        "rot": im.rotate(8, resample=Image.BICUBIC),
        "dark": ImageEnhance.Brightness(im).enhance(0.7),
        "small": im.resize((w * 2 // 3, h * 2 // 3), Image.BILINEAR),
    }


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    import matplotlib.cbook as cb
    from skimage import data

    ast = Image.fromarray(data.astronaut())
    with Image.open(cb.get_sample_data("grace_hopper.jpg", asfileobj=False)) as g:
        gh = g.convert("RGB")
    return {"astronaut": ast, "hopper": gh}


@pytest.fixture(scope="session")
def identity_folder(tmp_path_factory, photos) -> Path:
    """identities.csv: astronaut and hopper (6 variants each, set 'portrait'), 3 LFW faces (orig and
    flip, set 'lfw'); groups: ``set``."""
    from skimage import data

    root = tmp_path_factory.mktemp("verify_photos")
    rows = ["path,identity,set"]
    for name, im in photos.items():
        for k, v in variants(im).items():
            v.save(root / f"{name}_{k}.png")
            rows.append(f"{name}_{k}.png,{name},portrait")
    lfw = data.lfw_subset()
    for i in (0, 1, 2):
        im = Image.fromarray((lfw[i] * 255).astype(np.uint8)).convert("RGB").resize((150, 150), Image.BICUBIC)
        for k, v in (("orig", im), ("flip", ImageOps.mirror(im))):
            v.save(root / f"lfw{i}_{k}.png")
            rows.append(f"lfw{i}_{k}.png,lfw{i},lfw")
    (root / "identities.csv").write_text("\n".join(rows) + "\n")
    return root
