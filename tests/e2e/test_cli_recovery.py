"""E2E with the ``airflow`` CLI, as a user runs it: 3 shards, one job EXPIRED → the run fails → the user clears
it and runs it again → exactly one new job (that shard's next generation), two re-attached, one row per key.

The commands, each a process of its own on a fresh AIRFLOW_HOME (SQLite metadata DB), against the emulator as
a process::

    airflow dags test e2e_gemini_batch_recovery 2026-01-10
    airflow tasks clear e2e_gemini_batch_recovery --start-date 2026-01-10 --end-date 2026-01-10 --yes
    airflow dags test e2e_gemini_batch_recovery 2026-01-10

``airflow dags test`` re-creates a run of the same logical date (its task state goes with it), so the second
run finds the first run's jobs through the one 48 h ``batches.list`` scan that the staging folder's create
marker calls for; the EXPIRED one is followed by its shard's next generation (``-r1``).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ROWS, SHARDS, create_sqlite_source, emulator_process
from tests.e2e.deployment import BIN, Deployment

pytestmark = pytest.mark.timeout(900)

DAG_ID = "e2e_gemini_batch_recovery"
DATE = "2026-01-10"


def _airflow(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "airflow"), *args], env=dep.env, cwd=dep.home, capture_output=True, text=True, timeout=600
    )


def test_cli_dags_test_fail_clear_rerun_makes_exactly_one_new_job(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.db"
    create_sqlite_source(warehouse)
    with emulator_process(tmp_path / "emulator") as emulator:
        dep = Deployment(
            tmp_path,
            executor="LocalExecutor",
            sql_alchemy_conn=f"sqlite:///{tmp_path / 'airflow.db'}",
            extra_env={
                "AIRFLOW_CONN_GEMINI_BATCH_DEFAULT": json.dumps(
                    {"conn_type": "gemini_batch", "host": emulator.base_url, "password": "e2e-key"}
                ),
                "AIRFLOW_CONN_E2E_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
                "AIRFLOW__GEMINI_BATCH__STAGING_PATH": str(tmp_path / "staging"),
            },
        )
        dep.migrate()
        emulator.control.set_job_behaviour(match="-00001", final_state="EXPIRED", count=1)

        first = _airflow(dep, "dags", "test", DAG_ID, DATE)
        out = first.stdout + first.stderr
        assert first.returncode != 0 and "GeminiBatchJobExpiredError" in out, out[-3000:]
        jobs = emulator.control.jobs()
        assert len(jobs) == SHARDS
        assert sorted(j["state"] for j in jobs) == ["BATCH_STATE_EXPIRED"] + ["BATCH_STATE_SUCCEEDED"] * 2
        assert emulator.control.calls().get("batches.list", 0) == 0  # a first try: no orphan scan

        cleared = _airflow(dep, "tasks", "clear", DAG_ID, "--start-date", DATE, "--end-date", DATE, "--yes")
        assert cleared.returncode == 0, cleared.stdout + cleared.stderr

        again = _airflow(dep, "dags", "test", DAG_ID, DATE)
        out = again.stdout + again.stderr
        assert again.returncode == 0, out[-3000:]
        jobs = emulator.control.jobs()
        calls = emulator.control.calls()
        assert len(jobs) == SHARDS + 1 and calls["batches.create"] == SHARDS + 1  # 4 jobs, 4 creates
        assert sorted(j["state"] for j in jobs) == ["BATCH_STATE_EXPIRED"] + ["BATCH_STATE_SUCCEEDED"] * 3
        recovered = [j for j in jobs if "-r1-" in j["display_name"]]
        assert len(recovered) == 1 and recovered[0]["display_name"].endswith("-r1-00001")
        assert calls["batches.list"] == 1  # the re-created run's one scan found the three jobs

        db = sqlite3.connect(warehouse)
        try:
            total, distinct = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT product_id) FROM e2e_recovered"
            ).fetchone()
            outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM e2e_recovered GROUP BY outcome"))
        finally:
            db.close()
        assert (total, distinct, outcomes) == (ROWS, ROWS, {"succeeded": ROWS})
        # Housekeeping: the load deleted the four uploaded input files; no shard file stays on disk.
        assert calls["files.delete"] == SHARDS + 1
        assert not list((tmp_path / "staging").rglob("shard-*.jsonl"))
