/* biasscope audits: list, new-audit form, dashboard and drill-down (common.js loads first; no CDN).
   The dashboard's result sections are rendered on the server by the report's templates
   (GET /audits/{run}/results); this script follows the run, inserts them and fills the interactive parts. */
"use strict";

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
  const info = await post("/api/manifests/inspect", { manifest: rel }).catch((e) => { showError(e.message); return null; });
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
const D = { run: null, poll: null, rendered: false, partial: false };

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

async function renderDashboard(runId, partial = false) {
  // the result sections as the report draws them; only the telling images and drill-down are built here
  const html = await api(`/audits/${encodeURIComponent(runId)}/results`, { text: true });
  const dash = $("#dashboard");
  dash.innerHTML = html;  // server-rendered and autoescaped (audit/templates/_sections.html)
  D.rendered = true;
  D.partial = partial;
  for (const box of dash.querySelectorAll(".telling[data-model]")) box.replaceWith(await tellingImages(runId, box.dataset.model));
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
  const scored = Object.values(r.counts || {}).reduce((n, c) => n + (c.ok || 0), 0);
  if (active && D.partial) {  // resumed: the results so far are out of date until it finishes
    $("#dashboard").textContent = "";
    D.rendered = D.partial = false;
  }
  if (!active && !r.has_metrics && scored > 0 && !D.rendered) {
    // a run that stopped early: its results so far, under the server's banner (no files to download yet)
    await renderDashboard(runId, true);
  }
  if (r.has_metrics && !active) {
    const base = `/api/audits/${encodeURIComponent(runId)}`;
    $("#report-link").href = `${base}/report.html`;
    $("#report-link").classList.toggle("hidden", !r.files_allowed);
    $("#metrics-link").href = `${base}/metrics.json?download=1`;
    $("#csv-link").href = `${base}/per_image.csv`;
    $("#downloads").classList.remove("hidden");
    if (!D.rendered || D.partial) await renderDashboard(runId);
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
      for (const [r, s] of Object.entries(regs)) rows.push([`${method} share in ${r}`, `${num(s.share, true)} (${isNum(s.ratio) ? fixed(s.ratio, 2) : "n/a"}× area)`]);
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
