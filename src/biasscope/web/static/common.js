/* biasscope pages' shared helpers, loaded before each page's own script (plain script, no bundler, no CDN):
   building elements, calling the API with one error form, the page's error box, and numbers written by the
   rules of biasscope/formatting.py (the audit results themselves are rendered on the server). */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

/* An element: attrs class/text/on<event>/other attributes (null, undefined and false are left out). */
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

/* The message of a failed response: the API's {"error": {"message"}}, or the app's error page. */
async function errorMessage(resp) {
  const type = resp.headers.get("content-type") || "";
  try {
    if (type.includes("application/json")) {
      const body = await resp.json();
      if (body && body.error && body.error.message) return body.error.message;
    } else if (type.includes("text/html")) {
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const p = doc.querySelector("#error-message");
      if (p && p.textContent) return p.textContent;
    }
  } catch (e) { /* an unreadable body: the status says it */ }
  return `${resp.status} ${resp.statusText}`;
}

/* fetch, then the JSON body (or the text with {text: true}); a failure throws an Error with .status. */
async function api(path, opts = {}) {
  const { text = false, ...init } = opts;
  const resp = await fetch(path, { credentials: "same-origin", ...init });
  if (!resp.ok) {
    const err = new Error(await errorMessage(resp));
    err.status = resp.status;
    throw err;
  }
  if (text) return resp.text();
  return (resp.headers.get("content-type") || "").includes("application/json") ? resp.json() : null;
}
const post = (path, data) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
  body: JSON.stringify(data || {}) });

function showError(msg, box = $("#error")) {
  box.textContent = "";
  box.append(el("strong", { text: "Something went wrong: " }), msg);
  box.classList.remove("hidden");
}
function clearError(box = $("#error")) { box.classList.add("hidden"); }

/* ------------------------------------------------------------------ numbers (biasscope/formatting.py) */
const isNum = (x) => typeof x === "number" && Number.isFinite(x);

/* Python's f"{x:.{d}f}": JavaScript rounds an exact tie away from zero, Python to even. */
function fixed(x, d) {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf";
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  const a = Math.abs(x);
  let out = a.toFixed(d);
  if (a < 1e21) {
    const full = a.toFixed(100);  // exact for |x| >= 2^-47 (at most 100 decimals); near enough for less
    const dot = full.indexOf(".");
    const rest = full.slice(dot + 1 + d);
    if (/^50*$/.test(rest)) {  // a tie: keep the truncated value when its last digit is even
      const down = full.slice(0, d ? dot + 1 + d : dot);
      if (Number(down[down.length - 1]) % 2 === 0) out = down;
    }
  }
  return sign + out;
}

/* Python's f"{x:.{d}e}" (a two-digit exponent at least). */
function sci(x, d) {
  if (!Number.isFinite(x)) return fixed(x, d);
  return x.toExponential(d).replace(/e([+-])(\d)$/, "e$10$2");
}

/* formatting.fmt_number: 3 decimals (a percentage: 1), scientific where that would read 0; n/a if missing. */
function num(x, pct = false) {
  if (typeof x !== "number" || Number.isNaN(x)) return "n/a";
  if (pct) {
    const p = 100 * x;
    return x === 0 || Math.abs(p) >= 0.05 ? `${fixed(p, 1)}%` : `${sci(p, 1)}%`;
  }
  return x === 0 || Math.abs(x) >= 0.0005 ? fixed(x, 3) : sci(x, 2);
}
const pct = (x) => num(x, true);

/* formatting.fmt_rate: 4 decimals, scientific below 0.01 (verification error rates are tiny). */
function rate(x) {
  if (typeof x !== "number" || Number.isNaN(x)) return "n/a";
  return x > 0 && x < 1e-2 ? sci(x, 2) : fixed(x, 4);
}

/* formatting.fmt_interval: "[lo, hi]" by num's rule; missing bounds read n/a. */
function interval(ci, asPct = false) {
  const [lo, hi] = [...(ci || []), null, null];
  return `[${num(lo ?? null, asPct)}, ${num(hi ?? null, asPct)}]`;
}
