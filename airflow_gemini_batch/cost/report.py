"""A run's money in one small dict: what was estimated before it, what it spent, what it saved.

Read by the UI page from the two documents our operators record: the submit manifest (the estimate, the
budget, the rows an incremental run reused and what re-sending them would have cost) and the load's results
summary (the actual cost at the batch and standard price, the context cache's storage within it, what caching
saved). Either may be missing (a run
still waiting has no summary; an older manifest no estimate): the fields are then None, never guessed.
"""

from __future__ import annotations

from typing import Any


def _float(value: Any) -> float | None:
    return round(float(value), 6) if isinstance(value, (int, float)) else None


def run_cost_report(manifest: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    """``estimate_usd`` / ``max_cost_usd`` / estimated tokens (the manifest), ``actual_usd`` (spent at the
    batch price, cache storage included), ``standard_usd``, ``cache_storage_usd`` (the context cache's storage:
    tokens x hours it lived x price), ``caching_saved_usd`` (the summary), ``reused`` rows and
    ``reuse_saved_usd`` (the summary's, else the manifest's ``reused_cost_usd``)."""
    found_estimate, found_cost = manifest.get("estimate"), (summary or {}).get("cost")
    estimate: dict[str, Any] = found_estimate if isinstance(found_estimate, dict) else {}
    cost: dict[str, Any] = found_cost if isinstance(found_cost, dict) else {}
    reuse_saved = (summary or {}).get("reuse_saved")
    if reuse_saved is None:
        reuse_saved = manifest.get("reused_cost_usd")
    return {
        "requests": manifest.get("request_count"),
        "estimate_usd": _float(estimate.get("cost_usd")),
        "max_cost_usd": _float(estimate.get("max_cost_usd")),
        "estimated_input_tokens": estimate.get("input_tokens"),
        "estimated_output_tokens": estimate.get("output_tokens"),
        "estimate_method": estimate.get("method"),
        "actual_usd": _float(cost.get("batch")),
        "standard_usd": _float(cost.get("standard")),
        "cache_storage_usd": _float(cost.get("cache_storage")),
        "caching_saved_usd": _float(cost.get("caching_saved")),
        "reused": int(manifest.get("reused") or 0),
        "reuse_saved_usd": _float(reuse_saved),
        "prices_as_of": cost.get("prices_as_of") or estimate.get("prices_as_of"),
    }
