"""E2E on a real LocalExecutor deployment: api-server, scheduler, dag-processor and triggerer as processes.

One deployment for the module (SQLite metadata DB — Airflow 3.3 allows LocalExecutor on SQLite); the Gemini
emulator is a process too; the tests drive Airflow only through the REST API and look at the emulator through
its control API and at the warehouse through SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROWS, SHARDS, Emulator, create_sqlite_source, emulator_process
from tests.e2e.deployment import Deployment, poll
from tests.e2e.scenario import run_and_rerun

pytestmark = pytest.mark.timeout(900)

DAG_ID = "e2e_gemini_batch_local"
DOWNSTREAM_DAG_ID = "e2e_gemini_batch_downstream"


def destination_asset(warehouse: Path) -> str:
    """The Asset URI our load publishes for a SQLite table (the README's ``x-sqlite`` scheme)."""
    return f"x-sqlite://localhost{warehouse}/e2e_descriptions"


@dataclass
class LocalSetup:
    deployment: Deployment
    emulator: Emulator
    warehouse: Path


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSetup]:
    root = tmp_path_factory.mktemp("e2e-local")
    warehouse = root / "warehouse.db"
    create_sqlite_source(warehouse)
    with emulator_process(root / "emulator") as emulator:
        deployment = Deployment(
            root,
            executor="LocalExecutor",
            sql_alchemy_conn=f"sqlite:///{root / 'airflow.db'}",
            extra_env={
                "AIRFLOW_CONN_GEMINI_BATCH_DEFAULT": json.dumps(
                    {"conn_type": "gemini_batch", "host": emulator.base_url, "password": "e2e-key"}
                ),
                "AIRFLOW_CONN_E2E_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
                "GEMINI_E2E_DESTINATION_ASSET": destination_asset(warehouse),
                # The openlineage provider's own listener, writing its events to a file we read back.
                "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                    {"type": "file", "log_file_path": str(root / "openlineage.jsonl"), "append": True}
                ),
            },
        )
        with deployment:
            deployment.migrate()
            deployment.start_core()
            deployment.wait_healthy()
            yield LocalSetup(deployment, emulator, warehouse)


def _destination_rows(warehouse: Path) -> tuple[int, int, dict[str, int]]:
    db = sqlite3.connect(warehouse)
    try:
        total, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT product_id) FROM e2e_descriptions"
        ).fetchone()
        outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM e2e_descriptions GROUP BY outcome"))
        return total, distinct, outcomes
    finally:
        db.close()


def test_local_executor_run_defers_shards_once_and_a_clear_reattaches(local: LocalSetup) -> None:
    dep = local.deployment
    dep.wait_dag_parsed(DOWNSTREAM_DAG_ID)
    dep.api.patch(f"dags/{DOWNSTREAM_DAG_ID}", {"is_paused": False})
    outcome = run_and_rerun(
        local.deployment, local.emulator, DAG_ID, lambda: _destination_rows(local.warehouse)
    )
    assert outcome.first_tis["wait"]["state"] == "success"
    # Every key once, and the text is the emulator's answer to that key's own prompt.
    db = sqlite3.connect(local.warehouse)
    try:
        text = db.execute("SELECT text FROM e2e_descriptions WHERE product_id = 7").fetchone()[0]
    finally:
        db.close()
    assert "product 7" in text and "garden" in text, text
    assert len(outcome.jobs) == SHARDS and sum(j["request_count"] for j in outcome.jobs) == ROWS

    # The load published its destination table as an Asset: the DAG scheduled on it was triggered by the
    # scheduler, once per successful load (the run and its rerun), with the load's counts on the event.
    def downstream_runs() -> list[dict[str, Any]] | None:
        runs = dep.api.get(f"dags/{DOWNSTREAM_DAG_ID}/dagRuns")["dag_runs"]
        done = [r for r in runs if r["state"] == "success"]
        return done if len(done) >= 1 else None

    runs = poll("the asset-triggered downstream run", downstream_runs, 180, interval=1.0)
    assert {r["run_type"] for r in runs} == {"asset_triggered"}, runs
    # The downstream task returned the extras of the asset events that triggered it: the load's counts.
    # (Read back from its XCom: 3.3.2's /assets/events endpoint fails to serialise these events.)
    entry = dep.api.get(
        f"dags/{DOWNSTREAM_DAG_ID}/dagRuns/{runs[0]['dag_run_id']}/taskInstances/report/xcomEntries/return_value",
        params={"deserialize": True, "stringify": False},
    )
    extras = entry["value"]
    assert extras and all(e["counts"]["succeeded"] == ROWS for e in extras), extras

    # OpenLineage, as the provider's listener emitted it: the submit read the source table, the load wrote
    # the destination, both named by the README's SQLite convention, with the batch jobs and counts.
    def lineage_events() -> dict[str, dict[str, Any]] | None:
        path = local.warehouse.parent / "openlineage.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        complete = [json.loads(x) for x in lines if x.strip()]
        complete = [
            e for e in complete if e["eventType"] == "COMPLETE" and e["job"]["name"].startswith(DAG_ID)
        ]
        by_task = {e["job"]["name"].split(".")[-1]: e for e in complete}
        return by_task if {"submit", "load"} <= set(by_task) else None

    lineage = poll("OpenLineage COMPLETE events of submit and load", lineage_events, 120, interval=1.0)
    submit, load = lineage["submit"], lineage["load"]
    assert [(d["namespace"], d["name"]) for d in submit["inputs"]] == [
        ("sqlite://localhost", f"{local.warehouse}.main.e2e_products")
    ]
    assert [(d["namespace"], d["name"]) for d in load["outputs"]] == [
        ("sqlite://localhost", f"{local.warehouse}.main.e2e_descriptions")
    ]
    facet = load["run"]["facets"]["geminiBatch"]
    assert facet["counts"]["succeeded"] == ROWS and len(facet["jobs"]) == SHARDS, facet
    assert sorted(submit["run"]["facets"]["geminiBatch"]["jobs"]) == sorted(facet["jobs"])


def test_the_ui_plugin_is_served_by_the_real_api_server(local: LocalSetup) -> None:
    """The package's plugin (Browse → Gemini Batches) is mounted by a real api-server and needs a login."""
    dep = local.deployment
    anonymous = httpx.get(f"{dep.base_url}/gemini-batch/api/jobs", timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    token = dep.api.token()
    authed = httpx.get(
        f"{dep.base_url}/gemini-batch/api/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert authed.status_code == 200, authed.text
    plugins = dep.api.get("plugins")
    assert any(p["name"] == "gemini_batch" for p in plugins["plugins"]), plugins
