"""Regenerate docs/explain-chelsea.png: the original photo beside one overlay per method.

    .venv/bin/python docs/make_figure.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw
from skimage import data

from biasscope import explain, load_image, load_model, render_overlay
from biasscope.explainers import EXPLAINERS

METHODS = [m for m in ("gradcam", "integrated_gradients", "lime", "occlusion") if m in EXPLAINERS]


def main() -> None:
    model = load_model("mobilenet_v2")
    img = load_image(data.chelsea())
    exps = explain(model, img, METHODS)
    tiles = [("original", img)] + [(e.label, render_overlay(img, e)) for e in exps.values()]
    w, h = img.size
    sheet = Image.new("RGB", (w * len(tiles), h + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, tile) in enumerate(tiles):
        sheet.paste(tile, (i * w, 24))
        draw.text((i * w + 6, 6), title, fill="black")
    top = model.predict(img, top=1)[0][0]
    out = Path(__file__).with_name("explain-chelsea.png")
    sheet.save(out)
    print(f"{out}: {model.name} top-1 {top.label} {top.probability:.2f}; methods {', '.join(METHODS)}")


if __name__ == "__main__":
    main()
