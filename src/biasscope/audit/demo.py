"""A demo audit built offline from photos the installed packages ship (scikit-image, matplotlib).

``make run`` calls :func:`ensure_demo` so that the first screen of the Audits page already shows a
finished audit. The question it asks is a real one, scaled down: *does the model treat grayscale
photos worse than colour ones, and does it look at the same regions?* Each base photo (a cat, an
espresso, Grace Hopper in uniform, a rocket) is cut into a few crops and flips, in colour and in
grayscale (the ``style`` group). Region boxes follow every crop and flip: ``region:face`` exists only
on the cat and Grace Hopper rows, ``region:object`` on the cup and the uniform, so the region findings
are per label x group over the images that have the region. The rocket is a label the ImageNet model
gets wrong (it says obelisk), which fills the wrong-prediction tiles.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import BiasscopeError

__all__ = ["DEMO_CONCEPTS", "DEMO_RUN", "DEMO_STEREOTYPICAL", "build_demo_manifest", "ensure_demo"]

#: the demo's run folder (directly under the data root, where the Audits page lists runs)
DEMO_RUN = "demo-audit"
#: task labels as sets of ImageNet classes
DEMO_CONCEPTS: dict[str, list[str]] = {
    "cat": ["Egyptian cat", "tabby", "tiger cat"],
    "coffee": ["espresso", "cup", "coffee mug"],
    "uniform": ["military uniform", "suit", "bow tie"],
    "rocket": ["missile", "projectile", "space shuttle"],
}
#: the "typical" cells for the bias score: colour photos (what ImageNet models are trained on)
DEMO_STEREOTYPICAL = [f"{lab}:colour" for lab in DEMO_CONCEPTS]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Base:
    name: str
    label: str
    regions: dict[str, Box]

    def image(self) -> Image.Image:
        if self.name == "grace_hopper":
            import matplotlib.cbook as cbook

            return Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
        from skimage import data

        return Image.fromarray(getattr(data, self.name)()).convert("RGB")


_BASES = [
    _Base("chelsea", "cat", {"face": (100, 60, 380, 280)}),
    _Base("coffee", "coffee", {"object": (150, 50, 450, 300)}),
    _Base("grace_hopper", "uniform", {"face": (175, 120, 365, 370), "object": (0, 380, 512, 600)}),
    _Base("rocket", "rocket", {}),
]


def _crops(w: int, h: int, n: int) -> list[tuple[str, Box, bool]]:
    """``n`` views of a ``w x h`` photo: the whole, its mirror, then 85% crops at the four corners."""
    cw, ch = round(0.85 * w), round(0.85 * h)
    views = [("full", (0, 0, w, h), False), ("flip", (0, 0, w, h), True),
             ("crop-tl", (0, 0, cw, ch), False), ("crop-tr", (w - cw, 0, w, ch), False),
             ("crop-bl", (0, h - ch, cw, h), False), ("crop-br", (w - cw, h - ch, w, h), True)]
    return views[:n]


def transform_box(box: Box, crop: Box, flip: bool, min_side: int = 8) -> Box | None:
    """``box`` in the coordinates of the photo cut to ``crop`` (then mirrored); ``None`` when too little is left."""
    x0, y0 = max(box[0], crop[0]) - crop[0], max(box[1], crop[1]) - crop[1]
    x1, y1 = min(box[2], crop[2]) - crop[0], min(box[3], crop[3]) - crop[1]
    if x1 - x0 < min_side or y1 - y0 < min_side:
        return None
    if flip:
        cw = crop[2] - crop[0]
        x0, x1 = cw - x1, cw - x0
    return (x0, y0, x1, y1)


def build_demo_manifest(folder: str | Path, views: int = 6) -> Path:
    """Write the demo photos and ``manifest.csv`` into ``folder``; returns the manifest's path."""
    if not 1 <= views <= 6:
        raise BiasscopeError("views must be between 1 and 6")
    root = Path(folder)
    rows = []
    for base in _BASES:
        try:
            img = base.image()
        except Exception as exc:  # a package without its sample data
            raise BiasscopeError(f"demo photo {base.name} is not available offline ({exc}); install the web extra "
                                 "(scikit-image, matplotlib)") from None
        for view, crop, flip in _crops(img.width, img.height, views):
            cut = img.crop(crop)
            if flip:
                cut = ImageOps.mirror(cut)
            for style in ("colour", "grayscale"):
                out = cut if style == "colour" else ImageOps.grayscale(cut).convert("RGB")
                rel = Path("images") / base.label / f"{base.name}-{view}-{style}.jpg"
                (root / rel.parent).mkdir(parents=True, exist_ok=True)
                out.save(root / rel, quality=90)
                row = {"path": rel.as_posix(), "label": base.label, "style": style}
                for name in ("face", "object"):
                    box = transform_box(base.regions[name], crop, flip) if name in base.regions else None
                    row[f"region:{name}"] = ",".join(map(str, box)) if box else ""
                rows.append(row)
    path = root / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "style", "region:face", "region:object"])
        w.writeheader()
        w.writerows(rows)
    return path


def ensure_demo(data_root: str | Path, model: str = "mobilenet_v2", *, views: int = 6, force: bool = False,
                progress=None) -> Path:
    """Build the demo manifest under ``data_root/demo`` and run its audit into the data root's runs folder
    (``data_root/.biasscope-runs/demo-audit``), where ``biasscope serve --data-root data_root`` lists it.

    Does nothing when a complete demo run is already there (unless ``force``). Returns the run folder.
    """
    from ..jobs import JobStatus, normal_status
    from .manifest import load_manifest
    from .runner import AuditConfig, run_audit
    from .store import RUNS_SUBDIR, RunStore

    root = Path(data_root)
    run_dir = root / RUNS_SUBDIR / DEMO_RUN
    if not force and normal_status(RunStore(run_dir).get_meta("status")) == JobStatus.DONE:
        return run_dir
    csv_path = build_demo_manifest(root / "demo", views=views)
    man = load_manifest(csv_path, groups=["style"])
    cfg = AuditConfig(groups=["style"], methods=["gradcam"], concepts=dict(DEMO_CONCEPTS), faithfulness=True)
    run_audit(man, [model], run_dir, cfg, overwrite=True, progress=progress,
              metrics_options={"stereotypical": DEMO_STEREOTYPICAL, "min_group_size": 10, "n_boot": 1000,
                               "n_perm": 1000})
    return run_dir
