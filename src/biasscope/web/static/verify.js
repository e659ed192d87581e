/* biasscope face verification audits: the Audits page's section (list, start, follow, cancel); helpers in common.js. */
"use strict";
(() => {
  function message(text, isError) {
    const box = $("#verify-message");
    box.textContent = text;
    box.className = isError ? "alert" : "muted";
  }
  function cell(row, content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content); else td.textContent = content;
    row.append(td);
  }
  let timer = null;

  async function refresh() {
    let data;
    try { data = await api("/api/verify-audits"); } catch (e) { message(e.message, true); return; }
    const body = $("#verify-runs tbody");
    body.textContent = "";
    let busy = false;
    for (const r of data.runs) {
      const tr = document.createElement("tr");
      const s = r.summary || {};
      const p = r.job && r.job.progress;
      busy = busy || r.status === "running" || r.status === "queued";
      cell(tr, r.id);
      const st = document.createElement("span");
      st.className = `status ${r.status}`;
      const err = r.error || (r.job && r.job.error);  // status: queued | running | done | error | cancelled
      st.textContent = r.status + (err ? `: ${err}` : "");
      cell(tr, st);
      cell(tr, p ? `${p.stage} ${p.done}/${p.total}` : "");
      cell(tr, s.threshold !== undefined ? `${rate(s.threshold)} @ FAR ${s.far}` : "");
      cell(tr, s.fmr !== undefined ? `${rate(s.fmr)} / ${rate(s.fnmr)}` : "");
      cell(tr, s.n_genuine !== undefined ? `${s.n_genuine} / ${s.n_impostor}` : "");
      cell(tr, s.n_flagged !== undefined ? String(s.n_flagged) : "");
      const actions = document.createElement("span");
      if (r.status === "done") {
        const a = document.createElement("a");
        a.href = `/api/verify-audits/${encodeURIComponent(r.id)}/report.html`;
        a.target = "_blank";
        a.rel = "noopener";
        a.textContent = "report";
        actions.append(a);
      } else if (r.status === "running" || r.status === "queued") {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "secondary";
        b.textContent = "Cancel";
        b.addEventListener("click", async () => {
          try { await api(`/api/verify-audits/${encodeURIComponent(r.id)}/cancel`, { method: "POST" }); } catch (e) { message(e.message, true); }
          refresh();
        });
        actions.append(b);
      }
      cell(tr, actions);
      body.append(tr);
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
      const r = await api("/api/verify-audits", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
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
