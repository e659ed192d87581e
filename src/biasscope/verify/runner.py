"""``run_verify_audit``: embed every image once, score every pair, compute and write the findings.

Resumable as classifier audits are (:mod:`biasscope.audit.store`): an SQLite file in the output
folder (``verify.sqlite``, WAL) receives each batch of image embeddings in one transaction, and
each explained pair's heatmaps as soon as they are computed. A killed run restarted with the same
command skips what is stored. The stored unit is the image's embedding, not the pair's score: a
score is one dot product of two stored embeddings, while one image takes part in many pairs.
Embeddings are keyed by the image file and its size and modification time, explanations by the two
files and the method's settings, so a re-run with other groups, FAR, pair sampling or an extended
manifest reuses everything still valid, and a replaced image is embedded again. A run folder
refuses a different model (its embeddings would be mixed).

Writes ``metrics.json``, ``pairs.csv`` (every pair and its score), ``plots/*.png`` and a
self-contained ``report.html``.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..audit.store import json_safe
from ..errors import BiasscopeError, CancelledError, ExplainerError
from ..faces.parts import FACE_PARTS
from ..images import load_image
from .metrics import VerifyOptions, compute_verify_metrics, scores_frame
from .models import EmbeddingModel, cosine_similarity, load_embedding_model
from .pairs import PairSet, join_columns, load_pairs
from .store import VerifyStore

__all__ = [
    "EXPLAIN_KINDS",
    "VerifyResult",
    "explain_subgroups",
    "run_verify_audit",
    "why_metrics",
]

#: which pairs ``explain`` picks: genuine pairs (why one person matches) or the top impostors (false matches)
EXPLAIN_KINDS = ("genuine", "impostor")


@dataclass
class VerifyResult:
    """What a verification audit produced."""

    out_dir: Path
    metrics: dict
    scores: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("the verification audit was cancelled; run it again to resume")


def _stamp(file: str) -> str:
    """Size and modification time: an image replaced under the same name is embedded again."""
    st = Path(file).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _embed_images(model: EmbeddingModel, pairs: PairSet, store: VerifyStore, batch_size: int,
                  progress: Callable[[str, int, int], None] | None, cancel: threading.Event | None = None) -> None:
    stored = store.stamps()
    todo = [r for r in pairs.images.itertuples() if stored.get(r.file) != _stamp(r.file)]
    total = len(pairs.images)
    done = total - len(todo)
    if progress:
        progress("embedding", done, total)
    for s in range(0, len(todo), batch_size):
        _check(cancel)
        batch = todo[s : s + batch_size]
        chips, rows = [], []
        for r in batch:
            try:
                chip = model.chip(load_image(r.file))
                chips.append((r, np.asarray(chip.image.convert("RGB"))))
            except BiasscopeError as exc:
                rows.append((r.file, _stamp(r.file), None, str(exc)))
        if chips:
            vecs = model.embed([c for _, c in chips])
            rows.extend((r.file, _stamp(r.file), v, None) for (r, _), v in zip(chips, vecs))
        store.write_embeddings(rows)
        done += len(batch)
        if progress:
            progress("embedding", done, total)


def _score_pairs(pairs: PairSet, by_file: dict[str, np.ndarray]) -> np.ndarray:
    files = dict(zip(pairs.images["image_id"], pairs.images["file"]))
    vecs = {int(i): by_file[f] for i, f in files.items() if f in by_file}
    a = pairs.pairs["a"].to_numpy()
    b = pairs.pairs["b"].to_numpy()
    ok = np.array([i in vecs and j in vecs for i, j in zip(a, b)], dtype=bool)
    scores = np.full(len(a), np.nan)
    if ok.any():
        dim = len(next(iter(vecs.values())))
        va = np.stack([vecs[i] for i in a[ok]]).reshape(-1, dim)
        vb = np.stack([vecs[j] for j in b[ok]]).reshape(-1, dim)
        scores[ok] = cosine_similarity(va, vb)
    return scores


def explain_subgroups(
    model: EmbeddingModel,
    pairs: PairSet,
    scores: pd.DataFrame,
    store: VerifyStore,
    *,
    per_subgroup: int,
    method: str = "occlusion",
    patch: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    kind: str = "genuine",
    progress: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[dict]:
    """Explain up to ``per_subgroup`` pairs per subgroup, storing each as it is done.

    ``kind="genuine"``: a seeded sample of genuine pairs, at most one per identity (so the explained
    pairs are independent). ``kind="impostor"``: the highest-scoring impostor pairs (the false
    matches and near misses: what makes two different people look alike to the matcher), no
    identity used twice.
    """
    from .explain import explain_pair

    if kind not in EXPLAIN_KINDS:
        raise ExplainerError(f"unknown kind of pairs to explain {kind!r}; choose from {', '.join(EXPLAIN_KINDS)}")
    rng = np.random.default_rng(seed)
    pool = scores[(scores["kind"] == kind) & ~scores["score"].isna()]
    chosen: list[int] = []
    for _sub, df in pool.groupby("subgroup", sort=True):
        if kind == "genuine":
            ids = df.groupby("identity_a", sort=True).head(1)["pair_id"].to_numpy()  # one pair per identity
            take = min(per_subgroup, len(ids))
            chosen.extend(sorted(rng.choice(ids, size=take, replace=False).tolist()))
            continue
        used: set[str] = set()
        picked = 0
        for r in df.sort_values(["score", "pair_id"], ascending=[False, True]).itertuples():
            if picked >= per_subgroup:
                break
            if r.identity_a in used or r.identity_b in used:
                continue
            used |= {r.identity_a, r.identity_b}
            chosen.append(int(r.pair_id))
            picked += 1
    files = dict(zip(pairs.images["image_id"], pairs.images["file"]))
    by_id = scores.set_index("pair_id")
    settings = json.dumps([method, patch, stride])
    out: list[dict] = []
    for k, pid in enumerate(chosen):
        _check(cancel)
        row = by_id.loc[pid]
        fa, fb = files[int(row["a"])], files[int(row["b"])]
        # keyed by the two files, their stamps and the settings: reused across groupings and samplings
        key = json.dumps([fa, _stamp(fa), fb, _stamp(fb), settings])
        rec = store.explanation(key)
        if rec is None:
            ca = model.chip(load_image(fa))
            cb = model.chip(load_image(fb))
            ex = explain_pair(model, ca, cb, method=method, patch=patch, stride=stride)
            areas = {p: (ex.areas_a[p] + ex.areas_b[p]) / 2 for p in ex.areas_a} if ex.areas_a and ex.areas_b else {}
            rec = {"method": method, "score": ex.score, "shares": ex.shares, "shares_a": ex.shares_a,
                   "shares_b": ex.shares_b, "areas": areas}
            store.write_explanation(key, rec, ex.heat_a, ex.heat_b)
            rec = {**rec, "heat_a": ex.heat_a, "heat_b": ex.heat_b}
        out.append({**rec, "pair_id": int(pid), "subgroup": row["subgroup"], "kind": kind})
        if progress:
            progress("explaining", k + 1, len(chosen))
    return out


def why_metrics(explained: list[dict], scores: pd.DataFrame, groups: Sequence[str], opts: VerifyOptions,
                 min_share_difference: float) -> dict:
    """Face-part shares per subgroup (mean, bootstrap interval) and Holm-adjusted gap tests."""
    from ..audit.metrics import gap_test, holm_adjust

    if not explained:
        return {}
    by_id = scores.set_index("pair_id")
    rows = []
    for e in explained:
        r = by_id.loc[e["pair_id"]]
        rows.append({**{f"share:{p}": e["shares"].get(p, math.nan) for p in FACE_PARTS},
                     **{f"area:{p}": e.get("areas", {}).get(p, math.nan) for p in FACE_PARTS},
                     **{g: r[f"{g}_a"] for g in groups}})
    df = pd.DataFrame(rows)
    groupings = {g: df[g].astype(str) for g in groups}
    if len(groups) > 1:
        groupings[" x ".join(groups)] = join_columns(df, list(groups))
    if not groups:
        groupings["all"] = pd.Series(["all"] * len(df))
    rng = np.random.default_rng(opts.seed)
    q = ((1 - opts.confidence) / 2, 1 - (1 - opts.confidence) / 2)
    out: dict = {"method": explained[0]["method"], "pairs": explained[0].get("kind", "genuine"), "n_pairs": len(df),
                 "groupings": {}}
    tests: list[dict] = []
    # permutations enough for a p-value to survive Holm over every possible test
    n_perm = max(opts.n_boot, math.ceil(2 * len(groupings) * len(FACE_PARTS) / opts.alpha))
    for k, (gname, sens) in enumerate(groupings.items()):
        entry: dict = {"subgroups": {}, "tests": {}}
        for v in sorted(set(sens)):
            sub = df[sens.to_numpy() == v]
            e: dict = {"n": len(sub)}
            for p in FACE_PARTS:
                x = sub[f"share:{p}"].to_numpy(dtype=np.float64)
                x = x[~np.isnan(x)]
                if x.size == 0:
                    e[p] = {"mean": None, "ci": [None, None], "n": 0}
                    continue
                boot = x[rng.integers(0, x.size, size=(opts.n_boot, x.size))].mean(1)
                area = sub[f"area:{p}"].to_numpy(dtype=np.float64)
                area = area[~np.isnan(area)]
                e[p] = {"mean": float(x.mean()), "ci": [float(np.quantile(boot, q[0])), float(np.quantile(boot, q[1]))],
                        "n": int(x.size), "area": float(area.mean()) if area.size else None}
            entry["subgroups"][v] = e
        for j, p in enumerate(FACE_PARTS):
            res = gap_test(df[f"share:{p}"].to_numpy(dtype=np.float64), sens.to_numpy(), n_boot=opts.n_boot,
                           n_perm=n_perm, confidence=opts.confidence, seed=opts.seed + 100 * k + j)
            if res is None:
                continue
            res.update(grouping=gname, part=p)
            res["degenerate"] = bool(res["high"] == res["low"])
            entry["tests"][p] = res
            tests.append(res)
        out["groupings"][gname] = entry
    live = [t for t in tests if not t["degenerate"]]
    for t, pa in zip(live, holm_adjust([t["p_value"] for t in live]) if live else []):
        t["p_adjusted"] = pa
    for t in tests:
        t.setdefault("p_adjusted", None)
        t["flagged"] = bool(not t["degenerate"] and t["p_adjusted"] is not None and t["p_adjusted"] < opts.alpha
                            and t["difference_ci"][0] > 0 and t["difference"] >= min_share_difference)
    out["flagged"] = [{k: t[k] for k in ("grouping", "part", "high_group", "low_group", "high", "low", "difference",
                                         "difference_ci", "p_adjusted")} for t in tests if t["flagged"]]
    out["min_share_difference"] = min_share_difference
    return out


def _write_pairs_csv(path: Path, pairs: PairSet, scores: pd.DataFrame, threshold: float | None) -> None:
    paths = dict(zip(pairs.images["image_id"], pairs.images["path"]))
    cols = ["pair_id", "path_a", "path_b", "same", "kind", "subgroup", "identity_a", "identity_b",
            *[f"{g}_{s}" for g in pairs.groups for s in ("a", "b")], "score", "match"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in scores.itertuples(index=False):
            d = r._asdict()
            sc = d["score"]
            ok = sc is not None and not math.isnan(sc)
            match = "" if not ok or threshold is None else int(sc > threshold)
            w.writerow([d["pair_id"], paths[d["a"]], paths[d["b"]], int(d["same"]), d["kind"], d["subgroup"],
                        d["identity_a"], d["identity_b"], *[d[f"{g}_{s}"] for g in pairs.groups for s in ("a", "b")],
                        repr(float(sc)) if ok else "", match])


def run_verify_audit(
    manifest: str | Path,
    *,
    out: str | Path,
    model: str | EmbeddingModel = "dlib-face",
    groups: Sequence[str] = (),
    options: VerifyOptions | None = None,
    impostors_per_subgroup: int = 20_000,
    cross_impostors: int = 20_000,
    max_genuine_per_identity: int = 50,
    batch_size: int = 32,
    explain: int = 0,
    explain_method: str = "occlusion",
    explain_pairs: str = "genuine",
    patch: int | None = None,
    stride: int | None = None,
    min_share_difference: float = 0.05,
    plots: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> VerifyResult:
    """Audit a face matcher: per-subgroup FMR/FNMR/TAR with intervals, thresholds and gap tests.

    ``manifest`` is a pairs or identity CSV (:func:`~biasscope.verify.load_pairs`). ``explain`` > 0
    explains that many pairs per subgroup (``explain_method``; ``explain_pairs="impostor"``: the
    highest-scoring impostor pairs, i.e. what makes different people match) and adds face-part shares
    per subgroup to the findings. Setting ``cancel`` stops between batches (what is stored stays;
    running again resumes).
    """
    opts = options or VerifyOptions()
    pairs = load_pairs(manifest, groups=groups, seed=opts.seed, impostors_per_subgroup=impostors_per_subgroup,
                       cross_impostors=cross_impostors, max_genuine_per_identity=max_genuine_per_identity)
    emb_model = model if isinstance(model, EmbeddingModel) else load_embedding_model(model)
    if explain > 0:
        from .explain import EXPLAIN_METHODS, MSG_NO_GRADIENT

        if explain_method not in EXPLAIN_METHODS:
            raise ExplainerError(f"unknown pair explanation {explain_method!r}; choose from "
                                 f"{', '.join(EXPLAIN_METHODS)}")
        if explain_method == "gradient" and not emb_model.differentiable:
            raise ExplainerError(MSG_NO_GRADIENT.format(name=emb_model.name))
        if explain_pairs not in EXPLAIN_KINDS:
            raise ExplainerError(f"unknown kind of pairs to explain {explain_pairs!r}; choose from "
                                 f"{', '.join(EXPLAIN_KINDS)}")
    out_dir = Path(out)
    store = VerifyStore(out_dir)
    store.init()
    store.check_or_set("model_fingerprint", emb_model.fingerprint, "model")
    store.set_meta("pairs_fingerprint", pairs.fingerprint)
    store.set_meta("model", emb_model.info())
    store.set_meta("manifest", str(Path(manifest).resolve()))
    _embed_images(emb_model, pairs, store, batch_size, progress, cancel)
    _check(cancel)
    vecs, errors = store.embeddings(pairs.images["file"].tolist())
    scores = scores_frame(pairs.pairs, _score_pairs(pairs, vecs))
    metrics = compute_verify_metrics(scores, pairs.groups, opts)
    metrics["model"] = emb_model.info()
    metrics["manifest"] = {"path": str(manifest), "source": pairs.source, "groups": pairs.groups,
                           "n_images": len(pairs.images), "n_images_failed": len(errors)}
    metrics["warnings"] = pairs.notes + metrics["warnings"]
    if errors:
        paths = dict(zip(pairs.images["file"], pairs.images["path"]))
        sample = "; ".join(f"{paths[f]}: {e}" for f, e in list(errors.items())[:5])
        metrics["warnings"].append(f"{len(errors)} image(s) gave no embedding and their pairs are left out ({sample})")
    explained: list[dict] = []
    if explain > 0:
        explained = explain_subgroups(emb_model, pairs, scores, store, per_subgroup=explain, method=explain_method,
                                      patch=patch, stride=stride, seed=opts.seed, kind=explain_pairs,
                                      progress=progress, cancel=cancel)
        metrics["why"] = why_metrics(explained, scores, pairs.groups, opts, min_share_difference)
    files: dict[str, Path] = {}
    files["metrics"] = out_dir / "metrics.json"
    files["metrics"].write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False), encoding="utf-8")
    files["pairs"] = out_dir / "pairs.csv"
    _write_pairs_csv(files["pairs"], pairs, scores, metrics["overall"]["threshold"])
    if plots:
        from .report import write_plots, write_verify_report

        files.update(write_plots(metrics, scores, out_dir / "plots", explained=explained))
        files["report"] = write_verify_report(metrics, out_dir / "report.html", plots=files)
    return VerifyResult(out_dir=out_dir, metrics=metrics, scores=scores, files=files)
