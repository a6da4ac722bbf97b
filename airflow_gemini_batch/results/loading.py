"""The loading stage's hot loop: result rows → counts and token sums → a sink, one chunk at a time.

Invariants: memory is one chunk of rows, whatever the row count; counting is column-wise (C-level loops, no
Python step per row) because it runs on every row of a load; each chunk's sums go to the task totals and to
the chunk's job report alike, so a task's tokens are exactly the sum of its jobs'. Shared by
``GeminiBatchLoadResultsOperator`` and ``bench/load_results.py``, so the benchmark measures the real path.
"""

from __future__ import annotations

import time
from itertools import compress, islice, repeat
from operator import is_not, itemgetter
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.results.rows import EXAMPLES, OUTCOMES, SUCCEEDED, TOKEN_FIELDS, ShardReport
from airflow_gemini_batch.streaming import paused_gc

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable, Iterator

    from airflow_gemini_batch.results.rows import ResultRow
    from airflow_gemini_batch.sinks.sink import Sink

# ResultRow positions: outcome, then prompt/output/thinking/cached/total tokens (in TOKEN_FIELDS order).
_OUTCOME = itemgetter(1)
_TOTAL = itemgetter(10)
_TOKEN_GETTERS = tuple(itemgetter(i) for i in (6, 7, 8, 9, 10))
_PROMPT = _TOKEN_GETTERS[0]
PROGRESS_EVERY_SECONDS = 10.0


class LoadTotals:
    """Running counts and token sums over all rows of a load (a handful of ints, whatever the row count).

    Each chunk's sums go to the task totals and to the chunk's :class:`ShardReport` alike, so the task's
    ``tokens`` are exactly the sum of its jobs' ``tokens``.

    :param long_context_threshold: the model's long-context tier (prompts above it are priced higher, per
        request): the tokens of those rows are also summed apart, in ``long_context_tokens``. None: no tier.
    """

    def __init__(self, long_context_threshold: int | None = None) -> None:
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.tokens = dict.fromkeys(TOKEN_FIELDS, 0)
        self.long_context_threshold = long_context_threshold
        self.long_context_tokens = dict.fromkeys(TOKEN_FIELDS, 0)
        self.first_failed_keys: list[Any] = []
        self.rows = 0

    def add(self, rows: list[ResultRow], report: ShardReport) -> None:
        """Count a chunk. Column-wise (``map``/``itemgetter``/``list.count``/``sum``: C-level loops, no Python
        step per row), since this runs on every row of a load."""
        counts, shard_counts = self.counts, report.counts
        n = len(rows)
        outcomes = list(map(_OUTCOME, rows))
        succeeded = outcomes.count(SUCCEEDED)
        per_outcome = (
            [succeeded, *(outcomes.count(o) for o in OUTCOMES[1:])] if succeeded != n else [n, 0, 0, 0]
        )
        if sum(per_outcome) != n:
            unknown = next(o for o in outcomes if o not in counts)
            raise ValueError(f"unknown outcome {unknown!r}")
        for outcome, count in zip(OUTCOMES, per_outcome, strict=True):
            counts[outcome] += count
            shard_counts[outcome] += count
        if succeeded != n and len(self.first_failed_keys) < EXAMPLES:
            self.first_failed_keys += [r[0] for r in rows if r[1] != SUCCEEDED][
                : EXAMPLES - len(self.first_failed_keys)
            ]
        # Tokens count only on rows that report a total (as the per-row rule always did).
        totals = list(map(_TOTAL, rows))
        without_total = totals.count(None)
        if without_total < n:
            counted = rows if not without_total else list(compress(rows, map(is_not, totals, repeat(None))))
            tokens, shard_tokens = self.tokens, report.tokens
            # One sum per column per chunk, added twice: per-job usage costs no extra pass over the rows.
            for name, getter in zip(TOKEN_FIELDS[:-1], _TOKEN_GETTERS[:-1], strict=True):
                column = sum(filter(None, map(getter, counted)))
                tokens[name] += column
                shard_tokens[name] += column
            column = sum(filter(None, totals))
            tokens["total"] += column
            shard_tokens["total"] += column
            if self.long_context_threshold is not None:
                self._add_long_context(counted, report)
        self.rows += len(rows)

    def _add_long_context(self, counted: list[ResultRow], report: ShardReport) -> None:
        """Sum apart the rows above the tier; one C-level ``max`` per chunk when none is (the usual case)."""
        threshold = self.long_context_threshold
        assert threshold is not None
        if max(filter(None, map(_PROMPT, counted)), default=0) <= threshold:
            return
        long_rows = [r for r in counted if (r[6] or 0) > threshold]
        for name, getter in zip(TOKEN_FIELDS, _TOKEN_GETTERS, strict=True):
            column = sum(filter(None, map(getter, long_rows)))
            self.long_context_tokens[name] += column
            report.long_context_tokens[name] += column


def chunks(rows: Iterable[ResultRow], size: int) -> Iterator[list[ResultRow]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def stream_to_sink(
    rows: Iterable[ResultRow],
    sink: Sink,
    totals: LoadTotals,
    report: ShardReport,
    chunk_size: int,
    log: logging.Logger | None = None,
) -> int:
    """The hot loop of a load: chunk the rows, count them, write them; log progress every few seconds.

    One chunk is the most this holds in memory. Shared by the operator and ``bench/load_results.py``.
    Parsing and writing run in this one thread, on purpose: the database drivers release the GIL per row, and
    re-taking it from a busy parser thread costs more than the overlap would gain. PostgreSQL overlaps anyway:
    its sink keeps one COPY open, so the server stores rows while the next chunk is parsed.
    """
    start = last_log = time.monotonic()
    start_rows = totals.rows
    with paused_gc():
        for chunk in chunks(rows, chunk_size):
            totals.add(chunk, report)
            sink.write(chunk)
            if log is not None and (now := time.monotonic()) - last_log >= PROGRESS_EVERY_SECONDS:
                done = totals.rows - start_rows
                log.info(
                    "%s: %d lines parsed, %d rows loaded (%.0f rows/s)",
                    report.job_name, report.lines, done, done / max(now - start, 1e-9),
                )  # fmt: skip
                last_log = now
    return totals.rows - start_rows
