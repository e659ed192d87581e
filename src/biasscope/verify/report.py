"""Plots (PNG) and a self-contained HTML section for a verification audit.

The section (:func:`verify_report_section`) is plain HTML with the plots inlined as base64 PNGs,
so it can be embedded in another page or written alone (:func:`write_verify_report`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

from ..faces.parts import FACE_PART_COLOURS, FACE_PARTS
from ..formatting import png_data_uri, render_template
from .pairs import join_columns

__all__ = ["verify_report_section", "write_plots", "write_verify_report"]


def _finest(metrics: dict) -> str:
    names = list(metrics.get("groupings", {}))
    return max(names, key=lambda n: (n.count(" x "), len(metrics["groupings"][n]["subgroups"]))) if names else ""


def write_plots(metrics: dict, scores: pd.DataFrame, folder: Path, *, explained: list[dict] | None = None
                ) -> dict[str, Path]:
    """Score distributions, DET curves, FMR/FNMR before/after and face-part shares, per subgroup."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    gname = _finest(metrics)
    if not gname:
        return files
    subs = metrics["groupings"][gname]["subgroups"]
    t = metrics["overall"]["threshold"]
    vals = (np.full(len(scores), "all", dtype=object) if "all_a" not in scores and gname == "all"
            else join_columns(scores, [f"{g}_a" for g in gname.split(" x ")]).to_numpy())
    ok = ~scores["score"].isna()
    # 1. genuine and impostor score distributions per subgroup
    n = len(subs)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True)
    bins = np.linspace(float(scores.loc[ok, "score"].min()) if ok.any() else -1, 1.0, 40)
    for ax, name in zip(axes.ravel(), subs):
        m = (vals == name) & ok
        for kind, colour in (("impostor", "#b84a62"), ("genuine", "#3a9d5d")):
            s = scores.loc[m & (scores["kind"] == kind), "score"]
            if len(s):
                ax.hist(s, bins=bins, density=True, alpha=0.6, color=colour, label=kind)
        if t is not None:
            ax.axvline(t, color="k", lw=1, ls="--")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.supxlabel("cosine similarity (dashed: global threshold)", fontsize=9)
    fig.tight_layout()
    files["plot_scores"] = folder / "score_distributions.png"
    fig.savefig(files["plot_scores"], dpi=90)
    plt.close(fig)
    # 2. DET curves (FNMR against FMR, log FMR axis)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, e in subs.items():
        roc = e["roc"]
        f_m = np.asarray(roc["fmr"])
        keep = f_m > 0
        if keep.any():
            ax.plot(f_m[keep], np.asarray(roc["fnmr"])[keep], label=name, lw=1.3)
    ax.set_xscale("log")
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("false non-match rate (FNMR)")
    ax.axvline(metrics["options"]["far"], color="k", lw=0.8, ls=":")
    ax.set_title(f"DET per subgroup ({gname})", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    files["plot_det"] = folder / "det.png"
    fig.savefig(files["plot_det"], dpi=90)
    plt.close(fig)
    # 3. FMR and FNMR at the global threshold vs each subgroup's own threshold
    fig, axes2 = plt.subplots(1, 2, figsize=(9, 0.45 * n + 1.6))
    y = np.arange(n)
    for ax, metric, own in ((axes2[0], "fmr", "fmr_own_threshold"), (axes2[1], "fnmr", "fnmr_own_threshold")):
        before = [subs[s][metric] if subs[s][metric] is not None else np.nan for s in subs]
        after = [subs[s][own] if subs[s][own] is not None else np.nan for s in subs]
        lo = [b - (subs[s][f"{metric}_ci"][0] or b) for b, s in zip(before, subs)]
        hi = [(subs[s][f"{metric}_ci"][1] or b) - b for b, s in zip(before, subs)]
        ax.barh(y + 0.2, before, 0.4, xerr=[lo, hi], color="#3b6fb6", label="global threshold")
        ax.barh(y - 0.2, after, 0.4, color="#d9822b", label="own threshold")
        ax.set_yticks(y, list(subs), fontsize=8)
        ax.set_title(metric.upper(), fontsize=10)
        ax.set_xlim(left=0)
        if metric == "fmr":
            ax.axvline(metrics["options"]["far"], color="k", lw=0.8, ls=":")
    axes2[0].legend(fontsize=7)
    fig.tight_layout()
    files["plot_rates"] = folder / "rates_before_after.png"
    fig.savefig(files["plot_rates"], dpi=90)
    plt.close(fig)
    # 4. face-part shares of the match score, per subgroup
    why = metrics.get("why", {}).get("groupings", {}).get(gname)
    if why:
        names = list(why["subgroups"])
        fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.6))
        left = np.zeros(len(names))
        for p in FACE_PARTS:
            v = np.array([why["subgroups"][s][p]["mean"] or 0.0 for s in names])
            ax.barh(names, v, left=left, color=np.array(FACE_PART_COLOURS[p]) / 255, label=p)
            left += v
        kind = metrics["why"].get("pairs", "genuine")
        ax.set_xlabel(f"share of the positive attribution of {kind} match scores")
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
        fig.tight_layout()
        files["plot_parts"] = folder / "part_shares.png"
        fig.savefig(files["plot_parts"], dpi=90)
        plt.close(fig)
    if explained:
        _mean_heatmaps(explained, folder, files, plt)
    return files


def _mean_heatmaps(explained: list[dict], folder: Path, files: dict, plt) -> None:
    """Mean chip heatmap (both sides of every explained pair) per subgroup."""
    by: dict[str, list[np.ndarray]] = {}
    for e in explained:
        for h in (e["heat_a"], e["heat_b"]):
            scale = float(np.abs(h).max()) or 1.0
            by.setdefault(e["subgroup"], []).append(h / scale)
    names = sorted(by)
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = np.mean(by[name], axis=0)
        lim = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{name} (n={len(by[name]) // 2})", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    files["plot_heatmaps"] = folder / "mean_heatmaps.png"
    fig.savefig(files["plot_heatmaps"], dpi=90)
    plt.close(fig)


def _plot_uris(plots: Mapping[str, Path] | None) -> dict[str, str]:
    """The plots that exist on disk, as ``data:`` URIs (the page then needs no other file)."""
    return {k: png_data_uri(p) for k, p in (plots or {}).items()
            if k.startswith("plot_") and p is not None and Path(p).is_file()}


def verify_report_section(metrics: dict, plots: Mapping[str, Path] | None = None) -> str:
    """The verification audit as one self-contained ``<section>`` (tables + inlined plots)."""
    return render_template("verify_section.html", metrics=metrics, plots=_plot_uris(plots), parts=FACE_PARTS)


def write_verify_report(metrics: dict, path: Path, *, plots: Mapping[str, Path] | None = None) -> Path:
    """``report.html``: the section alone in a self-contained page."""
    page = render_template("verify_page.html", section=Markup(verify_report_section(metrics, plots)))
    path.write_text(page, encoding="utf-8")
    return path
