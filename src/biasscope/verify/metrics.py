"""Verification error rates per subgroup, with identity-clustered intervals and gap tests.

Conventions (every figure in ``metrics.json`` follows them):

- A pair *matches* when its score (cosine similarity) is **strictly above** the threshold ``t``.
  FMR(t) = share of impostor pairs with score > t; FNMR(t) = share of genuine pairs with score <= t;
  TAR = 1 - FNMR.
- The threshold at a target FAR ``f`` over ``n`` impostor scores is the ``(k+1)``-th highest impostor
  score with ``k = floor(f * n)``: exactly ``k`` impostors (fewer with ties) score above it, so the
  achieved FMR is at most ``f`` and as close to it as the data allow. With ``n < 1 / f`` the FAR cannot
  be resolved (``k = 0``: the threshold is the highest impostor score) and TAR at that FAR is ``None``.
- The global threshold is chosen at the target FAR over all same-subgroup impostor pairs; cross-group
  impostor pairs are reported apart. Per-subgroup thresholds give each subgroup the target FMR on
  its own impostors; FMR and FNMR are reported at both ("before" and "after").
- Intervals resample *identities* (a percentile bootstrap): a person drawn ``k`` times brings
  their genuine pairs ``k`` times, and an impostor pair of persons drawn ``k`` and ``l`` times counts
  ``k * l`` times, because pairs of one person are not independent. Subgroups hold disjoint
  identities, so their bootstraps are independent.
- Gap tests compare every two subgroups of a grouping on FMR and FNMR at the global threshold: a
  Wald test with the identity-bootstrap standard error of the difference, Holm-adjusted over all
  tests. A gap is flagged only when the adjusted p-value is below ``alpha``, the difference's interval
  excludes 0, and the effect is large: ``high / low >= min_ratio`` and ``high - low >= min_difference``.
  Comparisons with no variation (both rates 0 or 1, an empty side) are marked degenerate and never
  flagged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..audit.metrics import holm_adjust
from .pairs import CROSS, join_columns

__all__ = [
    "DEFAULT_FARS",
    "VerifyOptions",
    "compute_verify_metrics",
    "fmr",
    "fnmr",
    "identity_bootstrap_rates",
    "roc_points",
    "tar_at_far",
    "threshold_at_far",
]

DEFAULT_FARS = (1e-2, 1e-3, 1e-4)


@dataclass
class VerifyOptions:
    """How verification findings are computed (changeable without re-embedding)."""

    far: float = 1e-3
    fars: tuple[float, ...] = DEFAULT_FARS
    n_boot: int = 1000
    seed: int = 0
    confidence: float = 0.95
    alpha: float = 0.05
    min_ratio: float = 1.5
    min_difference: float = 0.0
    min_identities: int = 10
    roc_points: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.far < 1:
            raise ValueError(f"the target FAR must be between 0 and 1, got {self.far}")
        if self.min_ratio < 1:
            raise ValueError(f"min_ratio is high/low and must be >= 1, got {self.min_ratio}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fars"] = list(self.fars)
        return d


# ---------------------------------------------------------------------------------------- rates
def threshold_at_far(impostor: Sequence[float], far: float) -> float:
    """The ``(floor(far * n) + 1)``-th highest impostor score (``nan`` without impostors)."""
    s = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    if s.size == 0:
        return math.nan
    k = math.floor(far * s.size + 1e-9)
    return float(s[k]) if k < s.size else -math.inf


def fmr(impostor: Sequence[float], t: float) -> float:
    """Share of impostor scores strictly above ``t``."""
    s = np.asarray(impostor, dtype=np.float64)
    return float(np.mean(s > t)) if s.size and not math.isnan(t) else math.nan


def fnmr(genuine: Sequence[float], t: float) -> float:
    """Share of genuine scores at or below ``t``."""
    s = np.asarray(genuine, dtype=np.float64)
    return float(np.mean(s <= t)) if s.size and not math.isnan(t) else math.nan


def tar_at_far(genuine: Sequence[float], impostor: Sequence[float], far: float) -> float | None:
    """Genuine acceptance at the threshold giving FMR <= ``far``; ``None`` if ``far`` is unresolvable."""
    n = len(impostor)
    if n == 0 or len(genuine) == 0 or n * far < 1 - 1e-9:
        return None
    return 1.0 - fnmr(genuine, threshold_at_far(impostor, far))


def roc_points(genuine: Sequence[float], impostor: Sequence[float], max_points: int = 200) -> dict:
    """ROC/DET points ``{"threshold", "fmr", "fnmr"}`` at every distinct score (thinned to ``max_points``,
    always keeping the extremes)."""
    g = np.sort(np.asarray(genuine, dtype=np.float64))
    i = np.sort(np.asarray(impostor, dtype=np.float64))
    if g.size == 0 or i.size == 0:
        return {"threshold": [], "fmr": [], "fnmr": []}
    t = np.unique(np.concatenate([g, i]))
    f_m = 1.0 - np.searchsorted(i, t, side="right") / i.size  # P(imp > t)
    f_n = np.searchsorted(g, t, side="right") / g.size  # P(gen <= t)
    if t.size > max_points:
        keep = np.unique(np.concatenate([np.linspace(0, t.size - 1, max_points).round().astype(int)]))
        t, f_m, f_n = t[keep], f_m[keep], f_n[keep]
    return {"threshold": t.tolist(), "fmr": f_m.tolist(), "fnmr": f_n.tolist()}


# ---------------------------------------------------------------------------------------- bootstrap
def identity_bootstrap_rates(
    errors: np.ndarray,
    id_a: np.ndarray,
    id_b: np.ndarray,
    *,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bootstrap replicates ``(n_boot,)`` of ``mean(errors)`` resampling identities.

    ``id_a`` / ``id_b`` are integer identity codes of each pair's sides (equal for genuine pairs).
    Identities are drawn with replacement (as many as there are); a pair's weight is the count of
    its identity (genuine) or the product of its two identities' counts (impostor). Replicates
    with no pair left are ``nan``.
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        return np.full(n_boot, np.nan)
    uniq, inv = np.unique(np.concatenate([id_a, id_b]), return_inverse=True)
    n_id = uniq.size
    # pairs of the same two identities share their weight: sum them once (errors and counts per key)
    keys, kinv = np.unique(inv[: e.size] * n_id + inv[e.size :], return_inverse=True)
    ca, cb = keys // n_id, keys % n_id
    err_k = np.bincount(kinv, weights=e, minlength=keys.size)
    n_k = np.bincount(kinv, minlength=keys.size).astype(np.float64)
    same = ca == cb
    out = np.empty(n_boot)
    chunk = max(1, 4_000_000 // max(keys.size + n_id, 1))
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        m = rng.multinomial(n_id, np.full(n_id, 1.0 / n_id), size=b).astype(np.float64)
        w = np.where(same, m[:, ca], m[:, ca] * m[:, cb])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + b] = (w @ err_k) / (w @ n_k)
    return out


def _ci(boot: np.ndarray, confidence: float) -> list[float | None]:
    b = boot[~np.isnan(boot)]
    if b.size == 0:
        return [None, None]
    q = (1 - confidence) / 2
    return [float(np.quantile(b, q)), float(np.quantile(b, 1 - q))]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _describe(s: np.ndarray) -> dict:
    if s.size == 0:
        return {"n": 0, "mean": None, "sd": None, "quantiles": {}}
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    return {"n": int(s.size), "mean": float(s.mean()), "sd": float(s.std(ddof=1)) if s.size > 1 else 0.0,
            "quantiles": {str(q): float(np.quantile(s, q)) for q in qs}}


# ---------------------------------------------------------------------------------------- tables
def _groupings(pairs: pd.DataFrame, groups: Sequence[str]) -> dict[str, np.ndarray]:
    """``{grouping name: per-pair subgroup value}`` (side a's value; cross pairs are excluded later)."""
    out: dict[str, np.ndarray] = {}
    for g in groups:
        out[g] = pairs[f"{g}_a"].astype(str).to_numpy()
    if len(groups) > 1:
        out[" x ".join(groups)] = join_columns(pairs, [f"{g}_a" for g in groups]).to_numpy()
    if not groups:
        out["all"] = np.full(len(pairs), "all", dtype=object)
    return out


def _subgroup_entry(gen: pd.DataFrame, imp: pd.DataFrame, t_global: float, opts: VerifyOptions,
                    codes: dict[str, int], rng: np.random.Generator) -> tuple[dict, dict]:
    gs = gen["score"].to_numpy(dtype=np.float64)
    is_ = imp["score"].to_numpy(dtype=np.float64)
    t_own = threshold_at_far(is_, opts.far) if is_.size else math.nan
    ids = set(gen["identity_a"]) | set(imp["identity_a"]) | set(imp["identity_b"])
    entry: dict = {
        "n_genuine": int(gs.size),
        "n_impostor": int(is_.size),
        "n_identities": len(ids),
        "fmr": _finite(fmr(is_, t_global)),
        "fnmr": _finite(fnmr(gs, t_global)),
        "tar_at_far": {str(f): tar_at_far(gs, is_, f) for f in opts.fars},
        "threshold": _finite(t_own),
        "far_resolved": bool(is_.size * opts.far >= 1 - 1e-9),
        "fmr_own_threshold": _finite(fmr(is_, t_own)) if is_.size else None,
        "fnmr_own_threshold": _finite(fnmr(gs, t_own)) if gs.size and is_.size else None,
        "genuine_scores": _describe(gs),
        "impostor_scores": _describe(is_),
        "roc": roc_points(gs, is_, opts.roc_points),
    }
    boots: dict[str, np.ndarray] = {}
    for metric, df, err in (("fmr", imp, is_ > t_global), ("fnmr", gen, gs <= t_global)):
        if math.isnan(t_global):  # no impostors anywhere: no threshold, no rates to resample
            boots[metric] = np.full(opts.n_boot, np.nan)
            entry[f"{metric}_ci"] = [None, None]
            continue
        a = np.array([codes[x] for x in df["identity_a"]], dtype=np.int64)
        b = np.array([codes[x] for x in df["identity_b"]], dtype=np.int64)
        boots[metric] = identity_bootstrap_rates(err, a, b, n_boot=opts.n_boot, rng=rng)
        entry[f"{metric}_ci"] = _ci(boots[metric], opts.confidence)
    return entry, boots


def _compare(a_name: str, b_name: str, a: dict, b: dict, ba: np.ndarray, bb: np.ndarray, metric: str,
             grouping: str, opts: VerifyOptions) -> dict:
    va, vb = a[metric], b[metric]
    res: dict = {"grouping": grouping, "metric": metric, "degenerate": False}
    if va is None or vb is None:
        res.update(degenerate=True, why="a side has no pairs", p_value=None)
        return res
    hi_name, lo_name, hi, lo, bh, bl = ((a_name, b_name, va, vb, ba, bb) if va >= vb
                                        else (b_name, a_name, vb, va, bb, ba))
    diff = bh - bl
    diff = diff[~np.isnan(diff)]
    se = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    res.update(high_group=hi_name, low_group=lo_name, high=hi, low=lo, difference=hi - lo,
               difference_ci=_ci(diff, opts.confidence),
               ratio=(hi / lo if lo > 0 else (math.inf if hi > 0 else None)))
    if se <= 0 or (hi == lo and hi in (0.0, 1.0)):
        res.update(degenerate=True, why="no variation (both rates 0 or 1, or a constant bootstrap)", p_value=None)
        return res
    res["p_value"] = float(2 * norm.sf(abs(hi - lo) / se))
    return res


def compute_verify_metrics(scores: pd.DataFrame, groups: Sequence[str], options: VerifyOptions | None = None) -> dict:
    """All verification findings from the scored pairs.

    ``scores`` has one row per pair: ``score`` (NaN for pairs with an unreadable or faceless image,
    which are counted and left out), ``kind`` (``genuine``/``impostor``/``cross``), ``subgroup``,
    ``identity_a``, ``identity_b`` and ``G_a``/``G_b`` per group column.
    """
    opts = options or VerifyOptions()
    rng = np.random.default_rng(opts.seed)
    df = scores.reset_index(drop=True)
    failed = int(df["score"].isna().sum())
    df = df[~df["score"].isna()]
    gen_all = df[df["kind"] == "genuine"]
    imp_all = df[df["kind"] == "impostor"]
    cross = df[df["kind"] == "cross"]
    t_global = threshold_at_far(imp_all["score"].to_numpy(), opts.far)
    codes = {x: i for i, x in enumerate(pd.unique(pd.concat([df["identity_a"], df["identity_b"]])))}
    out: dict = {
        "options": opts.to_dict(),
        "n_pairs": len(scores),
        "n_failed_pairs": failed,
        "overall": {
            "threshold": _finite(t_global),
            "target_far": opts.far,
            "n_genuine": len(gen_all),
            "n_impostor": len(imp_all),
            "fmr": _finite(fmr(imp_all["score"], t_global)),
            "fnmr": _finite(fnmr(gen_all["score"], t_global)),
            "far_resolved": bool(len(imp_all) * opts.far >= 1 - 1e-9),
            "tar_at_far": {str(f): tar_at_far(gen_all["score"], imp_all["score"], f) for f in opts.fars},
            "roc": roc_points(gen_all["score"], imp_all["score"], opts.roc_points),
            "genuine_scores": _describe(gen_all["score"].to_numpy(dtype=np.float64)),
            "impostor_scores": _describe(imp_all["score"].to_numpy(dtype=np.float64)),
        },
        "cross_group": {
            "n_impostor": len(cross),
            "fmr": _finite(fmr(cross["score"], t_global)) if len(cross) else None,
            "impostor_scores": _describe(cross["score"].to_numpy(dtype=np.float64)),
        },
        "groupings": {},
        "warnings": [],
    }
    if not len(gen_all) or not len(imp_all):
        out["warnings"].append("need both genuine and same-group impostor pairs to compute error rates")
    if not out["overall"]["far_resolved"]:
        out["warnings"].append(
            f"only {len(imp_all)} impostor pair(s): FAR {opts.far:g} needs at least {math.ceil(1 / opts.far)}; "
            "the global threshold is the highest impostor score")
    tests: list[dict] = []
    pool = df[df["kind"] != "cross"]
    values = _groupings(pool, groups)
    for gname, vals in values.items():
        entry: dict = {"subgroups": {}, "tests": []}
        boots: dict[str, dict[str, np.ndarray]] = {}
        for v in sorted(set(vals)):
            m = vals == v
            sub_gen = pool[m & (pool["kind"] == "genuine").to_numpy()]
            sub_imp = pool[m & (pool["kind"] == "impostor").to_numpy()]
            e, b = _subgroup_entry(sub_gen, sub_imp, t_global, opts, codes, rng)
            entry["subgroups"][v] = e
            boots[v] = b
            if e["n_identities"] < opts.min_identities:
                out["warnings"].append(f"{gname} subgroup {v!r} has only {e['n_identities']} identities "
                                       f"(< {opts.min_identities}); its intervals are unreliable")
            if e["n_impostor"] and not e["far_resolved"]:
                out["warnings"].append(f"{gname} subgroup {v!r}: {e['n_impostor']} impostor pair(s) cannot "
                                       f"resolve FAR {opts.far:g}; its own threshold is its highest impostor score")
        fmrs = [e["fmr"] for e in entry["subgroups"].values() if e["fmr"] is not None]
        own = [e["fmr_own_threshold"] for e in entry["subgroups"].values() if e["fmr_own_threshold"] is not None]
        entry["fmr_spread"] = {
            "global_threshold": {"max": max(fmrs, default=None), "min": min(fmrs, default=None)},
            "subgroup_thresholds": {"max": max(own, default=None), "min": min(own, default=None)},
        }
        names = list(entry["subgroups"])
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                for metric in ("fmr", "fnmr"):
                    r = _compare(names[i], names[j], entry["subgroups"][names[i]], entry["subgroups"][names[j]],
                                 boots[names[i]][metric], boots[names[j]][metric], metric, gname, opts)
                    entry["tests"].append(r)
                    tests.append(r)
        out["groupings"][gname] = entry
    live = [t for t in tests if t.get("p_value") is not None]
    for t, pa in zip(live, holm_adjust([t["p_value"] for t in live]) if live else []):
        t["p_adjusted"] = pa
    for t in tests:
        t.setdefault("p_adjusted", None)
        lo_ci = (t.get("difference_ci") or [None])[0]
        ratio = t.get("ratio")
        t["large"] = bool(not t["degenerate"] and ratio is not None and ratio >= opts.min_ratio
                          and t["difference"] >= opts.min_difference)
        t["flagged"] = bool(not t["degenerate"] and t["p_adjusted"] is not None and t["p_adjusted"] < opts.alpha
                            and lo_ci is not None and lo_ci > 0 and t["large"])
        if t.get("ratio") is not None and not math.isfinite(t["ratio"]):
            t["ratio"] = "inf"
    out["n_tests"] = len(live)
    out["flagged"] = [{k: t.get(k) for k in ("grouping", "metric", "high_group", "low_group", "high", "low",
                                              "difference", "difference_ci", "ratio", "p_value", "p_adjusted")}
                      for t in tests if t["flagged"]]
    out["definitions"] = {
        "match": "score > threshold (cosine similarity of the two embeddings)",
        "fmr": "impostor pairs with score > threshold / impostor pairs",
        "fnmr": "genuine pairs with score <= threshold / genuine pairs",
        "threshold": "the (floor(FAR*n)+1)-th highest impostor score",
        "global_threshold": "chosen at the target FAR over all same-subgroup impostor pairs",
        "intervals": "percentile bootstrap resampling identities",
        "cross_group": f"impostor pairs whose sides differ on a group column (subgroup {CROSS!r}); "
                       "not in any subgroup's rates",
    }
    return out


def scores_frame(pairs: pd.DataFrame, scores: dict[int, float] | np.ndarray) -> pd.DataFrame:
    """``pairs`` with a ``score`` column (``nan`` where a pair could not be scored)."""
    p = pairs.copy()
    if isinstance(scores, dict):
        p["score"] = [scores.get(int(i), math.nan) for i in p["pair_id"]]
    else:
        p["score"] = np.asarray(scores, dtype=np.float64)
    return p


__all__ += ["scores_frame"]
