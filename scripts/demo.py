"""``make demo``: run the main job end to end, offline, and print what happened.

Starts the Gemini Batch emulator (or, with ``GEMINI_API_KEY`` set, uses the real API), prepares an Airflow home
inside the checkout (``.demo/``; the metadata DB is migrated once), points the connections at the emulator and
an embedded SQLite warehouse, runs ``gemini_batch_product_descriptions`` with ``airflow dags test`` and prints a
report read back from the warehouse and the run's XCom.

The logical date is today's (``--date YYYY-MM-DD``, ``make demo DATE=...``, picks another), so running the demo
twice on one day re-runs the same DAG run: the submit task re-attaches to the jobs it recorded instead of paying
again, and the load upserts on key (no duplicate rows). A run on another date is a new DAG run; the example DAG is
incremental, so over an unchanged table it sends nothing (3000 reused, $0.00 spent), and after
``--change-rows 30`` (``make demo-change-rows N=30``) it sends exactly the 30 changed rows.

``--standalone`` (``make airflow``) runs ``airflow standalone`` with the same setup, to explore the UI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_gemini_batch.emulator.process import start_emulator_process

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
BIN = Path(sys.executable).parent
DAG_ID = "gemini_batch_product_descriptions"
WAREHOUSE = DEMO / "warehouse.db"
SHOW = (
    "Gemini batch report",
    "Read ",
    "rows/s",
    "created job",
    "re-attached",
    "Submitted",
    "succeeded,",
    "Loaded ",
    "ERROR",
    "Error:",
)


@contextmanager
def emulator() -> Iterator[str]:
    """The emulator as a child process, stopped on exit — also on Ctrl-C or SIGTERM."""
    proc, base_url = start_emulator_process(
        DEMO / "emulator.log", "--data-dir", str(DEMO / "emulator-data"), "--pending-seconds", "2",
        "--running-seconds", "4",
    )  # fmt: skip
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        signal.signal(signal.SIGTERM, previous)


def airflow_env(base_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(DEMO / "airflow_home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        GEMINI_BATCH_POLL_INTERVAL="2" if base_url else "60",
        GEMINI_BATCH_RETRIES="0",
        AIRFLOW_CONN_GEMINI_BATCH_WAREHOUSE=json.dumps({"conn_type": "sqlite", "host": str(WAREHOUSE)}),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    if base_url:
        conn = {"conn_type": "gemini_batch", "host": base_url, "password": "emulator-key"}
    else:
        conn = {"conn_type": "gemini_batch", "password": os.environ["GEMINI_API_KEY"]}
    env["AIRFLOW_CONN_GEMINI_BATCH_DEFAULT"] = json.dumps(conn)
    env.pop("GEMINI_API_KEY", None)  # the key travels in the connection only
    return env


def migrate_once(env: dict[str, str]) -> None:
    stamp = DEMO / "airflow_home" / ".migrated"
    if not stamp.exists():
        print("Preparing the Airflow metadata DB (once) ...", flush=True)
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        stamp.touch()


def logical_date_of(day: str | None) -> str:
    """``YYYY-MM-DD`` (default: today, UTC) → the DAG run's logical date at midnight UTC; a clear error else."""
    if not day:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT00:00:00+00:00")
    try:
        parsed = datetime.strptime(day, "%Y-%m-%d")
    except ValueError:
        raise SystemExit(f"DATE must look like 2026-03-01 (YYYY-MM-DD), not {day!r}.") from None
    return parsed.strftime("%Y-%m-%dT00:00:00+00:00")


def change_rows(db: Path, n: int) -> list[int]:
    """Change the prompts of ``n`` demo products (the first ``n`` by id get their name suffixed), so the next
    incremental run sends exactly those; the ids changed. What ``make demo-change-rows N=30`` runs."""
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM products ORDER BY id LIMIT ?", (n,))]
        conn.executemany("UPDATE products SET name = name || ' (revised)' WHERE id = ?", [(i,) for i in ids])
    return ids


def run_dag(env: dict[str, str], day: str | None = None) -> int:
    logical_date = logical_date_of(day)
    print(f"Running {DAG_ID} for {logical_date} (full log: .demo/last_run.log) ...", flush=True)
    with open(DEMO / "last_run.log", "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "dags", "test", DAG_ID, logical_date],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if any(marker in line for marker in SHOW):
                print("  " + _short(line), flush=True)
        return proc.wait()


_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)\.\d+Z \[(\w+)\s*\] (.*?)(?: \[[\w.]+\])?(?: \w+=\S+)*$"
)


def _short(line: str) -> str:
    """``2026-…T20:14:41.766Z [info ] message [logger] loc=…`` → ``20:14:41 message``."""
    match = _LOG_LINE.match(line.rstrip())
    return f"{match.group(1)} {match.group(3)}"[:180] if match else line.rstrip()[:180]


def read_summary(env: dict[str, str]) -> dict | None:
    """The load task's summary, from the XCom table of the demo's metadata DB."""
    code = (
        "import json, sys\n"
        "from airflow.models.xcom import XComModel\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    row = (s.query(XComModel).filter(XComModel.dag_id == sys.argv[1],"
        " XComModel.key == 'gemini_batch_results_summary').order_by(XComModel.timestamp.desc()).first())\n"
        "    print(json.dumps(XComModel.deserialize_value(row) if row else None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, DAG_ID], env=env, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if out.returncode == 0 and lines else None


def print_report(summary: dict | None, real_api: bool) -> None:
    db = sqlite3.connect(WAREHOUSE)
    products = db.execute("SELECT COUNT(*) FROM products").fetchone()[0]
    by_outcome = dict(db.execute("SELECT outcome, COUNT(*) FROM product_descriptions GROUP BY outcome"))
    rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT product_id) FROM product_descriptions").fetchone()
    print("\n================ Gemini batch demo report ================")
    print(
        f"API:                 {'the REAL Gemini API' if real_api else 'the local emulator (offline, no bill)'}"
    )
    print(f"rows in (products):  {products}")
    if summary:
        print(
            f"jobs:                {len(summary['jobs'])}  ({', '.join(j['job_name'] for j in summary['jobs'])})"
        )
        print("outcomes:            " + ", ".join(f"{k}={v}" for k, v in summary["counts"].items()))
        t = summary["tokens"]
        print(f"tokens:              prompt={t['prompt']} output={t['output']} total={t['total']}")
        c = summary["cost"]
        if c.get("batch") is not None:
            print(
                f"cost:                ${c['batch']:.4f} at batch price vs ${c['standard']:.4f} standard "
                f"(saved ${c['savings']:.4f}; prices as of {c['prices_as_of']})"
            )
        print(incremental_line(summary))
    print(
        f"destination:         product_descriptions has {rows[0]} rows for {rows[1]} distinct keys; "
        + ", ".join(f"{k}={v}" for k, v in sorted(by_outcome.items()))
    )
    accounted = sum(by_outcome.values())
    print(f"all rows accounted:  {'yes' if accounted == products else 'NO'} ({accounted} of {products})")
    print("sample rows:")
    for key, text in db.execute(
        "SELECT product_id, text FROM product_descriptions WHERE outcome = 'succeeded' ORDER BY product_id LIMIT 3"
    ):
        print(f"  {key}: {text[:110]}")
    print("===========================================================")


def incremental_line(summary: dict) -> str:
    """``requests sent: 0, reused: 3000, spent: $0.00 (re-sending the reused rows would have cost $0.0123)``"""
    spent = (summary.get("cost") or {}).get("batch")
    would = summary.get("reused_cost_usd")
    spent_text = f"${spent:.2f}" if spent is not None else "unknown (no price)"
    return (
        f"incremental:         requests sent: {summary['request_count']}, reused: {summary.get('reused', 0)}, "
        f"spent: {spent_text}"
        + (f" (re-sending the reused rows would have cost ${would:.4f})" if would else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--standalone", action="store_true", help="run airflow standalone instead (make airflow)"
    )
    parser.add_argument("--date", help="the run's logical date, YYYY-MM-DD (default: today)")
    parser.add_argument(
        "--change-rows", type=int, metavar="N", help="change N demo products' prompts, then exit"
    )
    args = parser.parse_args()
    DEMO.mkdir(exist_ok=True)
    if args.change_rows is not None:
        if not WAREHOUSE.exists():
            print("Run `make demo` first: there is no demo table to change yet.")
            return 1
        ids = change_rows(WAREHOUSE, args.change_rows)
        print(
            f"Changed the prompts of {len(ids)} products (ids {ids[0]}..{ids[-1]}); the next run sends them."
        )
        return 0
    logical_date_of(args.date)  # a bad DATE fails before anything starts
    real_api = bool(os.environ.get("GEMINI_API_KEY"))
    if real_api:
        print("GEMINI_API_KEY is set: running against the REAL Gemini API (this is billed).")
    with emulator() if not real_api else _no_emulator() as base_url:
        env = airflow_env(base_url)
        migrate_once(env)
        if args.standalone:
            print(
                f"Emulator at {base_url}. Starting Airflow at http://localhost:8080 — the admin password is in "
                f"{DEMO / 'airflow_home' / 'simple_auth_manager_passwords.json.generated'}. Ctrl-C stops both."
            )
            env["AIRFLOW__CORE__LAZY_LOAD_PLUGINS"] = "False"
            return subprocess.call([str(BIN / "airflow"), "standalone"], env=env)
        code = run_dag(env, args.date)
        if code != 0:
            print(f"The DAG run failed (exit {code}); see .demo/last_run.log")
            return code
        print_report(read_summary(env), real_api)
    return 0


@contextmanager
def _no_emulator() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
