"""Plots (PNG) and a self-contained HTML section for a verification audit.

The section (:func:`verify_report_section`) is plain HTML with the plots inlined as base64 PNGs,
so it can be embedded in another page or written alone (:func:`write_verify_report`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..faces.parts import FACE_PART_COLOURS, FACE_PARTS
from .pairs import join_columns

__all__ = ["verify_report_section", "write_plots", "write_verify_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}section{background:#fff;border-radius:8px;padding:12px 20px;
margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}table{border-collapse:collapse;margin:8px 0;font-size:.9em}
td,th{border:1px solid #d6dae2;padding:4px 8px;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}.flag{color:#b3261e;font-weight:600}.muted{color:#667}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:6px 10px}img{max-width:100%}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _rate(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.2e}" if 0 < x < 1e-2 else f"{x:.4f}"


def _ci(ci: list | None) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" <span class=muted>[{_rate(ci[0])}, {_rate(ci[1])}]</span>"


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


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'


def verify_report_section(metrics: dict, plots: Mapping[str, Path] | None = None) -> str:
    """The verification audit as one self-contained ``<section>`` (tables + inlined plots)."""
    plots = plots or {}
    o = metrics["overall"]
    far = metrics["options"]["far"]
    parts = ['<section id="verification"><h2>Face verification</h2>',
             f"<p>Model <b>{_e(metrics.get('model', {}).get('name', '?'))}</b>; {o['n_genuine']} genuine and "
             f"{o['n_impostor']} same-subgroup impostor pairs. Global threshold "
             f"<b>{_rate(o['threshold'])}</b> (cosine; a match is a score above it) chosen at FAR {far:g}: "
             f"FMR {_rate(o['fmr'])}, FNMR {_rate(o['fnmr'])}. Cross-group impostors: "
             f"{metrics['cross_group']['n_impostor']} pairs, FMR {_rate(metrics['cross_group']['fmr'])}.</p>"]
    for w in metrics.get("warnings", []):
        parts.append(f'<p class="warn">{_e(w)}</p>')
    fars = [str(f) for f in metrics["options"]["fars"]]
    for gname, g in metrics["groupings"].items():
        parts.append(f"<h3>{_e(gname)}</h3><table><tr><th>subgroup</th><th>identities</th><th>genuine</th>"
                     "<th>impostor</th><th>FMR (global t)</th><th>FNMR (global t)</th>"
                     + "".join(f"<th>TAR@FAR {f}</th>" for f in fars)
                     + "<th>own threshold</th><th>FMR / FNMR (own t)</th></tr>")
        for name, e in g["subgroups"].items():
            parts.append(
                f"<tr><td>{_e(name)}</td><td>{e['n_identities']}</td><td>{e['n_genuine']}</td>"
                f"<td>{e['n_impostor']}</td><td>{_rate(e['fmr'])}{_ci(e['fmr_ci'])}</td>"
                f"<td>{_rate(e['fnmr'])}{_ci(e['fnmr_ci'])}</td>"
                + "".join(f"<td>{_rate(e['tar_at_far'][f])}</td>" for f in fars)
                + f"<td>{_rate(e['threshold'])}</td><td>{_rate(e['fmr_own_threshold'])} / "
                f"{_rate(e['fnmr_own_threshold'])}</td></tr>")
        parts.append("</table>")
    if metrics.get("flagged"):
        parts.append("<h3>Flagged gaps</h3><ul>")
        for f in metrics["flagged"]:
            parts.append(f'<li class="flag">{_e(f["grouping"])}: {_e(f["metric"].upper())} of {_e(f["high_group"])} '
                         f"{_rate(f['high'])} vs {_e(f['low_group'])} {_rate(f['low'])} "
                         f"(ratio {_e(f['ratio'])}, Holm p {_rate(f['p_adjusted'])})</li>")
        parts.append("</ul>")
    else:
        parts.append(f"<p>No gap flagged ({metrics.get('n_tests', 0)} tests, Holm-adjusted, minimum ratio "
                     f"{metrics['options']['min_ratio']}).</p>")
    for key, alt in (("plot_scores", "score distributions"), ("plot_det", "DET curves"),
                     ("plot_rates", "FMR and FNMR before and after subgroup thresholds")):
        parts.append(_img(plots.get(key), alt))
    why = metrics.get("why")
    if why:
        kind = why.get("pairs", "genuine")
        what = "genuine pairs" if kind == "genuine" else "top-scoring impostor pairs: why different people match"
        parts.append(f"<h3>Why faces match ({_e(why['method'])}, {why['n_pairs']} {what})</h3>")
        for gname, g in why["groupings"].items():
            parts.append(f"<p><b>{_e(gname)}</b>: share of the positive attribution on each face part, mean "
                         "[95% interval] <span class=muted>(part's share of the chip's area)</span></p><table><tr>"
                         "<th>subgroup</th><th>n</th>" + "".join(f"<th>{_e(p)}</th>" for p in FACE_PARTS) + "</tr>")
            for name, e in g["subgroups"].items():
                cells = []
                for p in FACE_PARTS:
                    v = e[p]
                    if v["mean"] is None:
                        cells.append("<td>n/a</td>")
                        continue
                    area = f" <span class=muted>({v['area']:.0%})</span>" if v.get("area") is not None else ""
                    cells.append(f"<td>{v['mean']:.1%} <span class=muted>[{v['ci'][0]:.1%}, {v['ci'][1]:.1%}]"
                                 f"</span>{area}</td>")
                parts.append(f"<tr><td>{_e(name)}</td><td>{e['n']}</td>{''.join(cells)}</tr>")
            parts.append("</table>")
        parts.append(_img(plots.get("plot_parts"), "face-part shares"))
        parts.append(_img(plots.get("plot_heatmaps"), "mean heatmaps"))
        for f in why.get("flagged", []):
            parts.append(f'<p class="flag">{_e(f["grouping"])}: the {_e(f["part"])} carries {f["high"]:.1%} of the '
                         f"match evidence for {_e(f['high_group'])} vs {f['low']:.1%} for {_e(f['low_group'])} "
                         f"(Holm p {_rate(f['p_adjusted'])})</p>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def write_verify_report(metrics: dict, path: Path, *, plots: Mapping[str, Path] | None = None) -> Path:
    """``report.html``: the section alone in a self-contained page."""
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>biasscope verification audit</title>"
            f"<style>{_CSS}</style></head><body><main><h1>Face verification audit</h1>"
            f"{verify_report_section(metrics, plots)}</main></body></html>")
    path.write_text(page, encoding="utf-8")
    return path
