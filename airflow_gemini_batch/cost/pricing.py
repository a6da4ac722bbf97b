"""The cost of token usage: at the batch price (what is spent), at the standard price (for comparison), and
what context caching saved; the price table itself is :mod:`airflow_gemini_batch.cost.prices`.

Invariants: a cost is only computed from a price the table or an override has; an unknown model gives
``None`` amounts and one warning, never a guess and never a failed task (the rows are what matter). The rules
(cache hits at the cache price in batch too, thinking billed as output, embeddings input only, the long-context
tier per request) are applied here and nowhere else, so the estimate before a run and the report after it
price tokens the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_gemini_batch.cost.prices import (
    BATCH_DISCOUNT,
    PRICES_AS_OF,
    normalize_model,
    price_for,
    prices_as_of,
)

log = logging.getLogger(__name__)

PER_MILLION = 1_000_000
#: The amounts of a cost dict (USD), which sum over jobs.
COST_AMOUNTS = ("batch", "standard", "savings", "caching_saved", "cache_storage")


def _int(tokens: dict[str, Any] | None, name: str) -> int:
    return int((tokens or {}).get(name) or 0)


def _tier_cost(
    price: dict[str, float], tokens: dict[str, Any], *, long: bool, embeddings: bool
) -> tuple[float, float, float]:
    """(batch, standard, caching saved) of one tier's tokens, as USD per 1 M tokens times tokens."""
    prefix = "long_" if long else ""
    in_std = price.get(f"{prefix}input", price["input"])
    out_std = price.get(f"{prefix}output", price.get("output", 0.0))
    cached_price = price.get(f"{prefix}cached_input", price.get("cached_input", in_std))
    in_batch = price["batch_input"] if "batch_input" in price and not long else in_std * BATCH_DISCOUNT
    out_batch = price["batch_output"] if "batch_output" in price and not long else out_std * BATCH_DISCOUNT
    prompt = _int(tokens, "prompt")
    cached = min(_int(tokens, "cached"), prompt)  # promptTokenCount already includes the cached tokens
    uncached = prompt - cached
    output = 0 if embeddings else _int(tokens, "output") + _int(tokens, "thinking")
    standard = uncached * in_std + cached * cached_price + output * out_std
    batch = uncached * in_batch + cached * cached_price + output * out_batch
    return batch, standard, cached * (in_batch - cached_price)


def compute_cost(
    model: str,
    tokens: dict[str, Any],
    *,
    embeddings: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
    long_context: dict[str, Any] | None = None,
    cache_token_hours: float = 0.0,
) -> dict[str, Any]:
    """Cost of ``tokens`` (``prompt``, ``output``, ``thinking``, ``cached``) at batch and at standard price.

    :param long_context: the part of ``tokens`` from requests whose prompt passed the model's
        ``long_context_threshold`` (priced at the ``long_*`` tier); included in ``tokens`` too.
    :param cache_token_hours: cached-content tokens times hours stored, priced at ``cache_storage`` (the same in
        both columns, and taken off what caching saved).
    :returns: ``{"currency", "model", "prices_as_of", "batch", "standard", "savings", "caching_saved",
        "cache_storage", "price"}``; the amounts are None for a model without a price (with a warning).
    """
    result: dict[str, Any] = {
        "currency": "USD",
        "model": normalize_model(model),
        "prices_as_of": prices_as_of(overrides),
        **dict.fromkeys(COST_AMOUNTS),
        "price": None,
    }
    price = price_for(model, overrides)
    if price is None:
        log.warning(
            "No price known for model %r (table as of %s); cost not computed. "
            "Pass prices={%r: {...}} (or set [gemini_batch] prices) to add it.",
            model,
            PRICES_AS_OF,
            normalize_model(model),
        )
        return result
    long_part = {k: _int(long_context, k) for k in ("prompt", "output", "thinking", "cached")}
    short_part = {k: _int(tokens, k) - v for k, v in long_part.items()}
    short = _tier_cost(price, short_part, long=False, embeddings=embeddings)
    long = (
        _tier_cost(price, long_part, long=True, embeddings=embeddings)
        if any(long_part.values())
        else (0, 0, 0)
    )
    storage = cache_token_hours * price.get("cache_storage", 0.0)
    batch, standard, saved = (a + b for a, b in zip(short, long, strict=True))
    result.update(
        batch=round((batch + storage) / PER_MILLION, 6),
        standard=round((standard + storage) / PER_MILLION, 6),
        savings=round((standard - batch) / PER_MILLION, 6),
        caching_saved=round((saved - storage) / PER_MILLION, 6),
        cache_storage=round(storage / PER_MILLION, 6),
        price=price,
    )
    return result


def batch_price_per_million(
    model: str, overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, float] | None:
    """The batch input and output prices of a model (USD per 1 M tokens, short-context tier), or None."""
    price = price_for(model, overrides)
    if price is None:
        return None
    return {
        "input": price.get("batch_input", price["input"] * BATCH_DISCOUNT),
        "output": price.get("batch_output", price.get("output", 0.0) * BATCH_DISCOUNT),
    }


def describe_cost(cost: dict[str, Any], reuse_saved: float | None = None) -> str:
    """One log line: what was spent, what the standard API would have cost, what caching and reuse saved."""
    if cost.get("batch") is None:
        return (
            f"not priced (no price for {cost.get('model')!r} in the table as of {cost.get('prices_as_of')})"
        )
    text = f"${cost['batch']:.4f} spent at the batch price (the standard API: ${cost['standard']:.4f}; "
    if cost.get("cache_storage"):
        text += f"cache storage ${cost['cache_storage']:.4f}, included; "
    text += f"context caching saved ${cost.get('caching_saved') or 0.0:.4f}"
    if reuse_saved is not None:
        text += f"; incremental reuse saved ${reuse_saved:.4f}"
    return f"{text}; prices as of {cost['prices_as_of']})"
