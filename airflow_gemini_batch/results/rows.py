"""What loading a job's results produces: one :class:`ResultRow` per input key, and a :class:`ShardReport`.

Invariant: every input key ends in exactly one of four outcomes - ``succeeded``, ``failed``,
``invalid_output``, ``missing`` - so the counts add up to what was sent (architecture invariant 5). The row is
a tuple whose first :data:`N_STORED` fields are the stored columns, in column order, so sinks bind it without
copying field by field.

Why a module of its own: the parser produces these types, and the sinks, the loading loop and the UI consume
them; apart from the parser, each stage depends on the types without depending on how lines are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

SUCCEEDED = "succeeded"
FAILED = "failed"
INVALID_OUTPUT = "invalid_output"
MISSING = "missing"
OUTCOMES = (SUCCEEDED, FAILED, INVALID_OUTPUT, MISSING)
#: Not a row outcome (no row is written: the destination's row stays as it is) but an input's: a row an
#: incremental submit did not send because its answer was already there (``inputs.incremental``). The load
#: summary counts it beside the outcomes, so inputs = succeeded + failed + invalid_output + missing + reused.
REUSED = "reused"
#: The token sums a report keeps (``ResultRow`` ``*_tokens`` fields, in this order).
TOKEN_FIELDS = ("prompt", "output", "thinking", "cached", "total")

#: How many example keys / line numbers a report keeps (the counts are always complete).
EXAMPLES = 10


class ResultRow(NamedTuple):
    """One input key's outcome. A tuple, so sinks can bind it without copying field by field.

    The first 16 fields are stored columns (see :data:`STORED_FIELDS`); ``value`` is the parsed structured
    output, kept only so a sink can fill ``output_columns`` from it. ``request_fingerprint`` is the one the
    submit side wrote beside the key list for this key (``inputs.fingerprint``), None for a manifest without.
    """

    key: Any
    outcome: str
    text: str | None = None
    json_value: str | None = None
    embedding: list[float] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    thinking_tokens: int | None = None
    cached_tokens: int | None = None
    total_tokens: int | None = None
    model_version: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    job_name: str | None = None
    request_fingerprint: str | None = None
    value: Any = None


STORED_FIELDS: tuple[str, ...] = ResultRow._fields[:-1]
N_STORED = len(STORED_FIELDS)
_OUTCOME = itemgetter(1)


def count_succeeded(rows: list[ResultRow]) -> int:
    """How many rows of a chunk succeeded: one C-level ``map`` and ``list.count``, no Python step per row
    (the hot loops of a load ask it of every chunk, mostly to skip their per-row work when all did)."""
    return list(map(_OUTCOME, rows)).count(SUCCEEDED)


@dataclass
class ShardReport:
    """What loading one job's results found, beyond the per-row outcomes. Small and JSON-able."""

    job_name: str
    state: str = ""
    key_count: int = 0
    lines: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    #: Token sums of this job's rows (``TOKEN_FIELDS``), so cost can be told per job, not only per task.
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))
    #: The part of ``tokens`` from rows whose prompt passed the model's long-context tier (priced higher).
    long_context_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))
    unknown_keys: int = 0
    unknown_key_examples: list[Any] = field(default_factory=list)
    duplicate_keys: int = 0
    duplicate_key_examples: list[Any] = field(default_factory=list)
    malformed_lines: int = 0
    malformed_line_numbers: list[int] = field(default_factory=list)
    truncated: bool = False

    def malformed(self, line_no: int, truncated: bool = False) -> None:
        self.malformed_lines += 1
        if len(self.malformed_line_numbers) < EXAMPLES:
            self.malformed_line_numbers.append(line_no)
        self.truncated = self.truncated or truncated

    def unknown(self, key: Any) -> None:
        self.unknown_keys += 1
        if len(self.unknown_key_examples) < EXAMPLES:
            self.unknown_key_examples.append(key)

    def duplicate(self, key: Any) -> None:
        self.duplicate_keys += 1
        if len(self.duplicate_key_examples) < EXAMPLES:
            self.duplicate_key_examples.append(key)

    def to_dict(self) -> dict[str, Any]:
        # Copies of the dicts and lists: the summary must not change if the report is touched afterwards.
        return {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in self.__dict__.items()}
