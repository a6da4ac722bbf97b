"""Structured output: classify customer reviews with a response schema and land typed columns.

Each review becomes a request whose answer must be JSON matching ``ReviewSentiment``; the loader parses it,
checks it against the schema (a mismatch is an ``invalid_output`` row, never a crash), and maps its fields to
typed columns of ``review_sentiment`` so analysts can ``GROUP BY sentiment`` directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from _gemini_batch_example_settings import (
    DEFAULT_ARGS,
    MODEL,
    POLL_INTERVAL,
    WAREHOUSE_CONN_ID,
    seed_table_once,
)
from airflow.sdk import dag, task
from pydantic import BaseModel, Field

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

REVIEWS = (
    "Arrived quickly and works perfectly, would buy again.",
    "The handle broke after two days. Very disappointed.",
    "It's fine. Does what it says, nothing more.",
    "Absolutely love the colour, but the instructions were confusing.",
    "Terrible customer service, still waiting for a refund.",
)


class ReviewSentiment(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    score: float = Field(ge=0, le=1, description="confidence")
    topic: str


@task
def seed_reviews() -> int:
    return seed_table_once(
        "reviews",
        "CREATE TABLE IF NOT EXISTS reviews (review_id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        ["review_id", "body"],
        lambda: ((i, f"{REVIEWS[i % len(REVIEWS)]} (order {1000 + i})") for i in range(1, 501)),
    )


@dag(
    dag_id="gemini_batch_review_sentiment",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    tags=["gemini", "batch", "structured-output", "example"],
    doc_md=__doc__,
)
def gemini_batch_review_sentiment():
    # The load's destination, named once: the submit's incremental check reads the same table.
    destination = {"destination_conn_id": WAREHOUSE_CONN_ID, "destination_table": "review_sentiment"}
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        source_conn_id=WAREHOUSE_CONN_ID,
        sql="SELECT review_id, body FROM reviews ORDER BY review_id",
        key_column="review_id",
        prompt_template="Classify the sentiment of this customer review: {body}",
        response_schema=ReviewSentiment,
        model=MODEL,
        # Rows whose answer is already in the destination for the same request are not sent again.
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
        key_column_type="INTEGER",
        output_columns={"sentiment": "TEXT", "score": "REAL", "topic": "TEXT"},
    )
    seed_reviews() >> submit >> wait >> load


gemini_batch_review_sentiment()
