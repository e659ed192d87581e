/* biasscope face verification audits: the Audits page's section (list, start, follow, cancel); helpers in common.js. */
"use strict";
(() => {
  function message(text, isError) {
    const box = $("#verify-message");
    box.textContent = text;
    box.className = isError ? "alert" : "muted";
  }
  let timer = null;

  async function refresh() {
    let data;
    try { data = await api("/api/verify-audits"); } catch (e) { message(e.message, true); return; }
    const body = $("#verify-runs tbody");
    body.textContent = "";
    let busy = false;
    for (const r of data.runs) {
      const s = r.summary || {};
      const p = r.job && r.job.progress;
      const active = r.status === "running" || r.status === "queued";
      busy = busy || active;
      const err = r.error || (r.job && r.job.error);  // status: queued | running | done | error | cancelled
      const url = `/api/verify-audits/${encodeURIComponent(r.id)}`;
      const actions = el("span", {});
      if (r.status === "done") actions.append(el("a", { href: `${url}/report.html`, target: "_blank", rel: "noopener", text: "report" }));
      else if (active) {
        actions.append(el("button", { type: "button", class: "secondary", text: "Cancel", onclick: async () => {
          try { await api(`${url}/cancel`, { method: "POST" }); } catch (e) { message(e.message, true); }
          refresh();
        } }));
      }
      const cells = [r.id, el("span", { class: `status ${r.status}`, text: r.status + (err ? `: ${err}` : "") }),
        p ? `${p.stage} ${p.done}/${p.total}` : "",
        s.threshold !== undefined ? `${rate(s.threshold)} @ FAR ${s.far}` : "",
        s.fmr !== undefined ? `${rate(s.fmr)} / ${rate(s.fnmr)}` : "",
        s.n_genuine !== undefined ? `${s.n_genuine} / ${s.n_impostor}` : "",
        s.n_flagged !== undefined ? String(s.n_flagged) : "", actions];
      body.append(el("tr", {}, ...cells.map((c) => el("td", {}, c))));
    }
    $("#verify-none").classList.toggle("hidden", data.runs.length > 0);
    clearTimeout(timer);
    if (busy) timer = setTimeout(refresh, 2000);
  }

  async function start() {
    const payload = {
      manifest: $("#verify-manifest").value.trim(),
      groups: $("#verify-groups").value.trim(),
      far: Number($("#verify-far").value),
      explain: Number($("#verify-explain").value || 0),
      name: $("#verify-name").value.trim() || undefined,
    };
    try {
      const r = await post("/api/verify-audits", payload);
      message(`started ${r.id}`, false);
    } catch (e) { message(e.message, true); }
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!$("#verify-section")) return;
    $("#verify-start").addEventListener("click", start);
    refresh();
  });
})();
