"""A cached run's actual cost includes the context cache's storage: its tokens times the hours it lived (the
service's create time, recorded in the manifest, to the load's delete, recorded in the summary) times the
model's ``cache_storage`` price; the load summary and the UI's run-cost report show it."""

from __future__ import annotations

import datetime
import math

import pytest

from airflow_gemini_batch.cost.pricing import PER_MILLION, compute_cost
from airflow_gemini_batch.cost.report import run_cost_report
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from tests.reliability.helpers import StateStore, context, load_op, submit_op

N = 6
DOCUMENT = "The catalogue's style guide: plain words, no superlatives, two sentences. " * 60
CACHE_TOKENS = math.ceil(len(DOCUMENT) / 4)  # the emulator's count: ~4 characters a token
#: USD per 1 M tokens per hour, high enough that a few seconds of storage show at six decimals
STORAGE_PRICE = 1_000_000.0


def test_a_cached_run_pays_storage_for_the_hours_its_cache_lived(
    gemini_conn, emulator, tmp_path, sqlite_warehouse
):
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, N)
    sql = f"SELECT id, name, category FROM {src}"
    manifest = submit_op(wh.conn_id, sql, tmp_path / "staging", shared_context=DOCUMENT).execute(
        context(StateStore())
    )
    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute({})
    prices = {manifest["model"]: {"cache_storage": STORAGE_PRICE}}
    summary = load_op(wh.conn_id, dst, manifest, prices=prices).execute(context(task_id="load"))

    [served] = emulator.control.caches()
    assert served["deleted"] is True and served["usageMetadata"]["totalTokenCount"] == CACHE_TOKENS
    created = datetime.datetime.fromisoformat(served["createTime"].replace("Z", "+00:00")).timestamp()
    assert manifest["context_cache"]["create_time"] == pytest.approx(created, abs=1e-6)

    lifetime = summary["context_cache"]
    assert (lifetime["name"], lifetime["token_count"], lifetime["deleted"]) == (
        served["name"],
        CACHE_TOKENS,
        True,
    )
    assert lifetime["create_time"] == manifest["context_cache"]["create_time"]
    hours = (lifetime["end_time"] - lifetime["create_time"]) / 3600
    assert lifetime["hours"] == hours > 0
    storage = CACHE_TOKENS * hours * STORAGE_PRICE / PER_MILLION
    cost = summary["cost"]
    assert cost["cache_storage"] == round(storage, 6) > 0
    # Spent includes it (at both prices), and caching saved is net of it.
    without = compute_cost(manifest["model"], summary["tokens"], overrides=prices)
    assert cost["batch"] == pytest.approx(without["batch"] + storage, abs=2e-6)
    assert cost["standard"] == pytest.approx(without["standard"] + storage, abs=2e-6)
    assert cost["caching_saved"] == pytest.approx(without["caching_saved"] - storage, abs=2e-6)
    # A job's cost is its tokens only: storage belongs to the task.
    assert all(job["cost"]["cache_storage"] == 0.0 for job in summary["jobs"])

    report = run_cost_report(manifest, summary)
    assert report["cache_storage_usd"] == cost["cache_storage"]
    assert report["actual_usd"] == cost["batch"]


def test_a_run_without_a_cache_has_no_storage_cost(gemini_conn, emulator, tmp_path, sqlite_warehouse):
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, N)
    manifest = submit_op(wh.conn_id, f"SELECT id, name, category FROM {src}", tmp_path / "staging").execute(
        context(StateStore())
    )
    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute({})
    summary = load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))
    assert summary["context_cache"] is None and summary["cost"]["cache_storage"] == 0.0
    assert run_cost_report(manifest, summary)["cache_storage_usd"] == 0.0
