"""Synthetic audit data with a planted bias whose ground truth is known, and a tiny hand-weighted model.

Images are 32x32. The "tool" region (a 10x10 box) is blue for doctors and green for nurses; the
"hair" region (a 12x8 box) is red for the female group and dark grey for the male group. The model
is a 1x1 convolution with three colour detectors (blue, green, red), ReLU, global average pooling
and a linear head over four classes: stethoscope, lab coat (the doctor concept), scrubs (nurse) and
background. With ``bias > 0`` red (hair of the female group) adds evidence for scrubs: female
doctors lose probability and accuracy; with ``bias = 0`` the model ignores the group patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from biasscope.models import ModelAdapter

SIZE = 32
TOOL = (2, 18, 12, 28)  # x0, y0, x1, y1
HAIR = (10, 2, 22, 10)
CLASSES = ["stethoscope", "lab coat", "scrubs", "background"]
CONCEPTS = {"doctor": ["stethoscope", "lab coat"], "nurse": ["scrubs"]}


class ColourNet(nn.Module):
    def __init__(self, bias: float, gain: float = 60.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            # channel 0: blue - (R+G)/2, 1: green - (R+B)/2, 2: red - (G+B)/2
            w = torch.tensor([[-0.5, -0.5, 1.0], [-0.5, 1.0, -0.5], [1.0, -0.5, -0.5]])
            self.conv.weight.copy_(w[:, :, None, None])
            self.conv.bias.fill_(-0.05)
            g = gain
            self.fc.weight.copy_(torch.tensor([
                [g, -g, 0.0],  # stethoscope
                [g, -g, 0.0],  # lab coat
                [-g, g, g * bias],  # scrubs
                [0.0, 0.0, 0.0],  # background
            ]))
            self.fc.bias.copy_(torch.tensor([0.0, -1.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def make_adapter(bias: float, name: str | None = None) -> ModelAdapter:
    net = ColourNet(bias)
    return ModelAdapter(name=name or f"colournet-bias{bias:g}", model=net, class_names=list(CLASSES),
                        input_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                        target_layer=net.conv, target_layer_name="conv")


def make_image(label: str, gender: str, rng: np.random.Generator) -> Image.Image:
    arr = 0.5 + rng.normal(0, 0.03, size=(SIZE, SIZE, 3))
    s, h = rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0)
    x0, y0, x1, y1 = TOOL
    arr[y0:y1, x0:x1] = (0.2, 0.2, 0.2 + 0.8 * s) if label == "doctor" else (0.2, 0.2 + 0.8 * s, 0.2)
    x0, y0, x1, y1 = HAIR
    arr[y0:y1, x0:x1] = (0.2 + 0.8 * h, 0.2, 0.2) if gender == "female" else (0.2, 0.2, 0.2)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))


def write_dataset(root: Path, n_per_cell: int = 20, seed: int = 0, broken: int = 0) -> Path:
    """Write images and manifest.csv (with region columns) under ``root``; returns the CSV path."""
    rng = np.random.default_rng(seed)
    lines = ["path,label,gender,region:tool,region:hair"]
    (root / "img").mkdir(parents=True, exist_ok=True)
    i = 0
    for label in ("doctor", "nurse"):
        for gender in ("female", "male"):
            for _ in range(n_per_cell):
                name = f"img/{label}_{gender}_{i:03d}.png"
                make_image(label, gender, rng).save(root / name)
                lines.append(f'{name},{label},{gender},"{",".join(map(str, TOOL))}","{",".join(map(str, HAIR))}"')
                i += 1
    for b in range(broken):
        name = f"img/broken_{b}.png"
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        lines.append(f'{name},doctor,male,"{",".join(map(str, TOOL))}",')
    csv = root / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv
