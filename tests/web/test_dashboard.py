"""The dashboard's result sections (``GET /audits/<run_id>/results``) against report.html of the same run.

Oracles: the fragment is drawn by the report's own macros, so every chart of a model in report.html (its
exact SVG) is in the fragment and the fragment has no other; the evidence tables are the report's, byte
for byte; the per-group intervals are metrics.json's, formatted by ``formatting.py``. Labels and group
values a user controls (here an XSS payload) show as text. The JavaScript number helpers (static/common.js)
give the strings of ``formatting.py`` for the same numbers (run by Node.js, skipped without it).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape

from biasscope.audit import AuditConfig, load_manifest, run_audit
from biasscope.formatting import fmt_interval, fmt_number, fmt_rate
from tests.audit.synth import make_adapter, write_dataset

from .test_audits import _fixed_batch_size, slow_adapter, wait_audit  # noqa: F401  (fixture)

LABEL = "<script>alert('nurse')</script>"
GROUP = '"><img src=x onerror=alert(1)>'
CONCEPTS = {"doctor": ["stethoscope", "lab coat"], LABEL: ["scrubs"]}
STATS = {"n_boot": 200, "n_perm": 200, "min_group_size": 2}
COMMON_JS = Path(__file__).parents[2] / "src" / "biasscope" / "web" / "static" / "common.js"


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    """A data root whose manifest has a label and a group value that are markup, and one finished run."""
    root = tmp_path_factory.mktemp("dashroot")
    src = write_dataset(root / "synth", n_per_cell=6, seed=4)
    with src.open(newline="") as f:
        rows = list(csv.reader(f))
    for r in rows[1:]:
        r[1] = LABEL if r[1] == "nurse" else r[1]
        r[2] = GROUP if r[2] == "female" else r[2]
    with src.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    cfg = AuditConfig(groups=["gender"], methods=["gradcam"], concepts=CONCEPTS)
    run_audit(load_manifest(src, groups=["gender"]), [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")],
              root / "runs" / "hostile", cfg, metrics_options=STATS | {"stereotypical": ["doctor:male"]})
    run_audit(load_manifest(src, groups=["gender"]), [make_adapter(2.0, "biased")], root / "runs" / "unfinished",
              AuditConfig(groups=["gender"], methods=[], concepts=CONCEPTS), finalize=False)
    return root


@pytest.fixture
def dash_app(make_app, hostile_root):
    return make_app(DATA_ROOT=str(hostile_root), RUNS_DIR=str(hostile_root / "runs"),
                    EXTRA_MODELS={"slow": slow_adapter})


def _svgs(html: str) -> list[str]:
    return re.findall(r"<svg .*?</svg>", html, flags=re.S)


def _tables(html: str) -> list[str]:
    return re.findall(r"<table[ >].*?</table>", html, flags=re.S)


class _Tags(HTMLParser):
    """Every tag with its attributes, and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row_html, flags=re.S)]


def test_fragment_has_the_reports_charts_and_tables(dash_app, hostile_root) -> None:
    run = hostile_root / "runs" / "hostile"
    report = (run / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    resp = dash_app.test_client().get("/audits/hostile/results")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    frag = resp.get_data(as_text=True)

    # charts: the report's, exactly (the model comparison's first)
    rep_svgs, frag_svgs = _svgs(report), _svgs(frag)
    assert frag_svgs == rep_svgs and len(rep_svgs) >= 12
    assert [re.search(r'aria-label="([^"]+)"', s).group(1) for s in frag_svgs[:2]] == [
        "biased: accuracy by gender", "fair: accuracy by gender"]
    for model in ("biased", "fair"):  # per grouping: accuracy, mean p(true), share / area charts; a bias score
        block = frag.split(f'data-model="{model}"')[1]
        titles = re.findall(r'<svg [^>]*aria-label="([^"]+)"', block.split("</section>")[0])
        assert titles[:2] == ["Accuracy by gender (95% CI)", "Mean probability of the true label by gender (95% CI)"]
        assert any(t.startswith("Share / area, region hair (gradcam)") for t in titles)
        assert titles[-1] == "Stereotypical minus atypical p(true) (gender)"
    # the bars are metrics.json's: the accuracy chart's value labels are its by-group accuracies
    acc_chart = next(s for s in frag_svgs if 'aria-label="Accuracy by gender (95% CI)"' in s)
    by_group = metrics["models"]["biased"]["groupings"]["gender"]["by_group"]
    shown = re.findall(r'<text x="[\d.]+" y="\d+" font-size="11">([^<]+)</text>', acc_chart)
    assert shown == [fmt_number(v["accuracy"], True) for v in by_group.values()]

    # tables: every table of the report is in the fragment, byte for byte, but its per-group tables: the
    # dashboard's add the intervals
    rep_tables = [t for t in _tables(report)
                  if not t.startswith("<table><tr><th>group</th><th>n</th><th>accuracy</th><th>top-1</th>")]
    assert len(rep_tables) >= 8 and "<th>model</th>" in rep_tables[0]
    for t in rep_tables:
        assert frag.count(t) == report.count(t), t[:200]
    per_group = [t for t in _tables(frag) if t.startswith("<table class='per-group'>")]
    assert len(per_group) == 2
    for model, t in zip(("biased", "fair"), per_group):
        entry = metrics["models"][model]["groupings"]["gender"]
        rows = [_cells(r) for r in re.findall(r"<tr><td>.*?</tr>", t, flags=re.S)]
        assert [r[0] for r in rows] == [str(escape(g)) for g in entry["by_group"]]
        for r, (g, v) in zip(rows, entry["by_group"].items()):
            ci = entry["by_group_ci"][g]
            assert r[1:] == [str(v["n"]), fmt_number(v["accuracy"], True), fmt_interval(ci["accuracy"], True),
                             fmt_number(v["accuracy_top1"], True), fmt_number(v["accuracy_topk"], True),
                             fmt_number(v["mean_p_true"]), fmt_interval(ci["mean_p_true"])]

    # the answer first, as in metrics.json; an empty grid per model for the script's telling images
    p = _Tags()
    p.feed(frag)
    for model, mm in metrics["models"].items():
        block = frag.split(f'data-model="{model}"')[1]
        items = re.findall(r"<li>(.*?)</li>", block.split("</ul>")[0])
        assert items == [str(escape(a)) for a in mm["answer"]]
    assert [a["data-model"] for t, a in p.tags if t == "div" and "telling" in a.get("class", "")] == ["biased", "fair"]

    # markup in labels and group values is text: no script, no image, no handler; the words are there
    assert not [t for t, _ in p.tags if t in ("script", "img", "style", "iframe")]
    assert not [a for _, a in p.tags if any(k.startswith("on") for k in a)]
    assert LABEL not in frag and GROUP not in frag
    text = "".join(p.text)
    assert LABEL in text and GROUP in text
    assert str(escape(LABEL)) in frag and str(escape(GROUP)) in frag


def test_fragment_status_codes(dash_app, make_app, hostile_root, tmp_path) -> None:
    c = dash_app.test_client()
    unknown = c.get("/audits/no-such-run/results")
    assert unknown.status_code == 404 and "no audit run" in unknown.get_data(as_text=True)
    bad = c.get("/audits/..%2Fetc/results")
    assert bad.status_code == 404
    # a run with no scored image yet, stopped: nothing to show
    empty = hostile_root / "runs" / "empty"
    shutil.copytree(hostile_root / "runs" / "unfinished", empty)
    with sqlite3.connect(empty / "audit.sqlite") as conn:
        conn.execute("DELETE FROM results")
        conn.execute("UPDATE meta SET value = '\"cancelled\"' WHERE key = 'status'")
    stopped = c.get("/audits/empty/results")
    assert stopped.status_code == 409
    msg = stopped.get_data(as_text=True)
    assert "has not finished" in msg and "0% of its images scored" in msg and "before scoring any image" in msg
    assert 'id="error-message"' in msg  # where the page's script reads the message
    # while an audit runs in this server
    start = {"manifest": "synth/manifest.csv", "models": ["slow"], "groups": ["gender"], "methods": [],
             "name": "running", "batch_size": 2,
             "concepts": f"doctor = stethoscope, lab coat\n{LABEL} = scrubs"} | STATS
    assert c.post("/api/audits", json=start).status_code == 202
    running = c.get("/audits/running/results")
    assert running.status_code == 409 and "has not" in running.get_data(as_text=True)
    c.post("/api/audits/running/cancel")
    wait_audit(c, "running", until=lambda r: r["status"] in ("cancelled", "done", "error"))
    # audits disabled: the same 409 as every audit route
    off = make_app().test_client().get("/audits/hostile/results")
    assert off.status_code == 409 and "--data-root" in off.get_data(as_text=True)


def _js_format(values: list[float | None]) -> list[list[str]]:
    script = ("const fs=require('fs'),vm=require('vm');const vals=JSON.parse(fs.readFileSync(0,'utf8'));"
              "const ctx=vm.createContext({vals});process.stdout.write(vm.runInContext("
              "fs.readFileSync(process.argv[1],'utf8')+"
              "'\\n;JSON.stringify(vals.map(v=>[num(v),pct(v),rate(v),interval([v,null]),interval([v,v],true)]))',ctx));")
    out = subprocess.run([shutil.which("node") or "node", "-e", script, str(COMMON_JS)], input=json.dumps(values),
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_common_js_numbers_follow_formatting_py() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (it runs static/common.js outside a browser)")
    rng = np.random.default_rng(0)
    values: list[float | None] = [None, 0.0, -0.0, 1.0, -1.0, 0.5, 0.0005, 0.0004999, 0.000499, 5e-4 * (1 + 1e-15),
                                  1e-2, 0.00999, 2.4e-4, 1e-12, 123456.789, -3.25e-7]
    values += [k / 2 ** n for n in (3, 4, 5, 6, 7, 8, 10) for k in range(1, 2 ** n, 3)]  # exact binary ties
    values += [float(s * m * 10.0 ** e) for s, m, e in zip(rng.choice([-1, 1], 400), rng.random(400),
                                                            rng.integers(-9, 5, 400))]
    values += [float(x) for x in rng.random(200).astype(np.float32)]  # probabilities as a model gives them
    got = _js_format(values)
    for v, row in zip(values, got, strict=True):
        want = [fmt_number(v), fmt_number(v, True), fmt_rate(v), fmt_interval([v, None]), fmt_interval([v, v], True)]
        assert row == want, (v, row, want)


def test_face_sections_are_shared_sheets_linked_on_the_page_and_inlined_in_the_report(hostile_root, tmp_path) -> None:
    """The face quality table is the report's, byte for byte; the page links the sheet through the API (its
    CSP refuses inline styles and needs no inlined image) where the report inlines the same file."""
    from PIL import Image

    from biasscope.audit import per_image_frame
    from biasscope.audit.face_audit import FACE_DIR, quality_flags
    from biasscope.audit.report import render_report
    from biasscope.formatting import png_data_uri
    from biasscope.web.dashboard import render_results

    run = tmp_path / "run"
    shutil.copytree(hostile_root / "runs" / "hostile", run)
    (run / FACE_DIR).mkdir(exist_ok=True)
    sheet = run / FACE_DIR / "m0_gradcam_gender_group.png"
    Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(sheet)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    flags = quality_flags()
    metrics["models"]["biased"]["faces"] = {
        "quality": {"gender": {g: {"n": 6, "n_with_face": 5, "flags": {f: {"count": i, "rate": i / 6}
                                                                          for i, f in enumerate(flags)}}
                               for g in ("male", GROUP)}},
        "heatmaps": {"gradcam": {"groupings": {"gender": {"group": {"file": f"{FACE_DIR}/{sheet.name}"}}}}}}
    frag = render_results(run, metrics, run_id="run")
    report = render_report(run, metrics, per_image_frame(run))
    quality = [t for t in _tables(report) if t.startswith("<table><tr><th>gender</th><th>n</th><th>with face</th>")]
    assert len(quality) == 1 and frag.count(quality[0]) == 1 and str(escape(GROUP)) in quality[0]
    assert f"<td>{len(flags) - 1} ({100 * (len(flags) - 1) / 6:.0f}%)</td>" in quality[0]
    figure = "<img{} alt='aligned gradcam heatmaps by gender' src='{}'>"
    assert figure.format(" class='face-sheet'", f"/api/audits/run/faces/{sheet.name}") in frag
    assert figure.format(" style='width:auto;max-width:100%'", png_data_uri(sheet)) in report
    assert "style=" not in frag


@pytest.mark.parametrize("keep", [None, 10])
def test_a_stopped_run_shows_its_results_so_far_and_writes_nothing(dash_app, hostile_root, tmp_path, monkeypatch,
                                                                   keep: int | None) -> None:
    """A run that stopped (``keep`` results left, status cancelled) or that scored everything but never wrote
    its files: the fragment shows the metrics over what is stored, under a banner saying so, equal to what
    finalize_run writes for the same store; the run folder is left as it was; a second view is not recomputed."""
    from biasscope.audit import finalize_run, run_info
    from biasscope.web import dashboard

    name = f"stopped-{keep}"
    run = hostile_root / "runs" / name
    shutil.copytree(hostile_root / "runs" / "unfinished", run)
    if keep is not None:
        with sqlite3.connect(run / "audit.sqlite") as conn:
            conn.execute("DELETE FROM results WHERE image_id >= ?", (keep,))
            conn.execute("UPDATE meta SET value = '\"cancelled\"' WHERE key = 'status'")
    before = sorted(p.name for p in run.iterdir())
    calls: list[Path] = []
    real = dashboard.run_results
    monkeypatch.setattr(dashboard, "run_results", lambda d, **kw: calls.append(d) or real(d, **kw))
    c = dash_app.test_client()
    resp = c.get(f"/audits/{name}/results")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    frag = resp.get_data(as_text=True)
    if keep is None:
        assert "Computed from the run&#39;s store" in frag and "audit-report" in frag
    else:
        assert "Results so far" in frag and f"with {keep} of " in frag and "status cancelled" in frag
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written
    # the same numbers finalize_run writes for this store (on a copy)
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    written = finalize_run(twin)
    assert written["models"]["biased"]["n_images"] == (keep if keep is not None else run_info(run)["n_images"])
    got = _svgs(frag)  # the report of a one-model run also draws the model comparison; the page does not
    want = [v for v in _svgs((twin / "report.html").read_text(encoding="utf-8")) if 'aria-label="biased: ' not in v]
    assert got == want and len(got) >= 4
    assert c.get(f"/audits/{name}/results").get_data(as_text=True) == frag and len(calls) == 1
