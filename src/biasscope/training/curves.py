"""Training curves: loss and accuracy per epoch, overall and per group on validation (PNG, SVG, JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["curve_series", "write_curves"]


def curve_series(history: Sequence[dict]) -> dict:
    """The plotted numbers: ``{"epoch": [...], "train_loss": [...], ..., "val_group_accuracy": {g: [...]}}``."""
    groups = sorted({g for h in history for g in h.get("val_by_group", {})})
    return {
        "epoch": [h["epoch"] for h in history],
        "train_loss": [h["train_loss"] for h in history],
        "train_accuracy": [h["train_accuracy"] for h in history],
        "val_loss": [h.get("val_loss") for h in history],
        "val_accuracy": [h.get("val_accuracy") for h in history],
        "val_group_accuracy": {g: [h.get("val_by_group", {}).get(g, {}).get("accuracy") for h in history]
                               for g in groups},
        "val_group_loss": {g: [h.get("val_by_group", {}).get(g, {}).get("loss") for h in history] for g in groups},
    }


def write_curves(
    history: Sequence[dict], stem: str | Path, *, best_epoch: int | None = None, images: bool = True
) -> list[Path]:
    """Write ``stem.json`` and (with ``images``) ``stem.png`` and ``stem.svg``; returns the paths."""
    from matplotlib.figure import Figure

    s = curve_series(history)
    stem = Path(stem)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".png"), stem.with_suffix(".svg")]
    paths[0].write_text(json.dumps(s | {"best_epoch": best_epoch}, indent=2), encoding="utf-8")
    if not images:
        return paths[:1]
    fig = Figure(figsize=(10, 7))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.95, hspace=0.35, wspace=0.2)
    axes = fig.subplots(2, 2)
    ep = s["epoch"]

    def plot(ax, ys, label, **kw) -> None:
        pts = [(e, y) for e, y in zip(ep, ys) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, **kw)

    plot(axes[0, 0], s["train_loss"], "train")
    plot(axes[0, 0], s["val_loss"], "validation")
    axes[0, 0].set_title("loss (cross-entropy)")
    plot(axes[0, 1], s["train_accuracy"], "train")
    plot(axes[0, 1], s["val_accuracy"], "validation")
    axes[0, 1].set_title("accuracy")
    for g, ys in s["val_group_accuracy"].items():
        plot(axes[1, 0], ys, str(g))
    axes[1, 0].set_title("validation accuracy per group")
    for g, ys in s["val_group_loss"].items():
        plot(axes[1, 1], ys, str(g))
    axes[1, 1].set_title("validation loss per group")
    for ax in axes.ravel():
        ax.set_xlabel("epoch")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.savefig(paths[1], dpi=80)
    fig.savefig(paths[2], metadata={"Date": None})
    return paths
