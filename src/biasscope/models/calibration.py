"""Representative photos for checking a reduced-precision forward against fp32 (``precision='auto'``).

One photo says little: on MobileNetV2 bf16 was within 2e-3 of fp32 on one photo and 0.056 off on
another. The check therefore runs on a fixed set of real photos that ship with the installed
scientific packages (scikit-image, matplotlib, scikit-learn: nothing is downloaded or copied into
this repository) plus a perturbed variant of each (a mirrored, lower-contrast centre crop: other
scales, framing and exposure). The set is split by photo into a calibration part and a held-out part
(a photo and its variant are always on the same side); the tolerance must hold on both.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

__all__ = ["PHOTOS", "representative_split"]

#: longest side kept (the model resizes to its own input size anyway; this bounds memory and time)
MAX_SIDE = 320


def _package_file(package: str, relative: str) -> Callable[[], Image.Image]:
    """A loader of a data file inside an installed package, found without importing the package
    (importing scikit-learn alone takes seconds)."""

    def load() -> Image.Image:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {package} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        with Image.open(path) as im:
            im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale (faster)
            return im.convert("RGB")

    return load


#: name -> loader; real photos, in an order that alternates calibration / held-out
PHOTOS: dict[str, Callable[[], Image.Image]] = {
    "astronaut": _package_file("skimage", "data/astronaut.png"),
    "grace_hopper": _package_file("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "coffee": _package_file("skimage", "data/coffee.png"),
    "chelsea": _package_file("skimage", "data/chelsea.png"),
    "rocket": _package_file("skimage", "data/rocket.jpg"),
    "camera": _package_file("skimage", "data/camera.png"),
    "sklearn_china": _package_file("sklearn", "datasets/images/china.jpg"),
    "sklearn_flower": _package_file("sklearn", "datasets/images/flower.jpg"),
    "immunohistochemistry": _package_file("skimage", "data/ihc.png"),
    "coins": _package_file("skimage", "data/coins.png"),
    "hubble_deep_field": _package_file("skimage", "data/hubble_deep_field.jpg"),
    "clock": _package_file("skimage", "data/clock_motion.png"),
    "motorcycle": _package_file("skimage", "data/motorcycle_left.png"),
    "retina": _package_file("skimage", "data/retina.jpg"),
}


def _variant(im: Image.Image) -> Image.Image:
    """A mirrored centre crop (64% of each side) at 0.6x contrast."""
    w, h = im.size
    box = (int(w * 0.18), int(h * 0.18), int(w * 0.82), int(h * 0.82))
    return ImageEnhance.Contrast(ImageOps.mirror(im.crop(box))).enhance(0.6)


@functools.lru_cache(maxsize=1)
def representative_split() -> tuple[tuple[tuple[str, Image.Image], ...], tuple[tuple[str, Image.Image], ...]]:
    """``(calibration, held_out)``: named RGB photos and variants, split by photo (alternately).

    A photo whose package cannot load it is left out (the split says how many were used)."""
    calibration: list[tuple[str, Image.Image]] = []
    held_out: list[tuple[str, Image.Image]] = []
    loaded = 0
    for name, load in PHOTOS.items():
        try:
            im = load()
        except Exception:  # a missing or broken sample file: the other photos still decide
            continue
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        side = calibration if loaded % 2 == 0 else held_out
        side += [(name, im), (f"{name} (crop, mirrored, low contrast)", _variant(im))]
        loaded += 1
    return tuple(calibration), tuple(held_out)
