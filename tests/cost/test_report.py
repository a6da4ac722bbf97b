"""A run's money for the UI: from the manifest and the results summary, None where a document is missing."""

from __future__ import annotations

from airflow_gemini_batch.cost.report import run_cost_report


def test_estimate_actual_reuse_and_caching_from_the_two_documents() -> None:
    manifest = {
        "request_count": 30,
        "reused": 2970,
        "reused_cost_usd": 0.0123,
        "estimate": {"cost_usd": 0.002, "max_cost_usd": 50, "input_tokens": 900, "output_tokens": 3000,
                     "method": "count_tokens", "prices_as_of": "2026-01-15"},
    }  # fmt: skip
    waiting = run_cost_report(manifest, None)
    assert waiting["estimate_usd"] == 0.002 and waiting["max_cost_usd"] == 50.0
    assert (
        waiting["actual_usd"] is None and waiting["reused"] == 2970 and waiting["reuse_saved_usd"] == 0.0123
    )
    summary = {"cost": {"batch": 0.0015, "standard": 0.003, "caching_saved": 0.0004, "prices_as_of": "x"},
               "reuse_saved": 0.0124}  # fmt: skip
    loaded = run_cost_report(manifest, summary)
    assert (loaded["actual_usd"], loaded["standard_usd"], loaded["caching_saved_usd"]) == (
        0.0015,
        0.003,
        0.0004,
    )
    assert loaded["reuse_saved_usd"] == 0.0124  # the load's figure wins over the submit's
    assert run_cost_report({}, None)["estimate_usd"] is None  # an older manifest: no estimate, no guess
