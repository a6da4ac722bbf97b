"""The e2e tests' DAGs: the README's shape (submit → deferrable sensor → load) over a warehouse table.

* ``e2e_gemini_batch_local`` (LocalExecutor): a SQLite warehouse, 3 shards of 1000 rows.
* ``e2e_gemini_batch_downstream`` (LocalExecutor): scheduled on the Asset the local load publishes for its
  destination table (``GEMINI_E2E_DESTINATION_ASSET``, set by the deployment: the warehouse is a temp file).
* ``e2e_gemini_batch_celery`` (CeleryExecutor): a PostgreSQL warehouse, submit pinned to one worker's queue and
  load to the other's; the key lists go to a shared ``staging_path`` (both workers reach it), templated from the
  Airflow Variable ``gemini_e2e_staging`` so the file parses anywhere.

Only public paths of the package are imported. Queue names come from the environment (the deployment gives
them a per-session suffix, so a stale message in Redis can never reach this session's workers).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import Asset, dag, task

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

ROWS_PER_SHARD = 1000
PROMPT = "Describe {name}, a {category} product, in one sentence."
SQL = "SELECT id, name, category FROM e2e_products ORDER BY id"
QUEUE_A = os.environ.get("GEMINI_E2E_QUEUE_A", "e2e_a")
QUEUE_B = os.environ.get("GEMINI_E2E_QUEUE_B", "e2e_b")
DESTINATION_ASSET = os.environ.get("GEMINI_E2E_DESTINATION_ASSET")


def _pipeline(warehouse: str, submit_kw: dict, wait_kw: dict, load_kw: dict) -> None:
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        source_conn_id=warehouse,
        sql=SQL,
        key_column="id",
        prompt_template=PROMPT,
        max_requests_per_job=ROWS_PER_SHARD,
        **submit_kw,
    )
    wait = GeminiBatchJobSensor(
        task_id="wait", manifest=submit.output, poll_interval=1.0, deferrable=True, **wait_kw
    )
    load = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=submit.output,
        destination_conn_id=warehouse,
        destination_table="e2e_descriptions",
        key_column="product_id",
        key_column_type="INTEGER",
        **load_kw,
    )
    submit >> wait >> load


@dag(
    dag_id="e2e_gemini_batch_local",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
    tags=["e2e"],
)
def e2e_gemini_batch_local():
    _pipeline("e2e_warehouse", {}, {}, {})


@dag(
    dag_id="e2e_gemini_batch_celery",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
    tags=["e2e"],
)
def e2e_gemini_batch_celery():
    _pipeline(
        "e2e_warehouse",
        {"queue": QUEUE_A, "staging_path": "{{ var.value.gemini_e2e_staging }}"},
        {"queue": QUEUE_B},
        {"queue": QUEUE_B},
    )


if DESTINATION_ASSET:

    @dag(
        dag_id="e2e_gemini_batch_downstream",
        schedule=[Asset(uri=DESTINATION_ASSET, name=DESTINATION_ASSET)],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["e2e"],
    )
    def e2e_gemini_batch_downstream():
        @task
        def report(**context):
            events = context["triggering_asset_events"]
            return [event.extra for evs in events.values() for event in evs]

        report()

    e2e_gemini_batch_downstream()

e2e_gemini_batch_local()
e2e_gemini_batch_celery()
