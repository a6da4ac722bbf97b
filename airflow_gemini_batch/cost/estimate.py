"""What a run will cost, estimated from its shard files before anything is uploaded.

Input tokens come from a small sample of the request lines: counted by the service (``models.countTokens``,
free but rate-limited, so **one** call holds the whole sample as one list of contents) or, when counting is
unavailable (an error, an embeddings batch, no counter), by the heuristic of 4 characters of text per token.
The sample's tokens per byte of request line, times the bytes of all shards, is the run's estimate; the same
ratio prices any part of the run (:meth:`InputTokenEstimate.tokens_for_bytes`), e.g. one shard against an
enqueued-token quota. Output tokens are bounded by each request's ``maxOutputTokens`` when set, else taken as
``expected_output_tokens`` per request (thinking included: it is billed as output). The price is the batch
price of :mod:`airflow_gemini_batch.cost.pricing`, long-context tier included.

Invariants: the sample is bounded (:data:`SAMPLE_REQUESTS` lines and :data:`SAMPLE_BYTES` bytes, read from
the start of each shard, spread over the shards; never a whole file); at most one ``countTokens`` call per
estimate; no request line is ever kept beyond the sample.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.cost.prices import price_for
from airflow_gemini_batch.cost.pricing import compute_cost

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_REQUESTS = 64
SAMPLE_BYTES = 2 * 1024 * 1024
CHARS_PER_TOKEN = 4
#: Output tokens expected per request when it sets no ``maxOutputTokens`` (thinking included).
DEFAULT_EXPECTED_OUTPUT_TOKENS = 1024


def _pick(mapping: Any, *names: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    return next((mapping[n] for n in names if mapping.get(n) is not None), None)


def _texts(content: Any) -> list[str]:
    if isinstance(content, list):
        return [t for c in content for t in _texts(c)]
    parts = _pick(content, "parts")
    if isinstance(parts, list):
        return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return [content] if isinstance(content, str) else []


def _as_content(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        return {"role": "user", "parts": [{"text": value}]}
    if isinstance(value, dict) and _pick(value, "parts") is not None:
        return {"role": "user", "parts": value["parts"]}
    return None


@dataclass(frozen=True)
class SampledRequest:
    """One request line of the sample: its size on the wire, its text, what it counts and its output bound."""

    line_bytes: int
    text_chars: int
    contents: list[dict[str, Any]]  # what countTokens is given: system instruction first, then the turns
    max_output_tokens: int | None

    @property
    def heuristic_tokens(self) -> int:
        return math.ceil(self.text_chars / CHARS_PER_TOKEN)

    @classmethod
    def of(cls, line: bytes) -> SampledRequest:
        request = orjson.loads(line).get("request") or {}
        system = _pick(request, "systemInstruction", "system_instruction")
        turns = _pick(request, "contents") or _pick(request, "content") or []
        turns = turns if isinstance(turns, list) else [turns]
        contents = [c for c in (_as_content(system), *(_as_content(t) for t in turns)) if c is not None]
        text = _texts(system) + _texts(turns)
        config = _pick(request, "generationConfig", "generation_config") or {}
        bound = _pick(config, "maxOutputTokens", "max_output_tokens")
        return cls(
            line_bytes=len(line),
            # Joined by newlines, as the service (and the emulator's usage) sees several parts.
            text_chars=sum(map(len, text)) + max(len(text) - 1, 0),
            contents=contents,
            max_output_tokens=int(bound) if bound is not None else None,
        )


def sample_requests(
    shard_paths: Sequence[Path], max_requests: int = SAMPLE_REQUESTS, max_bytes: int = SAMPLE_BYTES
) -> list[SampledRequest]:
    """Up to ``max_requests`` lines (and about ``max_bytes``; at least one line) from the start of the
    shards, spread evenly over them; streamed, so a 2 GB shard costs one buffered read."""
    if not shard_paths:
        return []
    per_shard = max(1, math.ceil(max_requests / len(shard_paths)))
    sample: list[SampledRequest] = []
    taken_bytes = 0
    for path in shard_paths:
        with path.open("rb") as f:
            for _, line in zip(range(per_shard), f, strict=False):
                if sample and (len(sample) >= max_requests or taken_bytes + len(line) > max_bytes):
                    return sample
                sample.append(SampledRequest.of(line))
                taken_bytes += len(line)
    return sample


@dataclass(frozen=True)
class InputTokenEstimate:
    """Input tokens of a run from its sample: ``sample_tokens`` over ``sample_bytes``, scaled to any bytes.

    ``method`` is ``"count_tokens"`` (the service counted the sample) or ``"heuristic"`` (4 characters of
    text per token).
    """

    method: str
    sample_requests: int
    sample_bytes: int
    sample_tokens: int
    #: the share of the sample's tokens in requests above the model's long-context tier (by the heuristic)
    long_context_share: float = 0.0

    @property
    def tokens_per_byte(self) -> float:
        return self.sample_tokens / self.sample_bytes if self.sample_bytes else 0.0

    def tokens_for_bytes(self, request_bytes: int) -> int:
        """Estimated input tokens of ``request_bytes`` of request lines (a shard, or the whole run)."""
        return math.ceil(request_bytes * self.tokens_per_byte)


def estimate_input_tokens(
    sample: Sequence[SampledRequest],
    counter: Callable[[list[dict[str, Any]]], int] | None,
    long_context_threshold: float | None = None,
) -> InputTokenEstimate:
    """Count the sample with one ``counter`` call (the heuristic when there is none or it fails)."""
    heuristic = sum(s.heuristic_tokens for s in sample)
    long_tokens = sum(
        s.heuristic_tokens
        for s in sample
        if long_context_threshold and s.heuristic_tokens > long_context_threshold
    )
    method, tokens = "heuristic", heuristic
    contents = [c for s in sample for c in s.contents]
    if counter is not None and contents:
        try:
            tokens, method = int(counter(contents)), "count_tokens"
        except Exception as e:  # counting is an improvement, never a reason to fail the run
            log.warning(
                "countTokens failed (%s: %s); estimating at %d characters per token instead",
                type(e).__name__,
                str(e)[:200],
                CHARS_PER_TOKEN,
            )
    return InputTokenEstimate(
        method=method,
        sample_requests=len(sample),
        sample_bytes=sum(s.line_bytes for s in sample),
        sample_tokens=tokens,
        long_context_share=long_tokens / heuristic if heuristic else 0.0,
    )


@dataclass(frozen=True)
class RunEstimate:
    """What a run is expected to cost at the batch price; what the manifest carries as ``estimate``."""

    model: str
    request_count: int
    input_tokens: int
    output_tokens: int
    #: ``max_output_tokens`` (a bound), ``expected_output_tokens`` (an expectation), ``mixed``, or ``none``
    #: (embeddings: no output is billed)
    output_basis: str
    method: str
    sample_requests: int
    cost_usd: float | None
    standard_cost_usd: float | None
    prices_as_of: str
    max_cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        cost = f"${self.cost_usd:.4f}" if self.cost_usd is not None else "unpriced"
        return (
            f"{cost} at the batch price for {self.request_count:,} requests: ~{self.input_tokens:,} input "
            f"tokens ({self.method} on {self.sample_requests} sampled requests) and "
            f"{'≤' if self.output_basis == 'max_output_tokens' else '~'}{self.output_tokens:,} output tokens "
            f"({self.output_basis}), {self.model} prices as of {self.prices_as_of}"
        )


def estimate_run(
    shards: Sequence[tuple[Path, int, int]],
    *,
    model: str,
    embeddings: bool,
    counter: Callable[[list[dict[str, Any]]], int] | None,
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
    overrides: dict[str, dict[str, Any]] | None = None,
    max_cost_usd: float | None = None,
    cached_tokens: int = 0,
    cache_hours: float = 0.0,
) -> tuple[RunEstimate, InputTokenEstimate]:
    """Estimate a run from its shards (``(path, request count, bytes)`` each) without reading them whole.

    :param counter: one call counting a list of contents (``None``: the heuristic; embeddings always use it).
    :param cached_tokens: tokens of the run's context cache (``shared_context``), which the request lines only
        name: every request adds them to its prompt, billed at the cache price.
    :param cache_hours: how long the cache is expected to be stored (its TTL), billed once per cache.
    """
    request_count = sum(n for _, n, _ in shards)
    sample = sample_requests([p for p, n, _ in shards if n])
    threshold = (price_for(model, overrides) or {}).get("long_context_threshold")
    tokens = estimate_input_tokens(sample, None if embeddings else counter, threshold)
    input_tokens = tokens.tokens_for_bytes(sum(b for _, _, b in shards))
    bounds = [s.max_output_tokens for s in sample]
    if embeddings:
        basis, per_request = "none", 0.0
    else:
        bounded = [b for b in bounds if b is not None]
        basis = (
            "max_output_tokens"
            if bounded and len(bounded) == len(bounds)
            else ("mixed" if bounded else "expected_output_tokens")
        )
        per_request = sum(b if b is not None else expected_output_tokens for b in bounds) / max(
            len(bounds), 1
        )
    output_tokens = math.ceil(per_request * request_count)
    share = tokens.long_context_share
    long_context = (
        {"prompt": round(input_tokens * share), "output": round(output_tokens * share)} if share else None
    )
    cached_total = cached_tokens * request_count
    input_tokens += cached_total
    cost = compute_cost(
        model,
        {"prompt": input_tokens, "output": output_tokens, "cached": cached_total},
        embeddings=embeddings,
        overrides=overrides,
        long_context=long_context,
        cache_token_hours=cached_tokens * cache_hours if cached_total else 0.0,
    )
    estimate = RunEstimate(
        model=cost["model"],
        request_count=request_count,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        output_basis=basis,
        method=tokens.method,
        sample_requests=tokens.sample_requests,
        cost_usd=cost["batch"],
        standard_cost_usd=cost["standard"],
        prices_as_of=cost["prices_as_of"],
        max_cost_usd=max_cost_usd,
    )
    return estimate, tokens
