"""The DAG of the CLI recovery scenario (``tests/e2e/test_cli_recovery.py``): the README's shape over a SQLite
warehouse, 3 shards of 1000 rows, run by a user with ``airflow dags test`` / ``airflow tasks clear``.

Only public paths of the package are imported.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor


@dag(
    dag_id="e2e_gemini_batch_recovery",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["e2e"],
)
def e2e_gemini_batch_recovery():
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        source_conn_id="e2e_warehouse",
        sql="SELECT id, name, category FROM e2e_products ORDER BY id",
        key_column="id",
        prompt_template="Describe {name}, a {category} product, in one sentence.",
        max_requests_per_job=1000,
    )
    wait = GeminiBatchJobSensor(task_id="wait", manifest=submit.output, poll_interval=1.0, deferrable=True)
    load = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=submit.output,
        destination_conn_id="e2e_warehouse",
        destination_table="e2e_recovered",
        key_column="product_id",
        key_column_type="INTEGER",
    )
    submit >> wait >> load


e2e_gemini_batch_recovery()
