"""Embeddings: product names → ``gemini-embedding-001`` batch → one vector per product id.

Vectors land as a float array on PostgreSQL and as JSON text on SQLite, keyed by product id, ready for a
similarity search. Embedding batches bill input tokens only, at half the interactive price.
"""

from __future__ import annotations

from datetime import datetime

from _gemini_batch_example_settings import DEFAULT_ARGS, POLL_INTERVAL, WAREHOUSE_CONN_ID, seed_table_once
from airflow.sdk import dag, task

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor


@task
def seed_catalog() -> int:
    words = ("lamp", "chair", "kettle", "rake", "hammer", "notebook", "tent", "mug")
    return seed_table_once(
        "catalog",
        "CREATE TABLE IF NOT EXISTS catalog (sku INTEGER PRIMARY KEY, title TEXT NOT NULL)",
        ["sku", "title"],
        lambda: ((i, f"{words[i % 8]} model {i}") for i in range(1, 401)),
    )


@dag(
    dag_id="gemini_batch_product_embeddings",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    tags=["gemini", "batch", "embeddings", "example"],
    doc_md=__doc__,
)
def gemini_batch_product_embeddings():
    # The load's destination, named once: the submit's incremental check reads the same table.
    destination = {"destination_conn_id": WAREHOUSE_CONN_ID, "destination_table": "catalog_embeddings"}
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        task="embed",
        model="gemini-embedding-001",
        source_conn_id=WAREHOUSE_CONN_ID,
        sql="SELECT sku, title FROM catalog ORDER BY sku",
        key_column="sku",
        prompt_column="title",
        embedding_task_type="RETRIEVAL_DOCUMENT",
        output_dimensionality=256,
        # Rows whose answer is already in the destination for the same request are not sent again.
        incremental=True,
        **destination,
        destination_key_column="sku",
    )
    wait = GeminiBatchJobSensor(
        task_id="wait", manifest=submit.output, poll_interval=POLL_INTERVAL, deferrable=True
    )
    load = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=submit.output,
        **destination,
        key_column="sku",
        key_column_type="INTEGER",
    )
    seed_catalog() >> submit >> wait >> load


gemini_batch_product_embeddings()
