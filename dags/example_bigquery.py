"""BigQuery → Gemini batch → BigQuery: classify reviews kept in a BigQuery table, land typed answers in another.

The source table is read with the BigQuery Storage Read API (only the selected columns); the answers go to
``review_answers`` by NDJSON load jobs into a staging table and one ``MERGE`` on ``review_id``, so a rerun
updates rows instead of duplicating them and a failed load leaves the table as it was. ``incremental=True``: the
next run sends only the reviews without a succeeded answer there for the same request (new or edited ones).
Credentials are the ``google_cloud_platform`` connection's (the provider's ``BigQueryHook``).

Settings (environment): ``GEMINI_BATCH_GCP_CONN_ID`` (default ``google_cloud_default``),
``GEMINI_BATCH_BIGQUERY_DATASET`` (default ``gemini_batch_demo``), ``GEMINI_BATCH_BIGQUERY_STAGING_PATH``
(a shared ``staging_path`` such as ``gs://bucket/gemini-batch``; default the submit operator's), plus the
shared ones in ``_gemini_batch_example_settings``. ``make demo-bigquery`` runs it offline against the
BigQuery and GCS emulators.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Literal

from _gemini_batch_example_settings import DEFAULT_ARGS, MODEL, POLL_INTERVAL
from airflow.sdk import dag, task
from pydantic import BaseModel, Field

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

GCP_CONN_ID = os.environ.get("GEMINI_BATCH_GCP_CONN_ID", "google_cloud_default")
DATASET = os.environ.get("GEMINI_BATCH_BIGQUERY_DATASET", "gemini_batch_demo")
STAGING_PATH = os.environ.get("GEMINI_BATCH_BIGQUERY_STAGING_PATH") or None
REVIEWS = (
    "Arrived quickly and works perfectly, would buy again.",
    "The handle broke after two days. Very disappointed.",
    "It's fine. Does what it says, nothing more.",
    "Absolutely love the colour, but the instructions were confusing.",
)


class ReviewTopic(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    score: float = Field(ge=0, le=1, description="confidence")
    topic: str


@task
def seed_reviews() -> int:
    """Create ``<dataset>.reviews`` (500 deterministic rows, one load job) when it is absent."""
    import io

    import orjson
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    client = BigQueryHook(gcp_conn_id=GCP_CONN_ID).get_client()
    table = f"{client.project}.{DATASET}.reviews"
    client.create_dataset(DATASET, exists_ok=True)
    try:
        return client.get_table(table).num_rows or 0
    except NotFound:
        pass
    rows = (
        {"review_id": i, "body": f"{REVIEWS[i % len(REVIEWS)]} (order {1000 + i})", "stars": 1 + i % 5}
        for i in range(1, 501)
    )
    schema = [
        bigquery.SchemaField("review_id", "INT64"),
        bigquery.SchemaField("body", "STRING"),
        bigquery.SchemaField("stars", "INT64"),
    ]
    data = io.BytesIO(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    client.load_table_from_file(data, table, job_config=config).result()
    return 500


@dag(
    dag_id="gemini_batch_bigquery_reviews",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    tags=["gemini", "batch", "bigquery", "example"],
    doc_md=__doc__,
)
def gemini_batch_bigquery_reviews():
    # The load's destination, named once: the submit's incremental check reads the same table.
    destination = {"destination_conn_id": GCP_CONN_ID, "destination_table": f"{DATASET}.review_answers"}
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        source_conn_id=GCP_CONN_ID,
        source_table=f"{DATASET}.reviews",
        source_columns=["review_id", "body"],
        key_column="review_id",
        prompt_template="Classify this customer review and name its topic: {body}",
        response_schema=ReviewTopic,
        model=MODEL,
        staging_path=STAGING_PATH,
        # Reviews whose answer is already in review_answers for the same request are not sent again.
        incremental=True,
        **destination,
        destination_key_column="review_id",
    )
    wait = GeminiBatchJobSensor(
        task_id="wait", manifest=submit.output, poll_interval=POLL_INTERVAL, deferrable=True
    )
    load = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=submit.output,
        **destination,
        key_column="review_id",
        key_column_type="INT64",
        output_columns={"sentiment": "STRING", "score": "FLOAT64", "topic": "STRING"},
        time_partitioning={"type": "DAY", "field": "loaded_at"},
        cluster_fields=["outcome"],
    )
    seed_reviews() >> submit >> wait >> load


gemini_batch_bigquery_reviews()
