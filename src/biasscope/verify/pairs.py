"""Verification inputs: a pairs manifest, or an identity manifest from which pairs are drawn.

**Pairs manifest** (BFW's layout): ``path_a, path_b, same`` (1/0, true/false, yes/no), optional
``identity_a, identity_b`` and, for each group column ``G``, either ``G_a`` and ``G_b`` (each side's
value) or one ``G`` column holding both sides' value.

**Identity manifest**: ``path, identity`` and the group columns. Genuine pairs are every pair of
one identity's images (at most ``max_genuine_per_identity``, a seeded sample); impostor pairs are a
seeded sample of pairs of different identities *within the same subgroup* (all group columns equal;
BFW's design, so a subgroup's false match rate is measured among look-alike demographics), and
cross-group impostor pairs are sampled separately and never enter a subgroup's rates.

Paths are relative to the CSV's folder and may not leave it (the same rule and messages as the
classifier audit's manifest, :mod:`biasscope.audit.manifest`). Every problem is reported with its
CSV line in one :class:`~biasscope.errors.ManifestError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..audit.manifest import MSG_EMPTY_CELL, MSG_ESCAPES, MSG_NO_FILE, read_manifest_text, resolves_inside
from ..errors import ManifestError

__all__ = [
    "CROSS",
    "PairSet",
    "join_columns",
    "load_pairs",
    "subgroup_key",
]

#: the subgroup of an impostor pair whose two sides differ on some group column
CROSS = "cross-group"
SUBGROUP_SEP = " & "

MSG_KIND = (
    "{path}: expected a pairs manifest (columns path_a, path_b, same) or an identity manifest "
    "(columns path, identity); columns are: {cols}"
)
MSG_GROUP_COLUMN = "group {g!r}: expected a column {g!r} or both {g}_a and {g}_b (columns: {cols})"
MSG_SAME = "line {line}: 'same' must be 1/0, true/false or yes/no, not {value!r}"
MSG_GENUINE_GROUPS = "line {line}: a genuine pair (same person) with different {g!r} on its two sides ({a!r}, {b!r})"
MSG_ID_GROUPS = "line {line}: identity {ident!r} has {g!r} = {v!r} here but {w!r} on line {first}"
MSG_SAME_ID = ("line {line}: same={same!r} but identity_a={a!r} and identity_b={b!r}; a genuine pair has one "
               "identity, an impostor pair two")
MSG_IMAGE_CLASH = "line {line}: image {path!r} has {col} {v!r} here but {w!r} on line {first}"
MSG_SAME_IMAGE = "line {line}: both sides are the same file {path!r}; a pair needs two images"
MSG_NO_PAIRS = "no pairs: the manifest has no rows"
MSG_NO_GENUINE = "no genuine pairs: every identity has a single image; genuine pairs need two images of one person"


@dataclass
class PairSet:
    """Images and the pairs to score.

    ``images``: one row per distinct image (``image_id``, ``path`` as written, ``file`` resolved,
    ``identity``, group columns). ``pairs``: ``pair_id, a, b`` (image ids), ``same``, ``identity_a``,
    ``identity_b``, ``G_a``/``G_b`` per group, ``subgroup`` (the intersection value, or
    :data:`CROSS`) and ``kind`` (``genuine``, ``impostor`` or ``cross``).
    """

    images: pd.DataFrame
    pairs: pd.DataFrame
    groups: list[str]
    root: Path
    source: str  # "pairs" or "identities"
    fingerprint: str
    identity_from_path: bool = False  # no identity columns: each image is its own bootstrap unit
    notes: list[str] = field(default_factory=list)

    @property
    def n_genuine(self) -> int:
        return int((self.pairs["kind"] == "genuine").sum())

    @property
    def n_impostor(self) -> int:
        return int((self.pairs["kind"] == "impostor").sum())


def join_columns(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Row-wise ``" & "``-joined string values of ``columns`` (vectorised; an intersection's name)."""
    out = df[columns[0]].astype(str)
    for c in columns[1:]:
        out = out + SUBGROUP_SEP + df[c].astype(str)
    return out.reset_index(drop=True)


def subgroup_key(values: Sequence[str]) -> str:
    """The intersection subgroup's name: values joined with ``" & "`` (``"black & female"``)."""
    return SUBGROUP_SEP.join(str(v) for v in values)


def _truth(v: str) -> bool | None:
    t = v.strip().lower()
    if t in ("1", "true", "yes", "y", "t", "same", "genuine"):
        return True
    if t in ("0", "false", "no", "n", "f", "different", "impostor"):
        return False
    return None


def load_pairs(
    source: str | Path,
    *,
    groups: Sequence[str] = (),
    root: str | Path | None = None,
    text: str | None = None,
    seed: int = 0,
    impostors_per_subgroup: int = 20_000,
    cross_impostors: int = 20_000,
    max_genuine_per_identity: int = 50,
) -> PairSet:
    """Read a pairs or identity manifest (told apart by their columns) into a :class:`PairSet`."""
    text, raw = read_manifest_text(source, text)
    src = Path(source)
    base = (Path(root) if root is not None else src.resolve().parent).resolve()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ManifestError(f"manifest {src} is empty", [MSG_NO_PAIRS])
    header = [h.strip() for h in rows[0]]
    body = [(i, r) for i, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    fp = hashlib.sha256(raw + repr((list(groups), seed, impostors_per_subgroup, cross_impostors,
                                    max_genuine_per_identity)).encode()).hexdigest()
    if {"path_a", "path_b", "same"} <= set(header):
        return _from_pairs(src, header, body, list(groups), base, fp)
    if {"path", "identity"} <= set(header):
        return _from_identities(src, header, body, list(groups), base, fp, seed=seed,
                                impostors_per_subgroup=impostors_per_subgroup, cross_impostors=cross_impostors,
                                max_genuine_per_identity=max_genuine_per_identity)
    raise ManifestError(MSG_KIND.format(path=src, cols=", ".join(header)))


class _Images:
    """Distinct images, resolved and checked once each."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ids: dict[Path, int] = {}
        self.rows: list[dict] = []

    def add(self, rel: str, line: int, problems: list[str]) -> int | None:
        if not rel:
            return None
        file = self.base / rel
        if not resolves_inside(file, self.base):
            problems.append(MSG_ESCAPES.format(line=line, path=rel, root=self.base))
            return None
        key = file.resolve()
        if key in self.ids:
            return self.ids[key]
        if not key.is_file():
            problems.append(MSG_NO_FILE.format(line=line, path=rel))
            return None
        self.ids[key] = len(self.rows)
        self.rows.append({"image_id": len(self.rows), "path": rel, "file": str(key)})
        return self.ids[key]


def _row(header: list[str], line: int, cells: list[str], required: Sequence[str],
         problems: list[str]) -> tuple[dict[str, str], bool] | None:
    """A CSV row's stripped cells by column and whether every ``required`` cell is filled (each empty one
    is a problem); None when the row has another number of cells than the header."""
    if len(cells) != len(header):
        problems.append(f"line {line}: has {len(cells)} cells but the header has {len(header)}")
        return None
    rec = {h: c.strip() for h, c in zip(header, cells)}
    empty = [col for col in required if not rec.get(col)]
    problems.extend(MSG_EMPTY_CELL.format(line=line, col=col) for col in empty)
    return rec, not empty


def _from_pairs(src: Path, header: list[str], body: list, groups: list[str], base: Path, fp: str) -> PairSet:
    problems: list[str] = []
    sides: dict[str, tuple[str, str]] = {}
    for g in groups:
        if f"{g}_a" in header and f"{g}_b" in header:
            sides[g] = (f"{g}_a", f"{g}_b")
        elif g in header:
            sides[g] = (g, g)
        else:
            problems.append(MSG_GROUP_COLUMN.format(g=g, cols=", ".join(header)))
    if problems:
        raise ManifestError(f"manifest {src} has {len(problems)} problem(s)", problems)
    has_ids = "identity_a" in header and "identity_b" in header
    images = _Images(base)
    img_attr: dict[int, dict[str, str]] = {}
    out: list[dict] = []
    for line, cells in body:
        read = _row(header, line, cells, ("path_a", "path_b", "same", *(c for s in sides.values() for c in s)),
                    problems)
        if read is None:
            continue
        rec, ok = read
        same = _truth(rec.get("same", ""))
        if rec.get("same") and same is None:
            problems.append(MSG_SAME.format(line=line, value=rec["same"]))
            ok = False
        a = images.add(rec.get("path_a", ""), line, problems)
        b = images.add(rec.get("path_b", ""), line, problems)
        if a is None or b is None:
            ok = False
        elif a == b:
            problems.append(MSG_SAME_IMAGE.format(line=line, path=rec["path_a"]))
            ok = False
        if not ok:
            continue
        row = {"line": line, "a": a, "b": b, "same": bool(same)}
        for g, (ca, cb) in sides.items():
            row[f"{g}_a"], row[f"{g}_b"] = rec[ca], rec[cb]
            if same and rec[ca] != rec[cb]:
                problems.append(MSG_GENUINE_GROUPS.format(line=line, g=g, a=rec[ca], b=rec[cb]))
        if has_ids and rec.get("identity_a") and rec.get("identity_b"):
            row["identity_a"], row["identity_b"] = rec["identity_a"], rec["identity_b"]
            if (rec["identity_a"] == rec["identity_b"]) != bool(same):
                problems.append(MSG_SAME_ID.format(line=line, same=rec["same"], a=rec["identity_a"],
                                                   b=rec["identity_b"]))
                continue
        else:
            # no identity: each image is its own unit (a genuine pair's two images are one unit)
            row["identity_a"] = "image:" + rec["path_a"]
            row["identity_b"] = row["identity_a"] if same else "image:" + rec["path_b"]
        clash = False
        for side, img in (("a", a), ("b", b)):
            attrs = {"identity": row[f"identity_{side}"], **{g: row[f"{g}_{side}"] for g in sides}}
            first = img_attr.setdefault(img, {**attrs, "_line": line})
            for k, v in attrs.items():
                if first[k] != v and not (k == "identity" and not has_ids):
                    problems.append(MSG_IMAGE_CLASH.format(line=line, path=rec[f"path_{side}"], col=k, v=v,
                                                           w=first[k], first=first["_line"]))
                    clash = True
        if not clash:
            out.append(row)
    imgs = _checked_images(src, problems, images, img_attr, groups, empty=not out)
    pairs = pd.DataFrame(out)
    notes = [] if has_ids else ["the pairs manifest has no identity_a/identity_b columns: intervals resample "
                                "images, not identities, and are too narrow if people repeat"]
    return _finish(PairSet(images=imgs, pairs=pairs, groups=groups, root=base, source="pairs", fingerprint=fp,
                           identity_from_path=not has_ids, notes=notes))


def _checked_images(src: Path, problems: list[str], images: _Images, attrs: dict[int, dict], groups: list[str], *,
                    empty: bool) -> pd.DataFrame:
    """Refuse the manifest with every problem found (or none usable: ``empty``); else its images table with
    each image's identity and group columns."""
    if empty and not problems:
        problems.append(MSG_NO_PAIRS)
    if problems:
        raise ManifestError(f"manifest {src} has {len(problems)} problem(s)", problems)
    imgs = pd.DataFrame(images.rows)
    for g in ("identity", *groups):
        imgs[g] = [attrs[i][g] for i in imgs["image_id"]]
    return imgs


def _from_identities(src: Path, header: list[str], body: list, groups: list[str], base: Path, fp: str, *,
                     seed: int, impostors_per_subgroup: int, cross_impostors: int,
                     max_genuine_per_identity: int) -> PairSet:
    problems: list[str] = []
    for g in groups:
        if g not in header:
            problems.append(MSG_GROUP_COLUMN.format(g=g, cols=", ".join(header)))
    if problems:
        raise ManifestError(f"manifest {src} has {len(problems)} problem(s)", problems)
    images = _Images(base)
    attrs: dict[int, dict[str, str]] = {}
    first: dict[str, tuple[int, dict[str, str]]] = {}
    for line, cells in body:
        read = _row(header, line, cells, ("path", "identity", *groups), problems)
        if read is None or not read[1]:
            continue
        rec = read[0]
        n_before = len(images.rows)
        i = images.add(rec["path"], line, problems)
        if i is None:
            continue
        if len(images.rows) == n_before:
            problems.append(f"line {line}: {rec['path']!r} is listed twice")
            continue
        vals = {g: rec[g] for g in groups}
        ident = rec["identity"]
        if ident in first:
            fl, fv = first[ident]
            for g in groups:
                if fv[g] != vals[g]:
                    problems.append(MSG_ID_GROUPS.format(line=line, ident=ident, g=g, v=vals[g], w=fv[g], first=fl))
        else:
            first[ident] = (line, vals)
        attrs[i] = {"identity": ident, **vals}
    imgs = _checked_images(src, problems, images, attrs, groups, empty=not images.rows)
    rng = np.random.default_rng(seed)
    ids = imgs["identity"].to_numpy().astype(str)
    sub = (join_columns(imgs, groups).to_numpy() if groups
           else np.full(len(imgs), "all", dtype=object))
    pairs: list[tuple[int, int]] = []
    # genuine: every pair of an identity's images, a seeded sample when there are too many
    for ident in dict.fromkeys(ids):
        members = np.flatnonzero(ids == ident)
        combos = list(combinations(members.tolist(), 2))
        if len(combos) > max_genuine_per_identity:
            pick = np.sort(rng.choice(len(combos), size=max_genuine_per_identity, replace=False))
            combos = [combos[k] for k in pick]
        pairs.extend(combos)
    if not pairs:
        raise ManifestError(f"manifest {src}: {MSG_NO_GENUINE}")
    # same-subgroup impostors, per subgroup
    for s in dict.fromkeys(sub):
        members = np.flatnonzero(sub == s)
        pairs.extend(_sample_pairs(members, ids, impostors_per_subgroup, rng))
    # cross-group impostors: one pool, the two sides in different subgroups
    if len(set(sub)) > 1 and cross_impostors > 0:
        pairs.extend(_sample_pairs(np.arange(len(sub)), sub, cross_impostors, rng))
    pdf = pd.DataFrame(pairs, columns=["a", "b"])
    pdf["line"] = 0
    pdf["same"] = ids[pdf["a"]] == ids[pdf["b"]]
    pdf["identity_a"], pdf["identity_b"] = ids[pdf["a"]], ids[pdf["b"]]
    for g in groups:
        col = imgs[g].to_numpy().astype(str)
        pdf[f"{g}_a"], pdf[f"{g}_b"] = col[pdf["a"]], col[pdf["b"]]
    return _finish(PairSet(images=imgs, pairs=pdf, groups=groups, root=base, source="identities", fingerprint=fp))


def _sample_pairs(pool: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``n`` distinct unordered pairs of images of ``pool`` whose ``labels`` differ (all when fewer
    exist): identities for same-subgroup impostors, subgroups for cross-group impostors.

    When there are few possible pairs they are enumerated and a seeded sample drawn without replacement;
    otherwise pairs are drawn at random and repeats rejected.
    """
    m = len(pool)
    possible = m * (m - 1) // 2 - sum(math.comb(int(c), 2) for c in np.unique(labels[pool], return_counts=True)[1])
    if possible <= 0:
        return []
    if possible <= max(n, 1) * 2:  # enumerate and sample without replacement
        allp = [(i, j) for i, j in combinations(pool.tolist(), 2) if labels[i] != labels[j]]
        if len(allp) > n:
            pick = np.sort(rng.choice(len(allp), size=n, replace=False))
            allp = [allp[k] for k in pick]
        return allp
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < n:
        for x, y in rng.integers(0, m, size=(2 * (n - len(out)) + 16, 2)):
            i, j = int(pool[x]), int(pool[y])
            if labels[i] == labels[j]:  # also i == j
                continue
            key = (min(i, j), max(i, j))
            if key in seen:
                continue
            seen.add(key)
            out.append(key)
            if len(out) == n:
                break
    return out


def _finish(ps: PairSet) -> PairSet:
    """Add ``pair_id``, ``subgroup`` and ``kind`` to the pairs."""
    p = ps.pairs.reset_index(drop=True)
    p.insert(0, "pair_id", np.arange(len(p)))
    if ps.groups:
        a = p[[f"{g}_a" for g in ps.groups]].astype(str)
        b = p[[f"{g}_b" for g in ps.groups]].astype(str)
        same_group = (a.to_numpy() == b.to_numpy()).all(axis=1)
        key = join_columns(a, list(a.columns))
    else:
        same_group = np.ones(len(p), dtype=bool)
        key = pd.Series(["all"] * len(p))
    p["subgroup"] = np.where(same_group, key, CROSS)
    p["kind"] = np.where(p["same"], "genuine", np.where(same_group, "impostor", "cross"))
    ps.pairs = p
    return ps
