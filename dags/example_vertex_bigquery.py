"""BigQuery → Vertex AI batch prediction → BigQuery, with no row passing through the Airflow worker.

The submit task builds the request table inside BigQuery (one query job: ``review_id`` and a ``request`` JSON
column from the prompt template, the template's text bound as query parameters), checks it there (counts and
the first keys of invalid rows come back, not rows) and creates one Vertex AI batch prediction job reading
``bq://…requests`` and writing ``bq://…predictions``. The wait runs in the triggerer. The load is SQL in
BigQuery: the predictions classified per key against the request table (``missing`` by an anti-join), one
``MERGE`` into ``review_answers_vertex`` and one into its errors table. A rerun for the same logical date
re-attaches to the job instead of paying again.

Settings (environment): ``GEMINI_BATCH_VERTEX_CONN_ID`` (a ``google_cloud_platform`` connection, default
``google_cloud_default``; its ``vertex_location`` extra is the region), ``GEMINI_BATCH_BIGQUERY_DATASET``
(default ``gemini_batch_demo``; Vertex AI needs a regional dataset), ``GEMINI_BATCH_VERTEX_DATASET`` (the
request and prediction tables, default ``gemini_batch_vertex``), plus the shared ones in
``_gemini_batch_example_settings``. tests/test_example_dags.py runs it offline against the emulators.
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

VERTEX_CONN_ID = os.environ.get("GEMINI_BATCH_VERTEX_CONN_ID", "google_cloud_default")
DATASET = os.environ.get("GEMINI_BATCH_BIGQUERY_DATASET", "gemini_batch_demo")
VERTEX_DATASET = os.environ.get("GEMINI_BATCH_VERTEX_DATASET", "gemini_batch_vertex")
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

    client = BigQueryHook(gcp_conn_id=VERTEX_CONN_ID).get_client()
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
    dag_id="gemini_batch_vertex_bigquery_reviews",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    tags=["gemini", "batch", "bigquery", "vertex", "example"],
    doc_md=__doc__,
)
def gemini_batch_vertex_bigquery_reviews():
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        gemini_conn_id=VERTEX_CONN_ID,  # a google_cloud_platform connection: the Vertex AI backend
        source_conn_id=VERTEX_CONN_ID,
        source_table=f"{DATASET}.reviews",
        source_columns=["review_id", "body"],
        key_column="review_id",
        prompt_template="Classify this customer review and name its topic: {body}",
        response_schema=ReviewTopic,
        model=MODEL,
        bigquery_temp_dataset=VERTEX_DATASET,
    )
    wait = GeminiBatchJobSensor(
        task_id="wait", manifest=submit.output, poll_interval=POLL_INTERVAL, deferrable=True
    )
    load = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=submit.output,
        destination_conn_id=VERTEX_CONN_ID,
        destination_table=f"{DATASET}.review_answers_vertex",
        key_column="review_id",
        key_column_type="INT64",
        output_columns={"sentiment": "STRING", "score": "FLOAT64", "topic": "STRING"},
    )
    seed_reviews() >> submit >> wait >> load


gemini_batch_vertex_bigquery_reviews()
