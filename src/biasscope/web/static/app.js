/* biasscope web page: plain JavaScript over the JSON API (no framework, no CDN; helpers in common.js). */
"use strict";

const S = {
  models: [], explainers: [], image: null, model: null, predictions: [], target: null, nclasses: {},
  classes: {}, job: null, poll: null, rendered: new Set(), busy: false,
};

/* ------------------------------------------------------------------ models & methods */
async function loadModels() {
  const data = await api("/api/models");
  S.models = data.models;
  const sel = $("#model-select");
  sel.textContent = "";
  for (const m of data.models) {
    const label = `${m.name} — ${m.ready ? (m.loaded ? "ready (loaded)" : "ready") : "weights missing"}`;
    sel.append(el("option", { value: m.name, text: label }));
  }
  S.model = data.default;
  sel.value = data.default;
  describeModel();
}

/* A CLIP model's classes are whatever the user types: the server derives a model over them from the
   served CLIP model (text embeddings only) and names it; that name is then the chosen model. */
async function showClipClasses(m) {
  const isClip = !!m && m.ready && m.name.startsWith("clip:");
  $("#clip-classes").classList.toggle("hidden", !isClip);
  if (!isClip) return;
  try {
    const data = await api(`/api/models/${encodeURIComponent(m.name)}/classes`);
    if (S.model === m.name) $("#clip-classes-input").value = data.classes.map((c) => c.label).join(", ");
  } catch (e) { /* the model's own error is shown by the prediction */ }
}

async function setClipClasses() {
  clearError();
  const m = S.models.find((x) => x.name === S.model);
  if (!m) return;
  const prompt = $("#clip-prompt-input").value.trim();
  const body = { base: m.base || m.name, classes: $("#clip-classes-input").value };
  if (prompt) body.prompts = [prompt];
  $("#clip-classes-btn").disabled = true;
  try {
    const r = await post("/api/models/clip-classes", body);
    await loadModels();
    S.model = r.name; S.target = null;
    $("#model-select").value = r.name;
    describeModel(); resetResults(); runPredict(); updateAvailability(S.model);
  } catch (e) {
    showError(e.message);
  } finally {
    $("#clip-classes-btn").disabled = false;
  }
}

function describeModel() {
  const m = S.models.find((x) => x.name === S.model);
  const box = $("#model-status");
  box.textContent = "";
  showClipClasses(m);
  if (!m) return;
  if (m.ready) {
    box.className = "model-status ok";
    box.append(el("span", { class: "dot ok" }), m.source || "ready");
    if (m.backend) {  // loaded: which engine and dtype its gradient-free forwards use, and why
      const p = m.precision || {};
      box.append(el("div", { class: "engine", title: [m.backend.reason, p.reason].filter(Boolean).join("; "),
        text: `forwards: ${m.backend.active}, ${p.active || "fp32"}` }));
    }
  } else {
    box.className = "model-status missing";
    box.append(el("div", { text: m.reason }), el("div", { class: "fix" }, "Fix: ", el("code", { text: m.fix })));
  }
}

async function loadExplainers() {
  const data = await api("/api/explainers");
  S.explainers = data.explainers;
  const box = $("#methods");
  box.textContent = "";
  const defaults = new Set(["gradcam"]);
  for (const ex of S.explainers) {
    const id = `m-${ex.name}`;
    const badges = el("span", { class: "badges" },
      el("span", { class: `badge ${ex.signed ? "badge-signed" : "badge-unsigned"}`, text: ex.signed ? "signed" : "unsigned",
        title: ex.signed ? "diverging colour map: red supports the class, blue opposes it" : "sequential colour map" }),
      ex.slow ? el("span", { class: "badge badge-slow", text: "slow", title: "runs as a background job" }) : null);
    const params = el("div", { class: "params hidden", id: `params-${ex.name}` });
    for (const p of ex.params) params.append(paramField(ex.name, p));
    const box1 = el("input", { type: "checkbox", id, value: ex.name, class: "method-check", checked: defaults.has(ex.name) });
    box1.addEventListener("change", () => params.classList.toggle("hidden", !box1.checked || !ex.params.length));
    if (box1.checked && ex.params.length) params.classList.remove("hidden");
    box.append(el("div", { class: "method", "data-method": ex.name },
      el("label", { class: "check", for: id, title: ex.description }, box1, el("span", { class: "method-label", text: ex.label }), badges),
      params));
  }
}

/* Grey out the methods the chosen model cannot run (e.g. attention rollout needs a ViT, CAMs need layer
   hooks), with the registry's reason; the server answers from the loaded model. */
async function updateAvailability(model) {
  const m = S.models.find((x) => x.name === model);
  if (!m || !m.ready) return;
  let data;
  try {
    data = await api(`/api/explainers?model=${encodeURIComponent(model)}`);
  } catch (e) {
    return;  // the model's own error is shown by the prediction
  }
  if (S.model !== model) return;  // the user chose another model meanwhile
  for (const ex of data.explainers) {
    const row = document.querySelector(`.method[data-method="${ex.name}"]`);
    if (!row) continue;
    const box = row.querySelector(".method-check");
    const off = ex.available === false;
    row.classList.toggle("unavailable", off);
    box.disabled = off;
    if (off && box.checked) { box.checked = false; box.dispatchEvent(new Event("change")); }
    let why = row.querySelector(".method-reason");
    if (off) {
      if (!why) { why = el("div", { class: "method-reason" }); row.querySelector(".check").after(why); }
      why.textContent = ex.reason;
      row.title = ex.reason;
    } else {
      if (why) why.remove();
      row.removeAttribute("title");
    }
  }
}

function paramField(method, p) {
  const name = `${method}.${p.name}`;
  let input;
  if (p.choices) {
    input = el("select", { name });
    for (const c of p.choices) input.append(el("option", { value: c, text: c, selected: c === p.default }));
  } else if (p.type === "bool") {
    input = el("input", { type: "checkbox", name, checked: !!p.default });
  } else if (p.type === "int" || p.type === "float") {
    input = el("input", { type: "number", name, value: p.default, min: p.min, max: p.max, step: p.type === "int" ? 1 : "any" });
  } else {
    input = el("input", { type: "text", name, value: p.default ?? "" });
  }
  input.dataset.method = method;
  input.dataset.param = p.name;
  input.dataset.type = p.type;
  return el("label", { class: "param", title: p.help }, el("span", { text: p.name.replaceAll("_", " ") }), input);
}

function selectedMethods() {
  return [...document.querySelectorAll(".method-check:checked")].map((c) => c.value);
}

function collectParams(methods) {
  const out = {};
  for (const m of methods) {
    const vals = {};
    for (const inp of document.querySelectorAll(`#params-${CSS.escape(m)} [data-param]`)) {
      vals[inp.dataset.param] = inp.type === "checkbox" ? inp.checked : inp.value;
    }
    if (Object.keys(vals).length) out[m] = vals;
  }
  return out;
}

/* ------------------------------------------------------------------ images */
async function loadSamples() {
  const data = await api("/api/samples");
  const box = $("#samples");
  for (const s of data.samples) {
    box.append(el("button", { class: "sample", type: "button", title: `${s.title} — ${s.credit}`, "data-sample": s.name,
      onclick: () => useImage({ sample: s.name }) },
      el("img", { src: s.url, alt: s.title, loading: "lazy" })));
  }
}

async function upload(file) {
  const fd = new FormData();
  fd.append("image", file, file.name);
  return useImage(fd);
}

async function useImage(source) {
  clearError();
  setBusy(true, "Reading image…");
  try {
    let rec;
    if (source instanceof FormData) rec = await api("/api/images", { method: "POST", body: source });
    else rec = await post("/api/images", source);
    S.image = rec;
    S.target = null;
    resetResults();
    $("#preview").src = rec.url;
    const scaled = rec.original_width !== rec.width ? ` (scaled from ${rec.original_width}×${rec.original_height})` : "";
    $("#image-meta").textContent = `${rec.name} · ${rec.width}×${rec.height}${scaled}`;
    $("#empty").classList.add("hidden");
    $("#overview").classList.remove("hidden");
    await runPredict();
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

/* ------------------------------------------------------------------ predictions */
async function runPredict() {
  if (!S.image) return;
  const list = $("#predictions");
  list.textContent = "";
  list.append(el("li", { class: "muted loading", text: `Predicting with ${S.model}…` }));
  try {
    // at most 5, and no more than the model has (a CLIP model may have only two classes)
    const model = S.model;
    if (!(model in S.nclasses)) {
      S.nclasses[model] = (await api(`/api/models/${encodeURIComponent(model)}/classes?limit=1`)).count;
    }
    const data = await post("/api/predict",
      { image_id: S.image.id, model, top: Math.max(1, Math.min(5, S.nclasses[model])) });
    S.predictions = data.predictions;
    $("#pred-model").textContent = `${data.model.name} · ${(data.seconds * 1000).toFixed(0)} ms`;
    renderPredictions();
    loadClasses(S.model);
    markModelLoaded(S.model);
  } catch (e) {
    list.textContent = "";
    S.predictions = [];
    showError(e.message);
  }
  updateTarget();
}

function markModelLoaded(name) {
  const m = S.models.find((x) => x.name === name);
  if (m && !m.loaded) {
    m.loaded = true;
    const opt = [...$("#model-select").options].find((o) => o.value === name);
    if (opt) opt.textContent = `${name} — ready (loaded)`;
  }
}

function renderPredictions() {
  const list = $("#predictions");
  list.textContent = "";
  S.predictions.forEach((p, i) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${Math.max(0.5, p.probability * 100).toFixed(1)}%`;
    const selected = S.target ? S.target.index === p.index : i === 0;
    const li = el("li", { class: `prediction${selected ? " selected" : ""}`, tabindex: "0", "data-index": p.index,
      title: "Explain this class", onclick: () => setTarget(p, i === 0),
      onkeydown: (ev) => { if (ev.key === "Enter") setTarget(p, i === 0); } },
      el("div", { class: "pred-row" }, el("span", { class: "pred-label", text: p.label }),
        el("span", { class: "pred-prob", text: pct(p.probability) })),
      el("div", { class: "bar-track" }, bar));
    list.append(li);
  });
}

async function loadClasses(model) {
  if (S.classes[model]) return fillClassList(model);
  try {
    const data = await api(`/api/models/${encodeURIComponent(model)}/classes`);
    S.classes[model] = data.classes;
    fillClassList(model);
  } catch (e) { /* class search is optional */ }
}

function fillClassList(model) {
  const dl = $("#class-list");
  dl.textContent = "";
  for (const c of S.classes[model] || []) dl.append(el("option", { value: c.label }));
}

function pickClassFromSearch() {
  const raw = $("#class-search").value.trim();
  const q = raw.toLowerCase();
  if (!q) return;
  if (q.includes("=")) {  // a concept, "doctor = stethoscope, lab coat": checked by the server
    const [name, rest] = [raw.slice(0, raw.indexOf("=")).trim(), raw.slice(raw.indexOf("=") + 1)];
    const parts = rest.split(",").map((c) => c.trim()).filter(Boolean);
    if (!name || !parts.length) { showError("a concept is NAME = class, class, e.g. doctor = stethoscope, lab coat"); return; }
    clearError();
    S.target = { concept: `${name} = ${parts.join(", ")}`, label: name, classes: parts };
    renderPredictions();
    updateTarget();
    if (!S.busy && S.image) runExplain();
    return;
  }
  const classes = S.classes[S.model] || [];
  const hit = classes.find((c) => c.label.toLowerCase() === q) || classes.find((c) => c.label.toLowerCase().includes(q));
  if (!hit) { showError(`no class of ${S.model} matches “${q}”`); return; }
  clearError();
  setTarget(hit, false);
}

function setTarget(p, isTop) {
  S.target = isTop ? null : { index: p.index, label: p.label };
  renderPredictions();
  updateTarget();
  if (!S.busy && S.image) runExplain();
}

function updateTarget() {
  const t = S.target;
  $("#target-label").textContent = t ? (t.concept ? `${t.label} (concept: ${t.classes.join(" + ")})` : `${t.label} (#${t.index})`)
    : (S.predictions[0] ? `${S.predictions[0].label} (top-1)` : "top-1 prediction");
  $("#target-reset").classList.toggle("hidden", !t);
  $("#explain-btn").disabled = !S.image || S.busy;
}

/* ------------------------------------------------------------------ jobs */
function resetResults() {
  stopPolling();
  S.job = null;
  S.rendered = new Set();
  $("#results").textContent = "";
  $("#results-section").classList.add("hidden");
  $("#job").classList.add("hidden");
}

async function runExplain() {
  const methods = selectedMethods();
  if (!methods.length) { showError("choose at least one explanation method"); return; }
  clearError();
  resetResults();
  const body = { image_id: S.image.id, model: S.model, methods, params: collectParams(methods),
    faithfulness: $("#faithfulness").checked };
  if (S.target && S.target.concept) body.concept = S.target.concept;
  else if (S.target) body.target = S.target.index;
  setBusy(true);
  try {
    const job = await post("/api/jobs", body);
    S.job = job;
    $("#job").classList.remove("hidden");
    $("#cancel-btn").disabled = false;
    $("#cancel-btn").classList.remove("hidden");
    showJob(job);
    S.poll = setInterval(pollJob, 400);
  } catch (e) {
    showError(e.message);
    setBusy(false);
  }
}

function stopPolling() {
  if (S.poll) clearInterval(S.poll);
  S.poll = null;
}

async function pollJob() {
  if (!S.job) return;
  try {
    const job = await api(`/api/jobs/${S.job.id}`);
    S.job = job;
    showJob(job);
  } catch (e) {
    stopPolling();
    setBusy(false);
    showError(e.message);
  }
}

const TERMINAL = new Set(["done", "error", "cancelled"]);

function showJob(job) {
  $("#progress-bar").style.width = `${(job.progress * 100).toFixed(1)}%`;
  const status = { queued: "Queued…", running: "Explaining…", done: "Done", error: "Failed", cancelled: "Cancelled" }[job.status] || job.status;
  $("#job-status").textContent = `${status} ${job.status === "running" ? `${Math.round(job.progress * 100)}%` : ""}`;
  $("#job").dataset.status = job.status;
  const ul = $("#method-progress");
  ul.textContent = "";
  for (const m of Object.values(job.methods)) {
    const pct = m.status === "running" ? ` ${Math.round(m.progress * 100)}%` : "";
    ul.append(el("li", { class: `mp mp-${m.status}` }, el("span", { text: m.label }), el("span", { text: `${m.status}${pct}` })));
  }
  for (const m of Object.values(job.methods)) {
    if ((m.status === "done" || m.status === "error") && !S.rendered.has(m.name)) {
      S.rendered.add(m.name);
      renderResult(job, m);
    }
  }
  if (job.error) showError(job.error);
  if (TERMINAL.has(job.status)) {
    stopPolling();
    setBusy(false);
    $("#cancel-btn").classList.add("hidden");
    $("#download-json").href = `/api/jobs/${job.id}/result.json?download=1`;
  }
}

async function cancelJob() {
  if (!S.job) return;
  $("#cancel-btn").disabled = true;
  try { showJob(await api(`/api/jobs/${S.job.id}/cancel`, { method: "POST" })); } catch (e) { showError(e.message); }
}

/* ------------------------------------------------------------------ results */
function ensureOriginalCard(job) {
  const box = $("#results");
  if (box.querySelector(".original-card")) return;
  const t = Object.values(job.methods).find((m) => m.result);
  box.append(el("figure", { class: "card result-card original-card" },
    el("div", { class: "stack" }, el("img", { src: job.image.url, alt: "original", class: "base" })),
    el("figcaption", {}, el("div", { class: "rc-title" }, el("h3", { text: "Original" })),
      el("div", { class: "muted", text: `${job.image.width}×${job.image.height} · ${job.model.name}` }))));
  $("#results-target").textContent = t ? `for “${t.result.target_name}” (p = ${num(t.result.target_probability)})${conceptNote()}` : "";
}

function conceptNote() {
  const t = S.target;
  return t && t.concept ? ` — concept: p is the sum of p(${t.classes.join(") + p(")}); gradient heatmaps explain the sum of their logits, ` +
    "LIME, Kernel SHAP and occlusion the summed probability" : "";
}

function renderResult(job, m) {
  $("#results-section").classList.remove("hidden");
  ensureOriginalCard(job);
  const box = $("#results");
  if (m.status === "error") {
    box.append(el("figure", { class: "card result-card error-card", "data-method": m.name },
      el("div", { class: "rc-title" }, el("h3", { text: m.label })), el("p", { class: "error-text", text: m.error })));
    return;
  }
  const r = m.result;
  if (!$("#results-target").textContent) $("#results-target").textContent = `for “${r.target_name}” (p = ${num(r.target_probability)})${conceptNote()}`;
  const heat = el("img", { src: r.heatmap_url, alt: `${m.label} heatmap`, class: "heat" });
  heat.style.opacity = $("#opacity").value;
  const checks = el("dl", { class: "checks" }, el("dt", { text: "Time" }), el("dd", { text: `${num(r.seconds)} s` }));
  const c = r.checks || {};
  if ("deletion_auc" in c) checks.append(el("dt", { text: "Deletion AUC ↓", title: "lower is better" }), el("dd", { text: num(c.deletion_auc) }));
  if ("insertion_auc" in c) checks.append(el("dt", { text: "Insertion AUC ↑", title: "higher is better" }), el("dd", { text: num(c.insertion_auc) }));
  if (c.rank_stability != null) {
    checks.append(el("dt", { text: "Rank stability ↑", title: "mean Spearman of the superpixel ranking against bootstrap refits: low = more samples needed (an upper estimate)" }),
      el("dd", { text: num(c.rank_stability) }));
  }
  if ("completeness_error" in c) {
    checks.append(el("dt", { text: "Completeness error", title: "|sum(attr) - (f(x) - f(baseline))|" }),
      el("dd", { text: `${num(c.completeness_error)} (${pct(c.completeness_relative)})` }));
  }
  // what a reader must know before trusting the map (the same limits as the CLI and the audit report)
  const cautions = [];
  if (r.target_probability < 1e-3) cautions.push(`The target “${r.target_name}” has p = ${num(r.target_probability)} (< 0.001): ` +
    "this heatmap explains a class the model does not predict here.");
  if (c.completeness_relative > 0.1) cautions.push(`Completeness error ${pct(c.completeness_relative)} (> 10%): ` +
    "the attributions do not add up to the output; use more steps.");
  const cautionEl = cautions.length ? el("div", { class: "caution", role: "note" }, ...cautions.map((t) => el("p", { text: `⚠ ${t}` }))) : null;
  const overlayLink = el("a", { class: "button secondary small", href: `${r.overlay_url}?download=1&alpha=${$("#opacity").value}`,
    download: `${m.name}-overlay.png`, "data-kind": "overlay", text: "Overlay PNG" });
  box.append(el("figure", { class: "card result-card", "data-method": m.name },
    el("div", { class: "stack" }, el("img", { src: job.image.url, alt: "original", class: "base" }), heat),
    el("figcaption", {},
      el("div", { class: "rc-title" }, el("h3", { text: m.label }),
        el("span", { class: `badge ${m.signed ? "badge-signed" : "badge-unsigned"}`, text: r.legend.kind })),
      legendEl(r.legend),
      cautionEl,
      checks,
      el("div", { class: "downloads" }, overlayLink,
        el("a", { class: "button secondary small", href: r.npy_url, download: `${m.name}-heatmap.npy`, text: "Heatmap .npy" })))));
}

function legendEl(lg) {
  const bar = el("div", { class: "legend-bar" });
  bar.style.background = `linear-gradient(to right, ${lg.stops.join(", ")})`;
  const ticks = el("div", { class: "legend-ticks" });
  for (const t of lg.ticks) ticks.append(el("span", { text: num(t) }));
  const caption = lg.kind === "diverging" ? "blue: against the class · red: for it" : "low → high importance";
  return el("div", { class: "legend", title: lg.colormap }, bar, ticks, el("div", { class: "legend-caption muted", text: caption }));
}

function setOpacity(v) {
  $("#opacity-value").textContent = `${Math.round(v * 100)}%`;
  for (const img of document.querySelectorAll(".result-card img.heat")) img.style.opacity = v;
  for (const a of document.querySelectorAll("a[data-kind=overlay]")) {
    a.href = a.href.replace(/alpha=[0-9.]+/, `alpha=${v}`);
  }
}

function setBusy(busy, label) {
  S.busy = busy;
  const btn = $("#explain-btn");
  btn.disabled = busy || !S.image;
  btn.textContent = busy ? (label || "Working…") : "Explain";
  document.body.classList.toggle("busy", busy);
}

/* ------------------------------------------------------------------ wiring */
function wire() {
  const dz = $("#dropzone");
  $("#file-input").addEventListener("change", (ev) => { if (ev.target.files[0]) upload(ev.target.files[0]); ev.target.value = ""; });
  dz.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("#file-input").click(); });
  for (const t of ["dragenter", "dragover"]) dz.addEventListener(t, (ev) => { ev.preventDefault(); dz.classList.add("over"); });
  for (const t of ["dragleave", "drop"]) dz.addEventListener(t, (ev) => { ev.preventDefault(); dz.classList.remove("over"); });
  dz.addEventListener("drop", (ev) => { const f = ev.dataTransfer.files[0]; if (f) upload(f); });
  $("#model-select").addEventListener("change", (ev) => {
    S.model = ev.target.value; S.target = null; describeModel(); resetResults(); runPredict(); updateAvailability(S.model);
  });
  $("#clip-classes-btn").addEventListener("click", setClipClasses);
  $("#clip-classes-input").addEventListener("keydown", (ev) => { if (ev.key === "Enter") setClipClasses(); });
  $("#explain-btn").addEventListener("click", runExplain);
  $("#cancel-btn").addEventListener("click", cancelJob);
  $("#target-reset").addEventListener("click", () => { S.target = null; renderPredictions(); updateTarget(); });
  $("#class-pick").addEventListener("click", pickClassFromSearch);
  $("#class-search").addEventListener("keydown", (ev) => { if (ev.key === "Enter") pickClassFromSearch(); });
  $("#opacity").addEventListener("input", (ev) => setOpacity(ev.target.value));
}

async function init() {
  wire();
  try {
    await Promise.all([loadModels(), loadExplainers(), loadSamples()]);
    updateAvailability(S.model);
  } catch (e) {
    showError(e.message);
  }
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
