"""The budget: a run whose estimate exceeds ``max_cost_usd`` is refused before anything is uploaded.

Invariant: money is spent only on purpose. With a budget set, a run is let through only when its estimate
(:mod:`airflow_gemini_batch.cost.estimate`, output tokens at their bound or expectation) is priced and within
it; a model without a price cannot be shown to fit, so it is refused too, with the way to price it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_gemini_batch.exceptions import GeminiBatchBudgetError

if TYPE_CHECKING:
    from airflow_gemini_batch.cost.estimate import RunEstimate


def check_budget(estimate: RunEstimate) -> None:
    """:class:`GeminiBatchBudgetError` when ``estimate.max_cost_usd`` is set and the estimate does not fit."""
    budget = estimate.max_cost_usd
    if budget is None:
        return
    if estimate.cost_usd is None:
        raise GeminiBatchBudgetError(
            f"max_cost_usd=${budget:.2f} is set but model {estimate.model!r} has no price (table as of "
            f"{estimate.prices_as_of}), so the run cannot be shown to fit; nothing was uploaded. Fix: give its "
            f"price with prices={{{estimate.model!r}: {{'input': ..., 'output': ...}}}} (USD per 1M tokens) "
            "or [gemini_batch] prices, or drop max_cost_usd."
        )
    if estimate.cost_usd > budget:
        raise GeminiBatchBudgetError(
            f"Estimated cost ${estimate.cost_usd:.4f} exceeds max_cost_usd=${budget:.4f}; nothing was "
            f"uploaded. Estimate: {estimate.describe()}. Fix: raise max_cost_usd, lower max_output_tokens "
            "(generation_config) or expected_output_tokens if the output bound is what is large, pick a "
            "cheaper model, or submit fewer rows (e.g. a narrower WHERE, or incremental=True)."
        )
