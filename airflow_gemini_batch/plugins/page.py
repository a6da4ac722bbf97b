"""The page's HTML shell, CSS and script, served from a route (``/ui/``) of the authenticated app.

Why inline and not ``StaticFiles``: static mounts inside a plugin app bypass its auth dependency, so every
byte of the page goes through a route that requires a logged-in user. There is no build step either: plain
DOM code, no framework, so the provider ships no JS toolchain.

Invariants of the script: every value from the API is inserted as text (``textContent`` / ``esc``), never
as HTML; it only calls the app's own API, same-origin; the cancel POST carries the anti-CSRF header. The
Airflow iframe sandbox has no ``allow-modals``, so confirmations are inline (``confirm()`` would silently fail).
"""

from __future__ import annotations

import json

from airflow_gemini_batch.plugins.page_script import SCRIPT

_CSS = """
:root{--bg:#fff;--panel:#f7f8fa;--text:#1a202c;--muted:#5f6b7a;--border:#e2e8f0;--accent:#2563eb;
--ok:#16a34a;--bad:#dc2626;--warn:#d97706;--idle:#94a3b8;--run:#2563eb;--track:#e5e7eb;--chip:#eef2f7}
:root[data-theme=dark]{--bg:#0f1115;--panel:#171a21;--text:#e6e8eb;--muted:#9aa3ad;--border:#2a2f38;
--accent:#60a5fa;--ok:#22c55e;--bad:#f87171;--warn:#fbbf24;--idle:#64748b;--run:#60a5fa;--track:#2a2f38;
--chip:#222733}
*{box-sizing:border-box}
body{margin:0;padding:16px 20px;background:var(--bg);color:var(--text);
font:14px/1.45 Inter,system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:20px 0 8px}
.sub{color:var(--muted);font-size:13px}
header{display:flex;align-items:flex-end;justify-content:space-between;gap:16px;flex-wrap:wrap;margin-bottom:14px}
.controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap}
select,button{font:inherit;color:var(--text);background:var(--panel);border:1px solid var(--border);
border-radius:6px;padding:5px 10px}
button{cursor:pointer;white-space:nowrap}button:hover{border-color:var(--accent)}
button.danger{color:var(--bad);border-color:var(--bad)}button.danger.armed{background:var(--bad);color:#fff}
label.auto{color:var(--muted);font-size:13px;display:flex;gap:4px;align-items:center}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin-bottom:14px}
.card{background:var(--panel);border:1px solid var(--border);border-radius:8px;padding:8px 14px;min-width:110px}
.card .v{font-size:18px;font-weight:600}.card .k{color:var(--muted);font-size:12px}
table{width:100%;border-collapse:collapse;font-size:13px}
th{text-align:left;color:var(--muted);font-weight:600;border-bottom:2px solid var(--border);padding:6px;
white-space:nowrap}
td{border-bottom:1px solid var(--border);padding:7px 6px;vertical-align:top}
tr:hover td{background:var(--panel)}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.muted{color:var(--muted)}.small{font-size:12px}
.badge{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;color:#fff;
background:var(--idle)}
.s-SUCCEEDED{background:var(--ok)}.s-FAILED{background:var(--bad)}.s-EXPIRED{background:var(--warn)}
.s-RUNNING{background:var(--run)}.s-PENDING{background:var(--warn);color:#1a202c}
.bar{display:flex;height:8px;width:130px;border-radius:4px;overflow:hidden;background:var(--track);margin:3px 0}
.bar .ok{background:var(--ok)}.bar .bad{background:var(--bad)}
.warnbox{color:var(--warn);font-size:12px;max-width:220px;overflow-wrap:anywhere}.nowrap{white-space:nowrap}.badtxt{color:var(--bad)}
td.wrap{min-width:180px;max-width:240px;overflow-wrap:anywhere}td.wrap .mono{word-break:break-all}td.outcomes{max-width:150px}
a.job{display:inline-block;max-width:170px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;vertical-align:bottom}
.tablewrap{overflow-x:auto}
.chip{display:inline-block;background:var(--chip);border-radius:4px;padding:0 6px;margin:1px 2px 1px 0;font-size:12px}
.chip.ok{color:var(--ok)}.chip.bad{color:var(--bad)}
.empty,.error{background:var(--panel);border:1px dashed var(--border);border-radius:8px;padding:24px;
text-align:center;color:var(--muted)}
.error{border-color:var(--bad);color:var(--bad)}
.grid{display:grid;grid-template-columns:180px 1fr;gap:6px 16px;max-width:900px}
.grid .k{color:var(--muted)}
details{margin-top:16px}pre{background:var(--panel);padding:10px;border-radius:6px;overflow:auto;max-height:320px}
.save{color:var(--ok);font-weight:600}
"""

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Gemini Batches</title><style>__CSS__</style>
<script>window.GB_CONFIG = __CONFIG__;</script></head>
<body>
<header>
  <div><h1 id="title">Gemini Batches</h1>
  <div class="sub" id="subtitle">Batch jobs submitted by Airflow tasks, with live state from the Gemini API.</div></div>
  <div class="controls" id="controls">
    <select id="f-dag" aria-label="Filter by DAG"><option value="">All DAGs</option></select>
    <select id="f-state" aria-label="Filter by state"><option value="">All states</option></select>
    <button id="refresh" type="button">Refresh</button>
    <label class="auto"><input type="checkbox" id="auto" checked> auto-refresh</label>
    <span class="sub" id="updated"></span>
  </div>
</header>
<main id="main"><div class="empty">Loading…</div></main>
<script>__SCRIPT__</script>
</body></html>
"""


def render_page(*, app_base: str, airflow_base: str, refresh_seconds: int) -> str:
    """The page for an app mounted at ``app_base`` inside an Airflow served at ``airflow_base``."""
    config = json.dumps({"appBase": app_base, "airflowBase": airflow_base, "refreshSeconds": refresh_seconds})
    # "</" would end the <script> element early; escaping it keeps the JSON inert whatever it contains.
    config = config.replace("</", "<\\/")
    return _HTML.replace("__CSS__", _CSS).replace("__CONFIG__", config).replace("__SCRIPT__", SCRIPT)
