"""The main job: a warehouse table of products → Gemini batch → a table of product descriptions, nightly.

``products`` (seeded with a few thousand deterministic rows when absent) is read in batches, each row becomes a
prompt through a ``{column}`` template, the requests go to Gemini's Batch Mode at half the interactive price,
the sensor waits in the triggerer without holding a worker, and the answers are upserted into
``product_descriptions`` keyed by product id — with every row accounted for and the cost reported.
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

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

PRODUCT_COUNT = 3000
CATEGORIES = ("kitchen", "garden", "tools", "outdoor", "office", "toys")
MATERIALS = ("oak", "steel", "bamboo", "recycled plastic", "ceramic", "linen")


@task
def seed_products() -> int:
    """Create and fill ``products`` if it does not exist yet (deterministic, so reruns see the same input)."""
    return seed_table_once(
        "products",
        "CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "category TEXT NOT NULL, material TEXT NOT NULL, price_cents INTEGER NOT NULL)",
        ["id", "name", "category", "material", "price_cents"],
        lambda: (
            (i, f"{MATERIALS[i % 6].title()} {CATEGORIES[i % 6 - 1]} item #{i}", CATEGORIES[i % 6 - 1],
             MATERIALS[i % 6], 499 + (i * 37) % 20000)
            for i in range(1, PRODUCT_COUNT + 1)
        ),
    )  # fmt: skip


@task
def report(summary: dict) -> dict:
    """Log what the run did: rows in, outcomes, tokens, and what it cost against the interactive price."""
    counts, cost, tokens = summary["counts"], summary.get("cost") or {}, summary.get("tokens") or {}
    outcomes = ", ".join(f"{outcome}={n}" for outcome, n in counts.items())
    reused = summary.get("reused", 0)
    print(
        f"Gemini batch report: {summary['request_count']} requests sent, {reused} reused, "
        f"{len(summary['jobs'])} job(s); {outcomes}; {tokens.get('total')} tokens; cost ${cost.get('batch')} "
        f"at batch price vs ${cost.get('standard')} at the standard price; re-sending the reused rows would "
        f"have cost ${summary.get('reused_cost_usd')}"
    )
    return {"counts": counts, "cost": cost}


@dag(
    dag_id="gemini_batch_product_descriptions",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    tags=["gemini", "batch", "example"],
    doc_md=__doc__,
)
def gemini_batch_product_descriptions():
    seeded = seed_products()
    # The load's destination, named once: the submit's incremental check reads the same table.
    destination = {"destination_conn_id": WAREHOUSE_CONN_ID, "destination_table": "product_descriptions"}
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        source_conn_id=WAREHOUSE_CONN_ID,
        sql="SELECT id, name, category, material, price_cents FROM products ORDER BY id",
        key_column="id",
        prompt_template=(
            "Write a two-sentence product description for '{name}', a {category} product made of {material}, "
            "priced at {price_cents} cents. Be concrete and avoid superlatives."
        ),
        system_instruction="You write concise, factual e-commerce copy.",
        generation_config={"temperature": 0.4, "maxOutputTokens": 120},
        model=MODEL,
        # Rows whose answer is already in the destination for the same request are not sent again.
        incremental=True,
        **destination,
        destination_key_column="product_id",
    )
    wait = GeminiBatchJobSensor(
        task_id="wait",
        manifest=submit.output,
        poll_interval=POLL_INTERVAL,
        deferrable=True,
    )
    load = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=submit.output,
        **destination,
        key_column="product_id",
        key_column_type="INTEGER",
    )
    seeded >> submit >> wait >> load
    report(load.output)


gemini_batch_product_descriptions()
