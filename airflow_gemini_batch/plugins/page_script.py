"""The page's script (plain DOM, no framework), kept apart from the markup so each file stays readable.

It lists jobs (``/ui/``) or shows one (``/ui/jobs/<id>``), routing on ``location.pathname``. Every API value
goes into the DOM as text (``esc``); links into Airflow open in the top window (``target=_top``) because the
page lives in Airflow's iframe. The theme follows Airflow's (the parent document's ``dark``/``light`` class,
same origin), then Airflow's stored choice, then the system preference.
"""

from __future__ import annotations

SCRIPT = r"""
(function () {
"use strict";
const C = window.GB_CONFIG, API = C.appBase + "/api";
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) =>
  ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const enc = encodeURIComponent;
const num = (n) => (n == null ? "—" : Number(n).toLocaleString("en-US"));
function money(n, cur) {
  if (n == null) return "—";
  // Batch runs of a few prompts cost fractions of a cent: show them to the 6 decimals pricing keeps.
  const a = Math.abs(n), v = a >= 1 ? Number(n).toFixed(2) : a >= 0.01 ? Number(n).toFixed(4)
    : String(Number(Number(n).toFixed(6)));
  return !cur || cur === "USD" ? "$" + v : `${v} ${esc(cur)}`;
}

// ---- theme: follow Airflow's colour mode -----------------------------------------------------------
function theme() {
  try {
    if (window.parent !== window) {
      const cl = window.parent.document.documentElement.classList;
      if (cl.contains("dark")) return "dark";
      if (cl.contains("light")) return "light";
    }
  } catch (e) { /* not same-origin: fall through */ }
  try {
    const t = localStorage.getItem("theme");
    if (t === "dark" || t === "light") return t;
  } catch (e) { /* storage blocked */ }
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}
function applyTheme() { document.documentElement.dataset.theme = theme(); }
applyTheme();
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
try {
  if (window.parent !== window) new MutationObserver(applyTheme).observe(
    window.parent.document.documentElement, {attributes: true, attributeFilter: ["class", "style"]});
} catch (e) { /* not same-origin */ }

// ---- formatting ----------------------------------------------------------------------------------------
function when(iso, long) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (isNaN(d)) return esc(iso);
  const p = (x) => String(x).padStart(2, "0");
  const day = `${long ? d.getFullYear() + "-" : ""}${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  const t = `${p(d.getHours())}:${p(d.getMinutes())}${long ? ":" + p(d.getSeconds()) : ""}`;
  return `<span title="${esc(d.toString())}">${day} ${t}</span>`;
}
function taskUrl(j) {
  let u = `${C.airflowBase}/dags/${enc(j.dag_id)}/runs/${enc(j.run_id)}/tasks/${enc(j.task_id)}`;
  if (j.map_index >= 0) u += `/mapped/${j.map_index}`;
  return u;
}
const jobUrl = (j) => `${C.appBase}/ui/jobs/${enc(j.job_id)}`;
const badge = (s) => `<span class="badge s-${esc(s)}">${esc(s)}</span>`;
function stateCell(j) {
  let h = badge(j.state);
  if (j.state_source === "recorded") h += ` <span class="muted small">recorded</span>`;
  if (j.live_error) {
    h += `<div class="warnbox">live state unavailable: ${esc(j.live_error)}` +
      (j.state_source === "recorded" ? ` (showing the state recorded by the sensor)` : "") + `</div>`;
  } else if (j.live_deferred) {
    h += `<div class="muted small">not read live this time (API call budget, or a slow refresh in progress); refresh shortly</div>`;
  }
  if (j.error) h += `<div class="warnbox">${esc(j.error)}</div>`;
  if (j.nearing_expiry) {
    h += `<div class="warnbox expiry" title="the service ends a job not finished ${Number(j.expiry_hours).toFixed(0)} h after its creation, with no results">` +
      `nearing expiry: created ${Number(j.age_hours).toFixed(1)} h ago, expires in ` +
      `${Number(j.expires_in_hours).toFixed(1)} h unless it finishes</div>`;
  }
  return h;
}
// A shard resubmitted after its job ended FAILED / EXPIRED / CANCELLED: its earlier jobs, oldest first.
function previousCell(j, long) {
  const p = j.previous || [];
  if (!p.length) return long ? `<span class="muted">none (first generation)</span>` : "";
  const items = p.map((g, i) => `<div class="small previous" data-previous="${esc(g.job_id)}">` +
    `generation ${i}: <span class="mono${long ? "" : " job"}" title="${esc(g.job_name)}">${esc(g.job_id)}</span> ${badge(g.state)}` +
    (long && g.error ? ` <span class="muted">${esc(g.error)}</span>` : "") +
    (long && g.live_error ? ` <span class="muted">live state unavailable: ${esc(g.live_error)}</span>` : "") +
    `</div>`).join("");
  return (long ? "" : `<div class="small">resubmitted: generation ${p.length}, after</div>`) + items;
}
function progressCell(p) {
  const t = Math.max(p.total, 1), ok = (100 * p.succeeded) / t, bad = (100 * p.failed) / t;
  return `<div class="bar" title="${num(p.succeeded)} succeeded, ${num(p.failed)} failed, ${num(p.pending)} pending">` +
    `<div class="ok" style="width:${ok}%"></div><div class="bad" style="width:${bad}%"></div></div>` +
    `<div class="small nowrap">${num(p.succeeded)} ok · <span class="${p.failed ? "badtxt" : ""}">` +
    `${num(p.failed)} failed</span></div><div class="small muted nowrap">${num(p.pending)} pending of ${num(p.total)}</div>`;
}
function outcomesCell(o, status) {
  if (!o) return `<span class="muted small">not loaded yet</span>`;
  const verdict = status === "too_many_failures"
    ? `<div class="warnbox">too many failures: the results task failed after loading</div>` : "";
  const rest = Object.entries(o).filter(([k, v]) => k !== "succeeded" && v);
  return `<span class="chip ok">${num(o.succeeded || 0)} succeeded</span>` +
    rest.map(([k, v]) => `<span class="chip bad">${num(v)} ${esc(k.replace(/_/g, " "))}</span>`).join("") +
    (rest.length ? "" : `<div class="muted small">nothing failed or missing</div>`) + verdict;
}
function tokensCell(j) {
  const t = j.tokens;
  if (!t) return `<span class="muted">—</span>`;
  let h = `${num(t.total)}`;
  h += `<div class="muted small">in ${num(t.prompt)} · out ${num(t.output)}` +
    (t.thinking ? ` · thinking ${num(t.thinking)}` : "") + (t.cached ? ` · cached ${num(t.cached)}` : "") + `</div>`;
  return h;
}
function costCell(j, withTokens) {
  const c = j.cost;
  if (!c || c.batch == null) {
    const why = c && c.model ? `<div class="muted small">no price known for ${esc(c.model)}</div>` : "";
    return `<span class="muted">${withTokens && j.tokens ? num(j.tokens.total) + " tokens" : "—"}</span>` + why;
  }
  let h = `<b>${money(c.batch, c.currency)}</b>`;
  if (c.standard != null) {
    h += `<div class="muted small nowrap">standard ${money(c.standard, c.currency)}</div>` +
      `<div class="save small nowrap">saved ${money(c.savings, c.currency)}</div>`;
  }
  if (withTokens && j.tokens) h += `<div class="muted small nowrap">${num(j.tokens.total)} tokens</div>`;
  if (!withTokens && c.prices_as_of) h += `<div class="muted small">prices as of ${esc(c.prices_as_of)}</div>`;
  return h;
}
function loadCell(j) {
  const r = j.load_report;
  if (!r) return `<span class="muted small">not loaded yet</span>`;
  let h = `${num(r.key_count)} keys · ${num(r.lines)} result lines`;
  const odd = [["unknown_keys", "lines with unknown keys (not loaded)"], ["duplicate_keys", "duplicate lines (ignored)"],
    ["malformed_lines", "malformed lines"]].filter(([k]) => r[k]);
  h += odd.map(([k, label]) => `<div class="badtxt small">${num(r[k])} ${label}</div>`).join("");
  if (r.truncated) h += `<div class="badtxt small">the responses file ended in a truncated line</div>`;
  return h + `<div class="muted small">results task ${esc(j.results_task_id)}: ${esc(j.results_status || "—")}</div>`;
}
function cancelButton(j) {
  return j.can_cancel ? `<button type="button" class="danger" data-cancel="${esc(j.job_id)}">Cancel job</button>` : "";
}

// ---- data ----------------------------------------------------------------------------------------------
async function getJSON(url, opts) {
  const r = await fetch(url, Object.assign({credentials: "same-origin", headers: {Accept: "application/json"}}, opts));
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (r.status === 401) throw new Error("Your Airflow session has expired: reload the page to log in again.");
  if (!r.ok) throw new Error((body && body.detail) || `HTTP ${r.status}`);
  return body;
}
function showError(e) { $("main").innerHTML = `<div class="error">${esc(e.message || e)}</div>`; }
function stamp() { $("updated").textContent = "updated " + new Date().toLocaleTimeString(); }

// ---- list view -----------------------------------------------------------------------------------------
function filters() {
  const q = new URLSearchParams(location.search);
  if ($("f-dag").value) q.set("dag_id", $("f-dag").value); else q.delete("dag_id");
  if ($("f-state").value) q.set("state", $("f-state").value); else q.delete("state");
  return q;
}
function fillSelect(sel, values, current) {
  const first = sel.options[0].outerHTML;
  const all = new Set(values); if (current) all.add(current);
  sel.innerHTML = first + [...all].sort().map((v) =>
    `<option value="${esc(v)}"${v === current ? " selected" : ""}>${esc(v)}</option>`).join("");
}
async function loadList() {
  const q = filters();
  history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  let data;
  try { data = await getJSON(`${API}/jobs?${q}`); } catch (e) { showError(e); return; }
  fillSelect($("f-dag"), data.dag_ids, q.get("dag_id") || "");
  fillSelect($("f-state"), data.states, q.get("state") || "");
  stamp();
  const scope = ["run_id", "task_id"].filter((k) => q.get(k)).map((k) => `${k.replace("_id", "")} ${q.get(k)}`);
  $("subtitle").innerHTML = scope.length
    ? `Jobs of ${esc(scope.join(", "))} · <a href="${C.appBase}/ui/">show all</a>`
    : "Batch jobs submitted by Airflow tasks, with live state from the Gemini API.";
  if (!data.jobs.length) {
    $("main").innerHTML = `<div class="empty"><b>No Gemini batch jobs ${q.toString() ? "match these filters" : "recorded yet"}.</b>` +
      `<p>Jobs appear here once a <span class="mono">GeminiBatchSubmitOperator</span> task has run: it records ` +
      `every job it creates (XCom <span class="mono">gemini_batch_manifest</span>). The sensor and the results ` +
      `task add progress, outcomes, tokens and cost. Only DAGs you may read are listed.</p></div>`;
    return;
  }
  const t = data.totals, c = t.cost, o = t.outcomes;
  const cards = [["Jobs", num(t.jobs)], ["Requests", num(t.requests)], ["Succeeded", num(t.succeeded)],
    ["Failed", num(t.failed)], ["Pending", num(t.pending)]];
  if (o) cards.push([`Loaded OK (${num(t.loaded_jobs)} jobs)`, num(o.succeeded)],
    ["Loaded not OK", num(o.failed + o.invalid_output + o.missing)]);
  cards.push(["Tokens", num(t.tokens.total)]);
  if (c) cards.push(["Cost at batch price", money(c.batch, c.currency)],
    ["At standard price", money(c.standard, c.currency)], ["Saved", money(c.savings, c.currency)]);
  const rows = data.jobs.map((j) => `<tr data-job="${esc(j.job_id)}">
    <td class="wrap"><a target="_top" href="${esc(taskUrl(j))}"><b>${esc(j.dag_id)}</b></a>
      <div class="small" title="the tasks that submitted, waited for and loaded this job">${
        esc(j.task_ids.join(" → "))}${j.map_index >= 0 ? ` [${j.map_index}]` : ""}</div>
      <div class="muted small mono">${esc(j.run_id)}</div></td>
    <td><a class="mono job" href="${esc(jobUrl(j))}" title="${esc(j.job_name)}">${esc(j.job_id)}</a>
      <div class="muted small">${esc(j.model || "")}${j.task ? " · " + esc(j.task) : ""}</div>
      <div class="muted small">${j.shard_count > 1 ? `shard ${j.shard_index + 1} of ${j.shard_count}` : "single job"}</div>
      ${previousCell(j, false)}</td>
    <td>${stateCell(j)}</td><td>${progressCell(j.progress)}</td>
    <td class="small nowrap">${when(j.create_time)}<div class="muted">${j.end_time ? when(j.end_time) : "not ended"}</div></td>
    <td class="outcomes">${outcomesCell(j.outcomes, j.results_status)}</td><td class="small">${costCell(j, true)}</td>
    <td>${cancelButton(j)}</td></tr>`).join("");
  $("main").innerHTML = `<div class="cards">${cards.map(([k, v]) =>
    `<div class="card"><div class="v">${v}</div><div class="k">${k}</div></div>`).join("")}</div>
    <div class="tablewrap"><table><thead><tr><th>DAG / task / run</th><th>Job</th><th>State</th><th>Progress</th>
    <th>Created / ended</th><th>Outcomes after loading</th><th>Cost (batch)</th><th></th></tr></thead>
    <tbody>${rows}</tbody></table></div>${runsTable(data.runs)}`;
}

// ---- per run: estimate vs actual, reused rows, savings (cost.report.run_cost_report) --------------------
function runCostCell(r) {
  if (!r) return "—";
  const parts = [`estimated ${money(r.estimate_usd)}${r.max_cost_usd != null ? ` (budget ${money(r.max_cost_usd)})` : ""}` +
    (r.estimate_method ? ` <span class="muted">by ${esc(r.estimate_method)}</span>` : ""),
    `spent ${r.actual_usd != null ? money(r.actual_usd) : "— (not loaded yet)"}`];
  if (r.standard_usd != null) parts.push(`standard API ${money(r.standard_usd)}`);
  if (r.cache_storage_usd) parts.push(`cache storage ${money(r.cache_storage_usd)} (included)`);
  if (r.caching_saved_usd) parts.push(`caching saved ${money(r.caching_saved_usd)}`);
  if (r.reused) parts.push(`${num(r.reused)} rows reused` +
    (r.reuse_saved_usd != null ? `, saving ${money(r.reuse_saved_usd)}` : ""));
  return parts.join(" · ");
}
function runsTable(runs) {
  if (!runs || !runs.length) return "";
  const rows = runs.map((r) => `<tr class="run"><td class="wrap"><b>${esc(r.dag_id)}</b> · ${esc(r.task_id)}${
    r.map_index >= 0 ? ` [${r.map_index}]` : ""}<div class="muted small mono">${esc(r.run_id)}</div></td>
    <td class="nowrap">${num(r.requests)}</td><td class="nowrap">${money(r.estimate_usd)}${
    r.max_cost_usd != null ? `<div class="muted small">budget ${money(r.max_cost_usd)}</div>` : ""}</td>
    <td class="nowrap">${money(r.actual_usd)}</td><td class="nowrap">${money(r.standard_usd)}</td>
    <td class="nowrap">${money(r.cache_storage_usd)}</td><td class="nowrap">${money(r.caching_saved_usd)}</td><td class="nowrap">${num(r.reused)}${
    r.reuse_saved_usd != null ? `<div class="muted small">saved ${money(r.reuse_saved_usd)}</div>` : ""}</td></tr>`).join("");
  return `<h3>Runs: estimate vs actual</h3><div class="tablewrap"><table class="runs"><thead><tr><th>DAG / task / run</th>
    <th>Requests</th><th>Estimated</th><th>Spent (batch)</th><th>Standard API</th><th>Cache storage</th>
    <th>Caching saved</th>
    <th>Reused rows</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

// ---- detail view ---------------------------------------------------------------------------------------
async function loadDetail(id) {
  $("controls").querySelectorAll("select,label").forEach((e) => { e.style.display = "none"; });
  let data;
  try { data = await getJSON(`${API}/jobs/${enc(id)}`); } catch (e) { showError(e); return; }
  stamp();
  const j = data.job;
  $("title").textContent = j.job_name;
  $("subtitle").innerHTML = `<a href="${C.appBase}/ui/">← all jobs</a> · ` +
    `<a target="_top" href="${esc(taskUrl(j))}">open the task in Airflow</a>`;
  const rows = [["State", stateCell(j)], ["Progress", progressCell(j.progress)],
    ["DAG / run / task", `${esc(j.dag_id)} / <span class="mono">${esc(j.run_id)}</span> / ${esc(j.task_ids.join(" → "))}`],
    ["Display name", esc(j.display_name || "—")], ["Model", esc(j.model || "—")], ["Task", esc(j.task || "—")],
    ["Shard", j.shard_count > 1 ? `${j.shard_index + 1} of ${j.shard_count}` : "single job"],
    ["Earlier generations", previousCell(j, true)],
    ["Requests", num(j.progress.total)], ["Connection", `<span class="mono">${esc(j.gemini_conn_id)}</span>`],
    ["Created", when(j.create_time, true)], ["Ended", when(j.end_time, true)],
    ["Last update", when(j.update_time, true)],
    ["Outcomes after loading", outcomesCell(j.outcomes, j.results_status)], ["Loading", loadCell(j)],
    ["Tokens", tokensCell(j)], ["Cost", costCell(j, false)], ["Run cost", runCostCell(j.run_cost)]];
  $("main").innerHTML = `<div style="margin-bottom:12px">${cancelButton(j)}</div><div class="grid">${
    rows.map(([k, v]) => `<div class="k">${k}</div><div>${v}</div>`).join("")}</div>
    <details><summary class="muted">Recorded and live data (JSON)</summary><pre>${esc(JSON.stringify(j, null, 2))}</pre></details>`;
}

// ---- cancel (inline confirmation: the iframe sandbox blocks confirm()) --------------------------------------
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-cancel]");
  if (!b) return;
  if (!b.classList.contains("armed")) {
    b.classList.add("armed"); b.textContent = "Click again to cancel";
    setTimeout(() => { b.classList.remove("armed"); b.textContent = "Cancel job"; }, 5000);
    return;
  }
  b.disabled = true; b.textContent = "Cancelling…";
  try {
    await getJSON(`${API}/jobs/${enc(b.dataset.cancel)}/cancel`,
      {method: "POST", headers: {"X-Requested-With": "gemini-batch", Accept: "application/json"}});
    refresh();
  } catch (e) { b.disabled = false; b.textContent = "Cancel failed: " + e.message; }
});

const detail = location.pathname.match(/\/ui\/jobs\/([^/]+)\/?$/);
function refresh() { return detail ? loadDetail(decodeURIComponent(detail[1])) : loadList(); }
const q0 = new URLSearchParams(location.search);
fillSelect($("f-dag"), [], q0.get("dag_id") || "");
fillSelect($("f-state"), [], q0.get("state") || "");
$("f-dag").addEventListener("change", loadList);
$("f-state").addEventListener("change", loadList);
$("refresh").addEventListener("click", refresh);
setInterval(() => { if ($("auto").checked && !document.hidden) refresh(); }, C.refreshSeconds * 1000);
refresh();
})();
"""
