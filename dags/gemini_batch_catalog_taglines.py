"""One task for the whole batch: catalog items → Gemini batch → taglines, with rows that failed for a transient
reason (429, 5xx, no answer) sent again in a follow-up batch.

``GeminiBatchOperator`` submits, waits in the triggerer (no worker held), loads the answers into
``catalog_taglines`` keyed by item id, then resubmits only the retryable remainder — up to two more rounds.
Each row records its ``attempts``; a row that succeeded is never sent again. ``incremental=True``: the next
day's run sends only the items whose request changed (or that have no succeeded tagline yet); the others are
reported as ``reused``.
"""

from __future__ import annotations

from datetime import datetime

from _gemini_batch_example_settings import (
    DEFAULT_ARGS,
    MODEL,
    POLL_INTERVAL,
    WAREHOUSE_CONN_ID,
    seed_table_once,
)
from airflow.sdk import dag, task

from airflow_gemini_batch.operators.batch import GeminiBatchOperator

ITEM_COUNT = 500
KINDS = ("lamp", "chair", "kettle", "backpack", "notebook")


@task
def seed_items() -> int:
    """Create and fill ``catalog_items`` if it does not exist yet (deterministic rows)."""
    return seed_table_once(
        "catalog_items",
        "CREATE TABLE IF NOT EXISTS catalog_items (id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
        ["id", "title"],
        lambda: ((i, f"{KINDS[i % 5]} no. {i}") for i in range(1, ITEM_COUNT + 1)),
    )


@dag(
    dag_id="gemini_batch_catalog_taglines",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    tags=["gemini", "batch", "example"],
    doc_md=__doc__,
)
def gemini_batch_catalog_taglines():
    taglines = GeminiBatchOperator(
        task_id="taglines",
        source_conn_id=WAREHOUSE_CONN_ID,
        sql="SELECT id, title FROM catalog_items ORDER BY id",
        key_column="id",
        prompt_template="Write a five-word tagline for a {title}.",
        model=MODEL,
        destination_conn_id=WAREHOUSE_CONN_ID,
        destination_table="catalog_taglines",
        key_column_type="INTEGER",
        max_row_retries=2,
        incremental=True,
        poll_interval=POLL_INTERVAL,
        deferrable=True,
    )
    seed_items() >> taglines


gemini_batch_catalog_taglines()
