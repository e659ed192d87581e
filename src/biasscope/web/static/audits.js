/* biasscope audits: list, new-audit form, dashboard and drill-down, over the JSON API (no CDN). */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function svg(tag, attrs = {}, text = null) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}
const isNum = (x) => typeof x === "number" && Number.isFinite(x);
function num(x, pct = false) {
  // 3 decimals (percentages: 1); scientific notation where that would read 0 (as the report and CLI)
  if (!isNum(x)) return "n/a";
  if (pct) return x === 0 || Math.abs(100 * x) >= 0.05 ? `${(100 * x).toFixed(1)}%` : `${(100 * x).toExponential(1)}%`;
  return x === 0 || Math.abs(x) >= 0.0005 ? x.toFixed(3) : x.toExponential(2);
}
function ci(c, pct = false) { return c && isNum(c[0]) ? `[${num(c[0], pct)}, ${num(c[1], pct)}]` : ""; }

async function api(path, opts = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...opts });
  let body = null;
  if ((resp.headers.get("content-type") || "").includes("application/json")) body = await resp.json();
  if (!resp.ok) {
    const err = new Error(body && body.error ? body.error.message : `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}
const post = (path, data) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data || {}) });
function showError(msg) {
  const box = $("#error");
  box.textContent = "";
  box.append(el("strong", { text: "Something went wrong: " }), msg);
  box.classList.remove("hidden");
}
function clearError() { $("#error").classList.add("hidden"); }
function table(headers, rows) {
  return el("table", { class: "grid" }, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c instanceof Node ? c : String(c)))))));
}

/* ------------------------------------------------------------------ list + form */
const L = { manifest: null, poll: null };

// status: queued | running | done | error | cancelled (the API's one vocabulary); an error says why
function statusCell(r) {
  const err = r.error || (r.job && r.job.error);
  return el("span", { class: `status ${r.status}`, text: r.status, title: err || null });
}

async function loadRuns() {
  const data = await api("/api/audits");
  if (!data.enabled) return;
  $("#data-root").textContent = data.data_root;
  const body = $("#runs tbody");
  body.textContent = "";
  $("#no-runs").classList.toggle("hidden", data.runs.length > 0);
  let active = false;
  for (const r of data.runs) {
    const frac = r.job && r.job.progress && isNum(r.job.progress.fraction) ? r.job.progress.fraction : r.progress || 0;
    if (["queued", "running"].includes(r.status)) active = true;
    const actions = el("span", {});
    if (["queued", "running"].includes(r.status)) {
      actions.append(el("button", { class: "secondary small", type: "button", text: "Cancel", "data-action": "cancel",
        onclick: () => post(`/api/audits/${r.id}/cancel`).then(loadRuns).catch((e) => showError(e.message)) }));
    } else if (r.resumable) {
      actions.append(el("button", { class: "secondary small", type: "button", text: "Resume", "data-action": "resume",
        onclick: () => post(`/api/audits/${r.id}/resume`).then(loadRuns).catch((e) => showError(e.message)) }));
    }
    const bar = el("span", { class: "mini-bar" }, el("span", {}));
    bar.firstChild.style.width = `${Math.round(100 * frac)}%`;
    body.append(el("tr", { "data-run": r.id },
      el("td", {}, el("a", { href: `/audits/${encodeURIComponent(r.id)}`, text: r.name || r.id })),
      el("td", {}, statusCell(r)), el("td", {}, bar, `${Math.round(100 * frac)}%`),
      el("td", { text: r.n_images ?? "" }), el("td", { text: (r.models || []).join(", ") }),
      el("td", { text: (r.created || "").replace("T", " ").replace("+00:00", " UTC") }), el("td", {}, actions)));
  }
  clearTimeout(L.poll);
  if (active) L.poll = setTimeout(() => loadRuns().catch((e) => showError(e.message)), 1000);
}

async function browse(path) {
  const data = await api(`/api/files?path=${encodeURIComponent(path || "")}`);
  const box = $("#browser");
  box.textContent = "";
  box.append(el("div", { class: "here", text: `/${data.path}` }));
  if (data.path) {
    const up = data.path.split("/").slice(0, -1).join("/");
    box.append(el("button", { type: "button", text: "↑ ..", onclick: () => browse(up) }));
  }
  for (const d of data.folders) box.append(el("button", { type: "button", text: `📁 ${d.name}/`, onclick: () => browse(d.path) }));
  for (const f of data.manifests) {
    box.append(el("button", { type: "button", class: "csv", "data-path": f.path, text: `📄 ${f.name}`,
      onclick: () => { $("#manifest").value = f.path; inspect(); } }));
  }
}

function checkboxes(box, cls, items, checked = () => false) {
  box.textContent = "";
  for (const it of items) {
    box.append(el("label", { class: "check" }, el("input", { type: "checkbox", class: cls, value: it.value, checked: checked(it) }),
      " ", it.label));
  }
}

async function inspect() {
  clearError();
  const rel = $("#manifest").value.trim();
  if (!rel) return;
  const info = await api("/api/manifests/inspect", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ manifest: rel }) }).catch((e) => { showError(e.message); return null; });
  if (!info) return;
  if (!info.valid) {
    showError(`${info.message}: ${info.problems.slice(0, 5).join("; ")}`);
    $("#start-btn").disabled = true;
    return;
  }
  L.manifest = info;
  $("#manifest-info").textContent = `${info.n_images} images · labels: ${info.labels.join(", ")}` +
    (info.region_names.length ? ` · regions: ${info.region_names.join(", ")}` : "");
  checkboxes($("#groups"), "group-check", info.attribute_columns.map((c) => ({ value: c, label: `${c} (${info.values[c].join(", ")})` })),
    (it) => info.attribute_columns.length === 1 || it.value === info.attribute_columns[0]);
  $("#start-btn").disabled = false;
}

async function initForm() {
  const [models, methods] = await Promise.all([api("/api/models"), api("/api/explainers")]);
  checkboxes($("#models"), "model-check", models.models.filter((m) => m.ready).map((m) => ({ value: m.name, label: m.name })),
    (it) => it.value === models.default);
  checkboxes($("#methods"), "method-check", methods.explainers.map((m) => ({ value: m.name, label: m.label + (m.slow ? " (slow)" : "") })),
    (it) => it.value === "gradcam");
  $("#face-parts").addEventListener("change", (ev) => {
    for (const f of document.querySelectorAll(".flag-check")) { f.disabled = !ev.target.checked; if (!ev.target.checked) f.checked = false; }
  });
  $("#inspect-btn").addEventListener("click", inspect);
  $("#manifest").addEventListener("keydown", (ev) => { if (ev.key === "Enter") inspect(); });
  $("#start-btn").addEventListener("click", start);
  await browse("");
}

const checked = (cls) => [...document.querySelectorAll(`.${cls}:checked`)].map((e) => e.value);

async function start() {
  clearError();
  const body = {
    manifest: $("#manifest").value.trim(), models: checked("model-check"), groups: checked("group-check"),
    methods: checked("method-check"), concepts: $("#concepts").value, removal: $("#removal").value,
    stereotypical: $("#stereotypical").value, face_parts: $("#face-parts").checked, exclude_flags: checked("flag-check"),
    name: $("#run-name").value.trim(), n_boot: $("#n-boot").value, n_perm: $("#n-perm").value,
    min_group_size: $("#min-group").value, faithfulness: $("#faithfulness").checked,
    min_effect: Object.fromEntries([...document.querySelectorAll(".min-effect")].map((e) => [e.dataset.kind, e.value])),
  };
  $("#start-btn").disabled = true;
  try {
    const r = await post("/api/audits", body);
    window.location.href = r.url;
  } catch (e) {
    showError(e.message);
    $("#start-btn").disabled = false;
  }
}

/* ------------------------------------------------------------------ dashboard */
const D = { run: null, poll: null, metrics: null, jobPoll: null };

function bars(title, items, { pct = true, vmin = 0, vmax = 1 } = {}) {
  // items: [name, value, lo, hi]
  const width = 560, left = 170, rowH = 24, height = 30 + rowH * items.length + 16;
  const span = (vmax - vmin) || 1;
  const x = (v) => left + (Math.min(Math.max(v, vmin), vmax) - vmin) / span * (width - left - 70);
  const s = svg("svg", { width, height, class: "chart", role: "img", "aria-label": title });
  s.append(svg("text", { x: 4, y: 16, "font-size": 13, "font-weight": 600 }, title));
  const zero = vmin < 0 && vmax > 0 ? x(0) : x(vmin);
  s.append(svg("line", { x1: zero, y1: 22, x2: zero, y2: height - 14, stroke: "#999" }));
  items.forEach(([name, v, lo, hi], i) => {
    const y = 26 + i * rowH;
    s.append(svg("text", { x: left - 6, y: y + 14, "font-size": 12, "text-anchor": "end" }, String(name).slice(0, 28)));
    if (!isNum(v)) { s.append(svg("text", { x: left + 4, y: y + 14, "font-size": 11, fill: "#888" }, "n/a")); return; }
    const [a, b] = [zero, x(v)].sort((p, q) => p - q);
    s.append(svg("rect", { x: a, y: y + 3, width: Math.max(b - a, 1), height: rowH - 8, fill: "#3b6fb6", opacity: 0.8, class: "cbar" }));
    let end = b;
    if (isNum(lo) && isNum(hi)) {
      const m = y + rowH / 2 - 1;
      s.append(svg("line", { x1: x(lo), y1: m, x2: x(hi), y2: m, stroke: "#222", "stroke-width": 1.5, class: "whisker" }));
      s.append(svg("line", { x1: x(lo), y1: m - 5, x2: x(lo), y2: m + 5, stroke: "#222" }));
      s.append(svg("line", { x1: x(hi), y1: m - 5, x2: x(hi), y2: m + 5, stroke: "#222" }));
      end = Math.max(end, x(hi));
    }
    s.append(svg("text", { x: end + 4, y: y + 14, "font-size": 11 }, num(v, pct)));
  });
  return s;
}

const VERDICT = { flagged: "flagged", "too small": "significant, below minimum effect", degenerate: "degenerate (both 0)",
  "not significant": "not significant" };
function verdict(g) {
  const st = g.status || (g.flagged ? "flagged" : "not significant");
  return el("span", { class: st === "flagged" ? "flagged" : "verdict", text: VERDICT[st] || st });
}
function metricWords(m) {
  const p = m.split(":");
  if (p[0] === "share") return `${p[1]} share on '${p.slice(2).join(":")}'`;
  if (p[0] === "ratio") return `${p[1]} share/area on '${p.slice(2).join(":")}'`;
  if (p[0] === "removal") return `removing '${p.slice(1).join(":")}'`;
  if (p[0] === "faith") return `${p[1]} ${p[2].replace("_", " ")}`;
  if (p[0] === "agree") return `agreement ${p.slice(1).join(":").replace("~", " vs ")}`;
  return m;
}
function gapRows(gaps, prefix = "") {
  return Object.entries(gaps || {}).map(([metric, g]) => {
    const n = g.n || {};
    const ratio = isNum(g.ratio) ? num(g.ratio) + (g.ratio_ci && isNum(g.ratio_ci[0]) ? ` ${ci(g.ratio_ci)}` : "") : "n/a";
    return [prefix + metricWords(g.metric || metric), `${g.high_group} ${num(g.high)} (n=${n[g.high_group] ?? "?"})`,
      `${g.low_group} ${num(g.low)} (n=${n[g.low_group] ?? "?"})`, num(g.difference), ci(g.difference_ci),
      el("span", { title: g.ratio_note || "", text: ratio }), isNum(g.p_adjusted) ? g.p_adjusted.toPrecision(3) : "n/a", verdict(g)];
  });
}
const GAP_HEAD = ["metric", "highest", "lowest", "difference", "95% CI", "ratio", "p (Holm)", "verdict"];

function cellValue(c) { return c && isNum(c.mean) ? `${num(c.mean)} ${ci(c.ci)}` : "-"; }

function cellsTable(cells) {
  // per quantity x label x group: n, mean [CI], and the same when the prediction is correct / wrong
  const rows = [], gaps = [];
  for (const [col, perLabel] of Object.entries(cells)) {
    for (const [lab, cell] of Object.entries(perLabel)) {
      for (const [g, c] of Object.entries(cell.by_group)) {
        const ok = cell.by_outcome.correct[g] || {}, bad = cell.by_outcome.wrong[g] || {};
        rows.push([metricWords(col), lab, g, c.n, cellValue(c), `${cellValue(ok)} (n=${ok.n ?? 0})`, `${cellValue(bad)} (n=${bad.n ?? 0})`]);
      }
      if (cell.gap) gaps.push(...gapRows({ [col]: cell.gap }, `${lab}: `));
    }
  }
  const out = [table(["quantity", "label", "group", "n images", "mean [95% CI]", "when correct", "when wrong"], rows)];
  if (gaps.length) out.push(el("p", { class: "muted", text: "Group differences within each label:" }), table(GAP_HEAD, gaps));
  return out;
}

function sharedScaleCharts(cells) {
  // share/area and removal effect per label x group; charts of one quantity share one scale
  const out = [];
  for (const [prefix, title, signed] of [["ratio:", "Share / area", false], ["removal:", "Removal effect on p(true)", true]]) {
    const cols = Object.keys(cells).filter((c) => c.startsWith(prefix));
    const vals = cols.flatMap((c) => Object.values(cells[c]).flatMap((cell) => Object.values(cell.by_group)
      .flatMap((g) => [g.mean, ...(g.ci || [])]))).filter(isNum).map(Math.abs);
    if (!vals.length) continue;
    const top = Math.max(...vals, signed ? 0.05 : 1);
    for (const c of cols) {
      const items = Object.entries(cells[c]).flatMap(([lab, cell]) => Object.entries(cell.by_group)
        .map(([g, v]) => [`${lab} × ${g} (n=${v.n})`, v.mean, ...(v.ci || [])]));
      out.push(bars(`${title}: ${c.split(":").slice(-1)[0]}${c.split(":").length === 3 ? ` (${c.split(":")[1]})` : ""} (same scale)`, items,
        { pct: false, vmin: signed ? -top : 0, vmax: top }));
    }
  }
  return out;
}

function regionSection(regs) {
  const cells = regs.cells || {};
  if (!Object.keys(cells).length) return null;
  const box = el("div", { class: "regions" }, el("h4", { text: "Where the explanation falls, and what removing a region does (per label × group)" }),
    el("p", { class: "muted", text: "Counted only over the images of each label that have the region. Share: fraction of the positive " +
      "attribution inside the region; share/area: 1 = as much as its size; removal: change of p(true) when the region is removed." }));
  box.append(...cellsTable(cells), ...sharedScaleCharts(cells));
  return box;
}

function faithSection(faith) {
  const cells = (faith || {}).cells || {};
  if (!Object.keys(cells).length) return null;
  const box = el("div", { class: "faithfulness" }, el("h4", { text: "Explanation quality per label × group" }),
    el("p", { class: "muted", text: "Deletion AUC (lower is more faithful), insertion AUC (higher is more faithful), IG relative " +
      "completeness error (above 0.1 the IG map is unreliable), rank agreement (Spearman) of two methods' maps on the same image. " +
      "A share gap that comes with a quality gap may reflect the explanations." }));
  box.append(...cellsTable(cells));
  return box;
}

function warningsBlock(mm) {
  const groups = mm.warning_groups || ((mm.warnings || []).length ? [{ title: "Warnings", items: mm.warnings }] : []);
  if (!groups.length) return null;
  const n = groups.reduce((a, g) => a + g.items.length, 0);
  return el("details", { class: "warnings" }, el("summary", { text: `${n} warning(s), grouped` }),
    ...groups.map((g) => el("p", {}, el("b", { text: `${g.title} (${g.items.length}): ` }), g.items.join("; "))));
}

const HOWTO = [
  "Answer first: the blue box per model states the result; everything below is the evidence.",
  "A cell is a label × group pair (doctor × female). Region and explanation-quality numbers are per cell, over the images that have the region; n is the number of images behind a number.",
  "[a, b] is a 95% bootstrap interval. Flagged = the interval excludes 0, the permutation p-value survives Holm's correction, and the difference is at least the minimum effect (default 0.05). Significant but smaller differences and degenerate ones (both groups 0) are listed, never flagged.",
  "Bias score: mean p(true) on stereotypical cells minus atypical cells of the same labels.",
];

function facesSection(runId, faces) {
  if (!faces || (!Object.keys(faces.quality || {}).length && !Object.keys(faces.heatmaps || {}).length)) return null;
  const box = el("div", { class: "faces" }, el("h4", { text: "Faces: quality flags per group and aligned heatmaps" }));
  for (const [g, by] of Object.entries(faces.quality || {})) {
    const flags = Object.keys(Object.values(by)[0]?.flags || {});
    box.append(table([g, "n", "with face", ...flags, "excluded"], Object.entries(by).map(([gv, e]) => [gv, e.n, e.n_with_face,
      ...flags.map((f) => `${e.flags[f].count} (${Math.round(100 * (e.flags[f].rate || 0))}%)`), e.n_excluded ?? 0])));
  }
  for (const [method, m] of Object.entries(faces.heatmaps || {})) {
    for (const [g, scopes] of Object.entries(m.groupings || {})) {
      for (const [scope, e] of Object.entries(scopes)) {
        const name = e.file.split("/").pop();
        box.append(el("figure", {}, el("img", { class: "face-sheet", alt: `${method} aligned heatmaps by ${g} (${scope})`,
          src: `/api/audits/${encodeURIComponent(runId)}/faces/${encodeURIComponent(name)}` }),
        el("figcaption", { class: "muted", text: `${method}: mean aligned heatmap per ${scope === "group" ? g : `label × ${g}`} (` +
          e.groups.map((x) => `${[].concat(x.key).join(" / ")} n=${x.n}`).join(", ") + "); below: differences (red = more attribution)" })));
      }
    }
  }
  return box;
}

function groupingSection(gname, entry) {
  const box = el("div", { class: "grouping", "data-grouping": gname }, el("h3", { text: `By ${gname}` }));
  const cis = entry.by_group_ci || {};
  const bg = entry.by_group || {};
  box.append(table(["group", "n", "accuracy", "95% CI", "top-1", "top-k", "mean p(true)", "95% CI"],
    Object.entries(bg).map(([g, v]) => [g, v.n, num(v.accuracy, true), ci((cis[g] || {}).accuracy, true), num(v.accuracy_top1, true),
      num(v.accuracy_topk, true), num(v.mean_p_true), ci((cis[g] || {}).mean_p_true)])));
  box.lastChild.classList.add("per-group");
  box.append(bars(`Accuracy by ${gname} (95% CI)`, Object.entries(bg).map(([g, v]) => [g, v.accuracy, ...((cis[g] || {}).accuracy || [])])));
  box.append(bars(`Mean probability of the true label by ${gname} (95% CI)`,
    Object.entries(bg).map(([g, v]) => [g, v.mean_p_true, ...((cis[g] || {}).mean_p_true || [])]), { pct: false }));
  const gaps = gapRows(entry.gaps);
  for (const [lab, le] of Object.entries(entry.by_label || {})) gaps.push(...gapRows(le.gaps, `${lab}: `));
  if (gaps.length) box.append(el("h4", { text: "Gaps between groups (overall and within each label)" }), table(GAP_HEAD, gaps));
  const cells = [];
  for (const [lab, le] of Object.entries(entry.by_label || {})) {
    for (const [g, v] of Object.entries(le.by_group || {})) cells.push([lab, g, v.n, num(v.accuracy, true), num(v.mean_p_true)]);
  }
  if (cells.length) box.append(el("h4", { text: "Label × group cells" }), table(["label", "group", "n", "accuracy", "mean p(true)"], cells));
  const reg = regionSection(entry.regions || {});
  if (reg) box.append(reg);
  const faith = faithSection(entry.faithfulness);
  if (faith) box.append(faith);
  return box;
}

async function tellingImages(runId, model) {
  const data = await api(`/api/audits/${encodeURIComponent(runId)}/images?model=${encodeURIComponent(model)}&order=telling&limit=12`);
  const grid = el("div", { class: "telling" });
  for (const r of data.rows) {
    const ok = r.status === "ok";
    grid.append(el("button", { class: "tile", type: "button", "data-image": r.image_id, onclick: () => drill(runId, r.image_id) },
      el("img", { alt: r.path, src: `/api/audits/${encodeURIComponent(runId)}/images/${r.image_id}/image.png?max=200` }),
      el("div", {}, el("b", { text: r.path })),
      el("div", { class: "pred", text: ok ? `label ${r.label} · predicted ${r.pred_class} (${num(r.pred_prob)}) → ${r.pred_label}` : `label ${r.label}` }),
      ok ? el("div", { class: r.correct ? "" : "wrong", text: `${r.correct ? "correct" : "wrong"} · p(true) ${num(r.p_true)}` +
        (isNum(r.p_true) && r.p_true < 1e-3 ? " · explained label has p < 0.001: its heatmap explains a class the model does not see" : "") })
        : el("div", { class: "wrong", text: r.error || "error" })));
  }
  return grid;
}

async function renderDashboard(runId) {
  const m = await api(`/api/audits/${encodeURIComponent(runId)}/metrics.json`);
  D.metrics = m;
  const dash = $("#dashboard");
  dash.textContent = "";
  dash.append(el("details", { class: "panel howto" }, el("summary", { text: "How to read this" }),
    el("ul", {}, ...HOWTO.map((t) => el("li", { text: t })))));
  for (const [key, mm] of Object.entries(m.models)) {
    const answer = mm.answer || mm.findings || [];
    const rest = (mm.findings || []).slice(1).filter((f) => !answer.includes(f) && !f.startsWith("Bias score ("));
    const block = el("section", { class: "panel model-block", "data-model": key }, el("h2", { text: `Model ${key}` }),
      el("div", { class: "answer" }, el("h3", { text: "The answer" }), el("ul", {}, ...answer.map((f) => el("li", { text: f })))));
    const wb = warningsBlock(mm);
    if (wb) block.append(wb);
    if (rest.length) block.append(el("h3", { text: "More findings" }), el("ul", { class: "findings" }, ...rest.map((f) => el("li", { text: f }))));
    for (const [gname, entry] of Object.entries(mm.groupings || {})) block.append(groupingSection(gname, entry));
    const bs = mm.bias_score;
    if (bs) {
      block.append(el("h3", { text: "Bias score" }), el("p", { class: "bias-score", text:
        `stereotypical minus atypical p(true) (${bs.group}): ${num(bs.score)} ${ci(bs.ci)}, p = ${bs.p_value.toPrecision(3)} ` +
        `(${bs.flagged ? "flagged" : bs.significant ? "significant, below the minimum effect" : "not significant"}; ` +
        `${bs.n_stereotypical} stereotypical, ${bs.n_atypical} atypical images)` }),
      bars("Bias score (95% CI)", [["bias score", bs.score, ...bs.ci]], { pct: false, vmin: -1, vmax: 1 }));
    }
    const faces = facesSection(runId, mm.faces);
    if (faces) block.append(faces);
    block.append(el("h3", { text: "Most telling images (misclassified first; click for explanations)" }));
    block.append(await tellingImages(runId, key));
    dash.append(block);
  }
}

async function refreshRun(runId) {
  const r = await api(`/api/audits/${encodeURIComponent(runId)}`);
  D.run = r;
  const active = ["queued", "running"].includes(r.status);
  $("#run-meta").textContent = `status ${r.status} · ${r.n_images ?? "?"} images · models ${(r.models || []).join(", ")}` +
    (r.manifest && r.manifest.path ? ` · manifest ${r.manifest.path}` : "") +
    (r.config ? ` · groups ${(r.config.groups || []).join(", ")} · methods ${(r.config.methods || []).join(", ") || "none"}` +
      (r.config.face_parts ? " · face parts" : "") : "");
  document.body.dataset.status = r.status;
  const prog = $("#run-progress");
  prog.classList.toggle("hidden", !(active || r.resumable || r.status === "error"));
  const frac = r.job && r.job.progress && isNum(r.job.progress.fraction) ? r.job.progress.fraction : r.progress || 0;
  $("#progress-bar").style.width = `${Math.round(100 * frac)}%`;
  const p = (r.job && r.job.progress) || {};
  $("#run-status").textContent = `${r.status} · ${p.done ?? ""}${p.total ? ` / ${p.total}` : ""} ` +
    (isNum(p.eta_s) && active ? `· about ${Math.ceil(p.eta_s)} s left` : "") + (r.error ? ` · ${r.error}` : "");
  $("#cancel-btn").classList.toggle("hidden", !active);
  $("#resume-btn").classList.toggle("hidden", active || !r.resumable);
  if (r.has_metrics && !active) {
    const base = `/api/audits/${encodeURIComponent(runId)}`;
    $("#report-link").href = `${base}/report.html`;
    $("#report-link").classList.toggle("hidden", !r.files_allowed);
    $("#metrics-link").href = `${base}/metrics.json?download=1`;
    $("#csv-link").href = `${base}/per_image.csv`;
    $("#downloads").classList.remove("hidden");
    if (!D.metrics) await renderDashboard(runId);
  }
  clearTimeout(D.poll);
  if (active) D.poll = setTimeout(() => refreshRun(runId).catch((e) => showError(e.message)), 700);
  else document.body.dataset.ready = "1";
}

async function drill(runId, imageId) {
  clearError();
  const d = await api(`/api/audits/${encodeURIComponent(runId)}/images/${imageId}`);
  const body = $("#drill-body");
  body.textContent = "";
  body.append(el("h3", { text: d.path }), el("p", { class: "muted", text: `label ${d.label} · ` +
    Object.entries(d.attributes).map(([k, v]) => `${k} = ${v}`).join(", ") }));
  const imgs = el("div", { class: "drill-images" },
    el("figure", {}, el("img", { alt: "original", src: d.image_url }), el("figcaption", { text: "original" })),
    el("figure", {}, el("img", { alt: "regions", src: d.regions_url }), el("figcaption", { text: "regions / face parts" })));
  for (const [model, rec] of Object.entries(d.results)) {
    for (const [method, url] of Object.entries(rec.overlays || {})) {
      imgs.append(el("figure", { "data-overlay": `${model}:${method}` }, el("img", { alt: `${method} on ${model}`, src: url }),
        el("figcaption", { text: `${model} · ${method} (target ${rec.target_class})` })));
    }
  }
  body.append(imgs);
  for (const [model, rec] of Object.entries(d.results)) {
    if (rec.status !== "ok") { body.append(el("p", { class: "flagged", text: `${model}: ${rec.error}` })); continue; }
    const rows = [["prediction", `${rec.pred_class} (${num(rec.pred_prob)}) → ${rec.pred_label}`], ["correct", rec.correct ? "yes" : "no"],
      ["p(true)", num(rec.p_true)], ["top classes", rec.top.map((t) => `${t.class} ${num(t.probability)}`).join(", ")]];
    if (rec.face) rows.push(["face", `${rec.face.n_faces} face(s); flags: ${(rec.face.flags || []).join(", ") || "none"}; yaw ${num(rec.face.yaw_ratio)}; sharpness ${num(rec.face.sharpness)}`]);
    for (const [method, regs] of Object.entries(rec.shares || {})) {
      for (const [r, s] of Object.entries(regs)) rows.push([`${method} share in ${r}`, `${num(s.share, true)} (${isNum(s.ratio) ? s.ratio.toFixed(2) : "n/a"}× area)`]);
    }
    for (const [r, e] of Object.entries(rec.removal || {})) rows.push([`removing ${r}`, `p(true) ${num(e.before)} → ${num(e.after)} (${num(e.effect)})`]);
    body.append(el("h4", { text: `Model ${model}` }), table(["", ""], rows));
  }
  if (d.explainable_models.length && d.files_allowed) {
    const sel = el("select", { id: "drill-model" }, ...d.explainable_models.map((m) => el("option", { value: m, text: m })));
    const meth = el("select", { id: "drill-method" }, ...d.explainers.map((m) => el("option", { value: m.name, text: m.label, selected: m.name === "gradcam" })));
    const out = el("div", { id: "drill-job", class: "drill-images" });
    body.append(el("h4", { text: "Explain at full resolution" }), el("div", { class: "row" }, sel, meth,
      el("button", { class: "secondary", type: "button", id: "drill-explain", text: "Explain", onclick: async () => {
        out.textContent = "running…";
        try {
          const job = await post(d.explain_url, { model: sel.value, methods: [meth.value] });
          pollJob(job.id, out);
        } catch (e) { out.textContent = ""; showError(e.message); }
      } })), out);
  }
  $("#drill").classList.remove("hidden");
}

async function pollJob(id, out) {
  const job = await api(`/api/jobs/${id}`);
  if (!["done", "error", "cancelled"].includes(job.status)) { setTimeout(() => pollJob(id, out), 400); return; }
  out.textContent = "";
  for (const [name, m] of Object.entries(job.methods)) {
    if (m.result) out.append(el("figure", {}, el("img", { alt: `${name} overlay`, src: m.result.overlay_url }),
      el("figcaption", { text: `${m.label} · ${m.result.target_name} (${num(m.result.target_probability)})` })));
    else out.append(el("p", { class: "flagged", text: `${m.label}: ${m.error || m.status}` }));
  }
}

/* ------------------------------------------------------------------ start */
document.addEventListener("DOMContentLoaded", async () => {
  const page = document.body.dataset.page;
  try {
    if (page === "audits" && document.body.dataset.enabled === "1") {
      await Promise.all([loadRuns(), initForm()]);
    } else if (page === "dashboard") {
      const runId = document.body.dataset.run;
      $("#drill-close").addEventListener("click", () => $("#drill").classList.add("hidden"));
      $("#cancel-btn").addEventListener("click", () => post(`/api/audits/${runId}/cancel`).then(() => refreshRun(runId)).catch((e) => showError(e.message)));
      $("#resume-btn").addEventListener("click", () => post(`/api/audits/${runId}/resume`).then(() => refreshRun(runId)).catch((e) => showError(e.message)));
      await refreshRun(runId);
    }
  } catch (e) {
    showError(e.message);
  }
  if (page !== "dashboard") document.body.dataset.ready = "1";
});
