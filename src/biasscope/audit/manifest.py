"""The audit manifest: a CSV of images with labels, attributes and named regions.

Columns: ``path`` (relative to the CSV's folder), ``label`` (ground truth: a model class or a
concept), any attribute columns (``gender``, ``age``, ...; the caller says which are groups), and
optional ``region:NAME`` columns holding a box ``x0,y0,x1,y1`` in original-image pixels or a mask
PNG path (relative to the CSV). Every problem is collected and reported with its CSV line number in
one :class:`~biasscope.errors.ManifestError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ManifestError
from ..regions.masks import RegionSpec, parse_region

__all__ = [
    "IMAGE_SUFFIXES",
    "REGION_PREFIX",
    "Manifest",
    "ManifestRow",
    "load_manifest",
    "manifest_from_folder",
    "read_manifest_text",
    "resolves_inside",
    "write_manifest",
]

REGION_PREFIX = "region:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

MSG_INVALID = "manifest {path} has {n} problem(s)"
MSG_NO_ROWS = "the manifest has no image rows"
MSG_MISSING_COLUMN = "missing required column {col!r} (columns: {cols})"
MSG_UNKNOWN_GROUP = "unknown group column {col!r}; attribute columns are: {cols}"
MSG_EMPTY_CELL = "line {line}: empty {col!r}"
MSG_ESCAPES = "line {line}: path {path!r} is outside the manifest's root {root}"
MSG_NO_FILE = "line {line}: image {path!r} not found"
MSG_DUPLICATE = "line {line}: {path!r} is a duplicate of line {first}"
MSG_BAD_REGION = "line {line}: region {name!r}: {why}"
MSG_REGION_ESCAPES = "line {line}: region {name!r} mask {path!r} is outside the manifest's root {root}"
MSG_NO_MASK = "line {line}: region {name!r} mask {path!r} not found"
MSG_EMPTY_REGION_NAME = "column {col!r}: a region column needs a name, e.g. region:tool"
MSG_DUP_COLUMN = "column {col!r} appears more than once"
MSG_ROW_LENGTH = "line {line}: has {n} cells but the header has {m}"
MSG_NUL = "line {line}: {what} {path!r} contains a NUL character, which no file name can hold"
MSG_UNREADABLE_PATH = "line {line}: {what} {path!r} cannot be used: {why}"


@dataclass(frozen=True)
class ManifestRow:
    """One image of the audit."""

    image_id: int  # 0-based position among the manifest's rows
    line: int  # line number in the CSV (the header is line 1)
    path: str  # as written in the manifest
    file: Path  # resolved absolute path
    label: str
    attributes: dict[str, str] = field(default_factory=dict)
    regions: dict[str, RegionSpec] = field(default_factory=dict)


@dataclass
class Manifest:
    """A validated manifest."""

    path: Path | None
    root: Path
    rows: list[ManifestRow]
    attribute_columns: list[str]
    region_names: list[str]
    groups: list[str]
    fingerprint: str

    @property
    def labels(self) -> list[str]:
        """Distinct labels in first-seen order."""
        return list(dict.fromkeys(r.label for r in self.rows))

    def group_values(self, column: str) -> list[str]:
        return sorted({r.attributes[column] for r in self.rows})

    def __len__(self) -> int:
        return len(self.rows)


def resolves_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, resolved (links followed), lies in the resolved folder ``root``."""
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be looked up at all ("NUL", or the OS's reason, e.g. a name over 255 bytes)."""
    if "\x00" in str(path):
        return "NUL"
    try:
        path.resolve()
        path.is_file()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def read_manifest_text(source: str | Path, text: str | None = None) -> tuple[str, bytes]:
    """A manifest's CSV text and its bytes (for fingerprints): ``text`` when given, else the file at
    ``source`` read as UTF-8 (a BOM is dropped); a clear error when it is missing or not text."""
    src = Path(source)
    if text is not None:
        return text, text.encode("utf-8")
    if not src.is_file():
        raise ManifestError(f"manifest {src} not found")
    raw = src.read_bytes()
    try:
        return raw.decode("utf-8-sig"), raw
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {src} is not UTF-8 text") from None


def load_manifest(
    source: str | Path,
    *,
    groups: Sequence[str] = (),
    root: str | Path | None = None,
    text: str | None = None,
) -> Manifest:
    """Read and validate a manifest CSV; raise :class:`ManifestError` listing every problem.

    ``root`` (default: the CSV's folder) bounds every image and mask path: relative paths are
    resolved against it and anything that resolves outside it (``..``, absolute paths, symlinks)
    is refused. ``text`` gives the CSV content directly (``source`` then only names it).
    """
    src = Path(source)
    text, raw = read_manifest_text(src, text)
    base = Path(root) if root is not None else src.resolve().parent
    base = base.resolve()
    problems: list[str] = []
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(MSG_INVALID.format(path=src, n=1), [MSG_NO_ROWS]) from None
    seen_cols: set[str] = set()
    for col in header:
        if col in seen_cols:
            problems.append(MSG_DUP_COLUMN.format(col=col))
        seen_cols.add(col)
        if col.startswith(REGION_PREFIX) and not col[len(REGION_PREFIX):].strip():
            problems.append(MSG_EMPTY_REGION_NAME.format(col=col))
    for req in ("path", "label"):
        if req not in header:
            problems.append(MSG_MISSING_COLUMN.format(col=req, cols=", ".join(header)))
    attr_cols = [c for c in header if c not in ("path", "label") and not c.startswith(REGION_PREFIX) and c]
    region_cols = [c for c in header if c.startswith(REGION_PREFIX) and c[len(REGION_PREFIX):].strip()]
    for g in groups:
        if g not in attr_cols:
            problems.append(MSG_UNKNOWN_GROUP.format(col=g, cols=", ".join(attr_cols) or "(none)"))
    if problems:
        raise ManifestError(MSG_INVALID.format(path=src, n=len(problems)), problems)

    rows: list[ManifestRow] = []
    first_line: dict[Path, int] = {}
    for line_no, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            problems.append(MSG_ROW_LENGTH.format(line=line_no, n=len(cells), m=len(header)))
            continue
        rec = {h: c.strip() for h, c in zip(header, cells)}
        ok = True
        for col in ("path", "label", *groups):
            if not rec.get(col):
                problems.append(MSG_EMPTY_CELL.format(line=line_no, col=col))
                ok = False
        rel = rec.get("path", "")
        file = (base / rel) if rel else base
        why = _path_problem(file) if rel else None
        if why is not None:
            problems.append(MSG_NUL.format(line=line_no, what="path", path=rel) if why == "NUL" else
                            MSG_UNREADABLE_PATH.format(line=line_no, what="path", path=rel, why=why))
            ok = False
        elif rel:
            if not resolves_inside(file, base):
                problems.append(MSG_ESCAPES.format(line=line_no, path=rel, root=base))
                ok = False
            elif not file.is_file():
                problems.append(MSG_NO_FILE.format(line=line_no, path=rel))
                ok = False
            else:
                key = file.resolve()
                if key in first_line:
                    problems.append(MSG_DUPLICATE.format(line=line_no, path=rel, first=first_line[key]))
                    ok = False
                else:
                    first_line[key] = line_no
        regions: dict[str, RegionSpec] = {}
        for col in region_cols:
            val = rec.get(col, "")
            if not val:
                continue
            name = col[len(REGION_PREFIX):].strip()
            try:
                spec = parse_region(name, val, base)
            except ValueError as exc:
                problems.append(MSG_BAD_REGION.format(line=line_no, name=name, why=exc))
                ok = False
                continue
            why = _path_problem(spec.path) if spec.path is not None else None
            if why is not None:
                problems.append(MSG_NUL.format(line=line_no, what=f"region {name!r} mask", path=val) if why == "NUL"
                                else MSG_UNREADABLE_PATH.format(line=line_no, what=f"region {name!r} mask", path=val,
                                                                why=why))
                ok = False
                continue
            if spec.path is not None:
                if not resolves_inside(spec.path, base):
                    problems.append(MSG_REGION_ESCAPES.format(line=line_no, name=name, path=val, root=base))
                    ok = False
                    continue
                if not spec.path.is_file():
                    problems.append(MSG_NO_MASK.format(line=line_no, name=name, path=val))
                    ok = False
                    continue
                spec = RegionSpec(name=name, path=spec.path.resolve())
            regions[name] = spec
        if ok:
            rows.append(
                ManifestRow(
                    image_id=len(rows),
                    line=line_no,
                    path=rel,
                    file=file.resolve(),
                    label=rec["label"],
                    attributes={c: rec.get(c, "") for c in attr_cols},
                    regions=regions,
                )
            )
    if not rows and not problems:
        problems.append(MSG_NO_ROWS)
    if problems:
        raise ManifestError(MSG_INVALID.format(path=src, n=len(problems)), problems)
    return Manifest(
        path=src if src.is_file() else None,
        root=base,
        rows=rows,
        attribute_columns=attr_cols,
        region_names=[c[len(REGION_PREFIX):].strip() for c in region_cols],
        groups=list(groups),
        fingerprint=hashlib.sha256(raw).hexdigest(),
    )


def write_manifest(
    rows: Sequence[dict[str, str]], out_csv: str | Path, *, columns: Sequence[str] | None = None
) -> Path:
    """Write manifest rows (dicts with ``path``, ``label``, attributes, ``region:NAME``) as CSV."""
    out = Path(out_csv)
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    for req in ("label", "path"):
        if req in cols:
            cols.remove(req)
        cols.insert(0, req)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return out


def manifest_from_folder(
    root: str | Path,
    out_csv: str | Path | None = None,
    *,
    group_column: str = "group",
) -> Path:
    """Build a manifest from the layout ``root/<label>/<group>/image.jpg``; returns the CSV path.

    The CSV is written to ``out_csv`` (default ``root/manifest.csv``) with paths relative to its
    folder, which must contain ``root``. Image files at any other depth are reported as problems.
    """
    base = Path(root).resolve()
    if not base.is_dir():
        raise ManifestError(f"folder {root} not found")
    out = Path(out_csv) if out_csv else base / "manifest.csv"
    out_dir = out.resolve().parent
    if not resolves_inside(base, out_dir):
        raise ManifestError(f"the manifest must be written in {base} or a folder above it, not {out_dir}")
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    for f in sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        parts = f.relative_to(base).parts
        if len(parts) != 3:
            problems.append(f"{f.relative_to(base).as_posix()}: expected <label>/<{group_column}>/<image>")
            continue
        rows.append({"path": f.resolve().relative_to(out_dir).as_posix(), "label": parts[0], group_column: parts[1]})
    if problems:
        raise ManifestError(f"folder {root} does not follow the layout <label>/<{group_column}>/<image>", problems)
    if not rows:
        raise ManifestError(f"no images found under {root}")
    return write_manifest(rows, out, columns=["path", "label", group_column])
