"""Sample photos for the page: real photos that ship with scikit-image and matplotlib.

They are read from the installed packages (never copied into this repository) and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from PIL import Image

from .state import NotFoundError

__all__ = ["SAMPLES", "load_sample", "sample_list"]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
        return np.asarray(im.convert("RGB"))


#: name -> (title, credit, loader)
SAMPLES: dict[str, tuple[str, str, Callable[[], np.ndarray]]] = {
    "coffee": ("Coffee cup", "scikit-image data.coffee (Rachel Michetti, CC0)", _skimage("coffee")),
    "chelsea": ("Chelsea the cat", "scikit-image data.chelsea (Stefan van der Walt, CC0)", _skimage("chelsea")),
    "astronaut": ("Astronaut Eileen Collins", "scikit-image data.astronaut (NASA, public domain)",
                  _skimage("astronaut")),
    "rocket": ("Rocket launch", "scikit-image data.rocket (SpaceX, CC0)", _skimage("rocket")),
    "grace_hopper": ("Grace Hopper", "matplotlib sample_data grace_hopper.jpg (public domain)", _grace_hopper),
}


@functools.lru_cache(maxsize=len(SAMPLES))
def load_sample(name: str) -> Image.Image:
    """The sample photo ``name`` as an RGB image."""
    if name not in SAMPLES:
        raise NotFoundError(f"unknown sample {name!r}; choose from {', '.join(SAMPLES)}")
    return Image.fromarray(SAMPLES[name][2]()).convert("RGB")


def sample_list() -> list[dict]:
    return [
        {"name": n, "title": t, "credit": c, "url": f"/api/samples/{n}.jpg"} for n, (t, c, _) in SAMPLES.items()
    ]
