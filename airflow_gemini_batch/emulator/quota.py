"""The batch quotas, enforced on ``batches.create`` the way the service does: 429 RESOURCE_EXHAUSTED.

Two limits (both off by default, set by CLI flags or ``POST /_emulator/config``):

* ``max_concurrent_jobs``: jobs not in a terminal state (PENDING or RUNNING, held ones included) at once;
  the service's limit is 100 per project. A deleted job no longer counts (the emulator stops it).
* ``max_enqueued_tokens``: the estimated input tokens of the non-terminal jobs *of the same model* (the
  service's quota is per model and tier, e.g. 3 M for 2.5 Flash at Tier 1). The estimate is the request
  bytes at 4 bytes per token — the input file's size, or an inline batch's JSON — which is what the provider
  itself estimates (``inputs/shards.py``), not a tokenizer count: a test that sizes shards with the
  provider's estimate meets the emulator's limit exactly where it expects to.

Invariants:

* A rejected create makes no job and uses up no behaviour or hold rule: the quota is checked first.
* The check and the insert happen under the engine's lock (:meth:`JobEngine.add_within_quota`), so two
  creates can never both take the last slot.
* :class:`QuotaBook` keeps the high-water marks (non-terminal jobs, enqueued tokens per model) measured at
  every accepted create — the only moment either count can grow — and the number of rejected creates, so
  a test can assert "never more than N at once" without sampling.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.emulator.common import ApiError
from airflow_gemini_batch.emulator.jobs import TERMINAL

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_gemini_batch.emulator.jobs import Job

BYTES_PER_TOKEN = 4


def estimate_tokens(request_bytes: int) -> int:
    """The emulator's (and the provider's) token estimate of a batch's input: 4 bytes per token."""
    return math.ceil(request_bytes / BYTES_PER_TOKEN)


@dataclass(frozen=True)
class QuotaLimits:
    """``0`` (or None) means unlimited."""

    max_concurrent_jobs: int = 0
    max_enqueued_tokens: int = 0


@dataclass
class QuotaBook:
    """What the quota saw: high-water marks at accepted creates, and rejections."""

    high_water_jobs: int = 0
    high_water_tokens: Counter[str] = field(default_factory=Counter)
    rejected_creates: int = 0

    def check_and_note(
        self, active: Iterable[Job], model: str, new_tokens: int, limits: QuotaLimits, now: float
    ) -> None:
        """Raise 429 when a new job of ``model`` with ``new_tokens`` does not fit beside the ``active``
        jobs; else note the new high water."""
        live = [j for j in active if not j.deleted and j.state_at(now)[0] not in TERMINAL]
        tokens = sum(j.estimated_tokens for j in live if j.model == model) + new_tokens
        if limits.max_concurrent_jobs and len(live) >= limits.max_concurrent_jobs:
            self.rejected_creates += 1
            raise ApiError(
                429,
                f"Resource has been exhausted: {len(live)} batch jobs are not finished, the limit of "
                f"concurrent batch jobs is {limits.max_concurrent_jobs}.",
            )
        if limits.max_enqueued_tokens and tokens > limits.max_enqueued_tokens:
            self.rejected_creates += 1
            raise ApiError(
                429,
                f"Resource has been exhausted: enqueued tokens for {model} would be {tokens:,} "
                f"(this batch {new_tokens:,}), over the quota of {limits.max_enqueued_tokens:,}.",
            )
        self.high_water_jobs = max(self.high_water_jobs, len(live) + 1)
        self.high_water_tokens[model] = max(self.high_water_tokens[model], tokens)

    def view(self, active: Iterable[Job], limits: QuotaLimits, now: float) -> dict[str, Any]:
        live = [j for j in active if not j.deleted and j.state_at(now)[0] not in TERMINAL]
        enqueued: Counter[str] = Counter()
        for j in live:
            enqueued[j.model] += j.estimated_tokens
        return {
            "max_concurrent_jobs": limits.max_concurrent_jobs,
            "max_enqueued_tokens": limits.max_enqueued_tokens,
            "active_jobs": len(live),
            "enqueued_tokens": dict(enqueued),
            "high_water_jobs": self.high_water_jobs,
            "high_water_tokens": dict(self.high_water_tokens),
            "rejected_creates": self.rejected_creates,
        }
