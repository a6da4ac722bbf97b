"""Reliability: money is spent only on purpose (architecture invariant 10) — the estimate before any upload,
the budget that refuses a run over it, and what happens when the service cannot count tokens.

The end state is read where a user would look: task states and logs, the emulator's call counters (uploads,
creates, countTokens), the manifest and the load summary.
"""

from __future__ import annotations

import math
from typing import Any

from tests.conftest import xcom_of
from tests.reliability.helpers import pipeline, run_inline, ti_states, unique_dag_id

N = 120


def test_R66_a_run_over_max_cost_usd_is_refused_before_any_upload(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path
) -> None:
    wh, src, dst = tables
    dag = pipeline(
        unique_dag_id("budget"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=tmp_path / "staging",
        # 120 requests x 8192 output tokens at the 2.5 Pro batch price (5 USD / 1M) ~ 4.9 USD > 1 USD.
        submit={
            "model": "gemini-2.5-pro",
            "generation_config": {"maxOutputTokens": 8192},
            "max_cost_usd": 1.0,
        },
        default_args={"retries": 2},
    )
    run = run_dag(dag)
    assert run.state == "failed"
    assert ti_states(run) == {"submit": "failed", "wait": "upstream_failed", "load": "upstream_failed"}
    calls = emulator.control.calls()
    assert calls["files.upload_start"] == 0 and calls["batches.create"] == 0
    assert calls["models.countTokens"] == 1  # the sample, once: a budget refusal is not retried
    assert emulator.control.jobs() == []
    text = all_logs.text
    assert "GeminiBatchBudgetError" in text
    assert "exceeds max_cost_usd=$1.0000; nothing was uploaded" in text
    assert "for 120 requests" in text and "≤983,040 output tokens (max_output_tokens)" in text
    assert "Fix: raise max_cost_usd, lower max_output_tokens" in text


def test_R67_the_manifests_estimate_is_within_5_percent_of_the_actual_usage(
    tables, gemini_conn, emulator, tmp_path
) -> None:
    """The emulator counts and reports usage by the same documented rule, so input tokens estimated from a
    64-request sample of 120 land within 5 % of the tokens billed; the output bound covers the output, and
    the cost estimate covers the cost. The estimate is also in the load's summary, beside the actual."""
    wh, src, dst = tables
    manifest, _, summary = run_inline(
        wh, src, dst, tmp_path / "st",
        submit={"generation_config": {"maxOutputTokens": 64}, "max_cost_usd": 1.0},
    )  # fmt: skip
    estimate = manifest["estimate"]
    assert estimate["method"] == "count_tokens" and estimate["sample_requests"] == 64
    actual = summary["tokens"]
    assert math.isclose(estimate["input_tokens"], actual["prompt"], rel_tol=0.05)
    assert estimate["output_tokens"] == N * 64 >= actual["output"]
    assert estimate["cost_usd"] >= summary["cost"]["batch"] > 0
    assert summary["estimate"] == {"cost_usd": estimate["cost_usd"], "input_tokens": estimate["input_tokens"],
                                   "output_tokens": estimate["output_tokens"]}  # fmt: skip
    assert emulator.control.calls()["models.countTokens"] == 1


def test_R68_when_count_tokens_fails_the_estimate_falls_back_and_the_run_goes_on(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path
) -> None:
    wh, src, dst = tables
    emulator.control.inject_fault("models.countTokens", status=403)
    dag = pipeline(
        unique_dag_id("nocount"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=tmp_path / "staging",
        submit={"max_cost_usd": 5.0},
    )
    run = run_dag(dag)
    assert run.state == "success"
    estimate: dict[str, Any] = xcom_of(run, "submit")["estimate"]
    assert estimate["method"] == "heuristic" and estimate["max_cost_usd"] == 5.0
    assert estimate["output_basis"] == "expected_output_tokens"
    assert "countTokens failed (ClientError" in all_logs.text
    assert len(emulator.control.jobs()) == 1


def test_R67_a_cached_prefix_is_in_the_estimate_at_the_cache_price(
    tables, gemini_conn, emulator, tmp_path
) -> None:
    """With ``shared_context`` the request lines only name the cache; the estimate adds its tokens to every
    request (at the cache price, plus storage for the TTL), so it still lands near the billed prompt tokens."""
    wh, src, dst = tables
    manifest, _, summary = run_inline(
        wh, src, dst, tmp_path / "st",
        submit={"shared_context": "The manual says: " + "use the product well. " * 220,
                "generation_config": {"maxOutputTokens": 64}},
    )  # fmt: skip
    estimate, actual = manifest["estimate"], summary["tokens"]
    assert actual["cached"] > 0
    assert math.isclose(estimate["input_tokens"], actual["prompt"], rel_tol=0.05)
    assert estimate["cost_usd"] >= summary["cost"]["batch"] > 0
