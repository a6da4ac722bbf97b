"""The remainder of a load: the keys worth sending again in a row-retry round, written as a key list.

Invariants:

* A row is retryable when it came back ``missing`` (no answer for its key: a dropped, truncated or malformed
  line) or ``failed`` with a transient error of the service — HTTP 429, 500, 503, 504, or the statuses
  RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE in its message (:func:`is_retryable`). Anything else — a
  succeeded row, ``invalid_output``, a 400 INVALID_ARGUMENT, a blocked prompt or an empty answer — is final:
  resending it would pay again for the same answer. The rows of a job that ended FAILED / EXPIRED /
  CANCELLED (loaded only with ``allow_partial``) carry the job's error and follow the same rule.
* :class:`RemainderRecorder` sits between the load and its sink: every chunk still reaches the sink
  unchanged, and the retryable keys go to a key list (one JSON value per line, in load order, like the key
  lists the submit writes), so memory stays one chunk whatever the row count. It counts them per outcome,
  so a round's reconciliation can say how many of its rows were settled and how many move on.
* The list is written locally and published to its URI only when the load closed cleanly: a failed load
  never leaves a half list that a later round could read as complete.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.results.rows import EXAMPLES, FAILED, MISSING, OUTCOMES, SUCCEEDED, count_succeeded
from airflow_gemini_batch.storage import copy_file

if TYPE_CHECKING:
    from airflow_gemini_batch.results.rows import ResultRow
    from airflow_gemini_batch.sinks.sink import Sink

#: HTTP codes of a row's error that say "try again later", not "this request is wrong".
RETRYABLE_CODES = frozenset({429, 500, 503, 504})
#: The same, as the google.rpc status names the service may put in the message.
RETRYABLE_STATUS = re.compile(r"\b(RESOURCE_EXHAUSTED|INTERNAL|UNAVAILABLE)\b")


def is_retryable(outcome: str, error_code: int | None, error_message: str | None) -> bool:
    """Whether a row with this outcome and error is worth sending again (see the module docstring)."""
    if outcome == MISSING:
        return True
    if outcome != FAILED:
        return False
    return error_code in RETRYABLE_CODES or bool(error_message and RETRYABLE_STATUS.search(error_message))


class RemainderRecorder:
    """A :class:`~airflow_gemini_batch.sinks.sink.Sink` that passes every chunk on to ``sink`` and writes the
    retryable keys to ``remainder_uri`` (see the module docstring).

    :param sink: the real destination.
    :param remainder_uri: where the key list goes (local path or ObjectStoragePath URI); written on close.
    """

    def __init__(self, sink: Sink, remainder_uri: str) -> None:
        self.sink = sink
        self.remainder_uri = remainder_uri
        #: retryable keys per outcome (``failed`` and ``missing``; the others stay 0).
        self.counts = dict.fromkeys(OUTCOMES, 0)
        fd, local = tempfile.mkstemp(prefix="gemini-remainder-", suffix=".jsonl")
        os.close(fd)
        self._local = Path(local)
        self._fh: Any = None
        self.rows_written = 0
        #: the first keys that did not succeed and are not retryable (final whatever the round).
        self.final_failure_examples: list[Any] = []

    @property
    def key_count(self) -> int:
        return sum(self.counts.values())

    def open(self) -> None:
        self._fh = self._local.open("wb")
        self.sink.open()

    def write(self, rows: list[ResultRow]) -> None:
        self.sink.write(rows)
        self.rows_written = self.sink.rows_written
        if count_succeeded(rows) == len(rows):
            return  # the common chunk: a C-level count, no Python step per row
        dumps, counts, fh = orjson.dumps, self.counts, self._fh
        for row in rows:
            # row[1] outcome, row[12] error_code, row[13] error_message (ResultRow order)
            if row[1] == SUCCEEDED:
                continue
            if is_retryable(row[1], row[12], row[13]):
                fh.write(dumps(row[0]) + b"\n")
                counts[row[1]] += 1
            elif len(self.final_failure_examples) < EXAMPLES:
                self.final_failure_examples.append(row[0])

    def close(self) -> None:
        self.sink.close()
        self._fh.close()
        try:
            copy_file(self._local, self.remainder_uri)
        finally:
            self._local.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            self.sink.abort()
        finally:
            if self._fh is not None:
                self._fh.close()
            self._local.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        return self.sink.describe()
