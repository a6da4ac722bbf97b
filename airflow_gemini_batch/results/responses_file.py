"""Reading a downloaded responses file: blocks of lines, and the fast path for the common result line.

Invariant: this module is an optimisation of :meth:`airflow_gemini_batch.results.parsing.ResultParser.object_row`
(the general, tolerant path) and never a second opinion. A line takes the fast path only when msgspec decodes
it into the typed shape below and it has exactly one candidate with one non-thought text part and a key; then
the row it yields is the one the general path would yield. Anything else - invalid JSON, an odd type, no key,
a failure, a blocked prompt, several parts - goes through the general path unchanged, so invariant 5 (every
key ends in exactly one outcome) and the malformed / unknown / duplicate reports stay the general path's.
``tests/results/test_fast_path_property.py`` checks both paths agree on generated lines of every shape, and
``tests/results/test_parsing.py`` on a fixed list of them.

Why a fast path at all: loading is dominated by per-line work. msgspec decodes straight into the few typed
fields read here and skips the rest of the JSON without building objects, where the general path builds a
dict of every line first; lines are split in C by ``readlines``; and a run of in-order keys is reconciled with
one list comparison (``make bench`` and the README's Performance section give the figures).

The parser is passed in and its general path called through it, so this module does not import the parser
(which reads files through this one): the import graph has no cycle.
"""

from __future__ import annotations

from itertools import repeat
from operator import add, itemgetter
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import orjson

from airflow_gemini_batch.results.reconcile import MATCHED, UNKNOWN
from airflow_gemini_batch.results.rows import SUCCEEDED, ResultRow

try:  # a dependency of Airflow itself (airflow-core, task-sdk); the general path alone works without it
    import msgspec
except ImportError:  # pragma: no cover
    msgspec = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

    from airflow_gemini_batch.results.reconcile import KeyReconciler
    from airflow_gemini_batch.results.rows import ShardReport


class GeneralParser(Protocol):
    """The general path this module hands odd lines to (``results.parsing.ResultParser``), named by what
    it does rather than imported, so the parser may import this module without a circle."""

    embed: bool
    parse_json: bool

    @property
    def answer_row(self) -> Callable[..., ResultRow]: ...

    def object_row(
        self, obj: Any, line_no: int, keys: KeyReconciler, report: ShardReport, by_position: bool
    ) -> ResultRow | None: ...


_new = tuple.__new__
_KEY = itemgetter(0)
_BEFORE_FINGERPRINT = itemgetter(slice(0, -2))
_VALUE = itemgetter(-1)

#: Bytes of a responses file split into lines at a time, and the file's read buffer.
READ_BLOCK_BYTES = 256 * 1024
READ_BUFFER_BYTES = 1024 * 1024

# The typed shape of the common result line, for the fast path of :func:`file_row_blocks`. Only the fields read are
# declared: msgspec skips the others without building them. A line that does not fit these types raises and
# takes the general path, which is the reference behaviour. (camelCase attribute names: they are the wire's.)
if msgspec is not None:
    # An int within int64: orjson (the general path) reads an int beyond 64 bits as a float, msgspec as an int,
    # so such a key or count is left to the general path. (msgspec bounds must fit an int64: the unsigned
    # half above 2**63 takes the general path too, where it reads the same.)
    _Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

    class _Part(msgspec.Struct, gc=False):
        text: str | None = None
        thought: Any = None

    class _Content(msgspec.Struct, gc=False):
        parts: list[_Part] | None = None

    class _Candidate(msgspec.Struct, gc=False):
        content: _Content | None = None
        finishReason: str | None = None

    class _Usage(msgspec.Struct, gc=False):
        promptTokenCount: _Int | None = None
        candidatesTokenCount: _Int | None = None
        thoughtsTokenCount: _Int | None = None
        cachedContentTokenCount: _Int | None = None
        totalTokenCount: _Int | None = None

    class _Response(msgspec.Struct, gc=False):
        candidates: list[_Candidate] | None = None
        usageMetadata: _Usage | None = None
        modelVersion: str | None = None

    class _Line(msgspec.Struct, gc=False):
        key: _Int | str | None = None  # other types (bool, float, list, ...): the general path
        response: _Response | None = None

    _LINE_DECODER: Any = msgspec.json.Decoder(_Line)
    # What "not the common shape" raises on the fast path: invalid JSON or other types (DecodeError and its
    # ValidationError), no response / candidates / content (AttributeError, TypeError), no candidate
    # (IndexError), not exactly one part (ValueError).
    _NOT_COMMON: tuple[type[Exception], ...] = (
        msgspec.DecodeError, AttributeError, TypeError, IndexError, ValueError,
    )  # fmt: skip
else:  # pragma: no cover
    _LINE_DECODER = None
    _NOT_COMMON = (ValueError,)


def _raw_line_row(
    raw: bytes, line_no: int, parser: GeneralParser, keys: KeyReconciler, report: ShardReport
) -> ResultRow | None:
    """The general path for one responses-file line: orjson, then :meth:`ResultParser.object_row`."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if raw.strip():
            # A last line without its newline is what a cut-off download looks like.
            report.lines += 1
            report.malformed(line_no, not raw.endswith(b"\n"))
        return None
    return parser.object_row(obj, line_no, keys, report, False)


def _iter_line_blocks(path: Path | str) -> Iterator[list[bytes]]:
    """The lines of a file (with their newline, so a cut-off last line shows), a list of ~256 KB at a time.

    ``readlines`` with a size hint splits in C straight from the read buffer: no Python-level step per line
    (as iterating the file object takes) and no extra copy (as reading blocks and splitting them takes).
    """
    with open(path, "rb", buffering=READ_BUFFER_BYTES) as fh:
        while lines := fh.readlines(READ_BLOCK_BYTES):
            yield lines


def file_row_blocks(
    path: Path | str, parser: GeneralParser, keys: KeyReconciler, report: ShardReport
) -> Iterator[list[ResultRow]]:
    """The hot loop of a load: decode, check, reconcile, classify; the rows of each block read, as a list.

    The common line (one candidate with one text part) takes a tight path: msgspec decodes it straight into
    the few typed fields read here (skipping the rest of the JSON without building objects), the row tuple is
    built in place, and a run of such lines is reconciled in one step when its keys are the next ones of the
    key list (:meth:`KeyReconciler.match_in_order`). Any other line - a failure, a blocked prompt, several
    parts, an odd type, invalid JSON, no key - goes through :func:`_raw_line_row`, the general path. The fast
    path only accepts lines the general one turns into the same row, so both classify every line alike.
    """
    if _LINE_DECODER is None or parser.embed:
        return _general_blocks(_iter_line_blocks(path), parser, keys, report)
    return _parse_blocks(_iter_line_blocks(path), _LINE_DECODER.decode, parser, keys, report)


def _parse_blocks(
    blocks: Iterable[list[bytes]],
    decode: Callable[[bytes], Any],
    parser: GeneralParser,
    keys: KeyReconciler,
    report: ShardReport,
) -> Iterator[list[ResultRow]]:
    job_name = report.job_name
    parse_json = parser.parse_json
    answer_row = parser.answer_row
    line_no = 0
    for lines in blocks:
        out: list[ResultRow] = []
        run_rows: list[ResultRow] = []  # fast rows not reconciled yet (keyed by the result's key)
        add_row = run_rows.append
        for line in lines:
            line_no += 1
            try:
                obj = decode(line)
                response = obj.response
                candidate = response.candidates[0]
                (part,) = candidate.content.parts  # exactly one part, else the general path
                text, key = part.text, obj.key
            except _NOT_COMMON:
                text = None
            if text is None or key is None or part.thought:
                if run_rows:  # keep the key list's order of events: reconcile the run first
                    out += _reconcile_run(run_rows, keys, report)
                    run_rows = []
                    add_row = run_rows.append
                row = _raw_line_row(line, line_no, parser, keys, report)
                if row is not None:
                    out.append(row)
                continue
            usage = response.usageMetadata
            if usage is None:
                prompt = output = thinking = cached = total = None
            else:
                prompt, output, thinking = (
                    usage.promptTokenCount, usage.candidatesTokenCount, usage.thoughtsTokenCount,
                )  # fmt: skip
                cached, total = usage.cachedContentTokenCount, usage.totalTokenCount
            if parse_json:
                add_row(
                    answer_row(
                        key, text, candidate.finishReason, prompt, output, thinking, cached, total,
                        response.modelVersion, job_name,
                    )
                )  # fmt: skip
            else:
                # tuple.__new__ skips the NamedTuple's Python-level __new__.
                add_row(
                    _new(
                        ResultRow, (key, SUCCEEDED, text, None, None, candidate.finishReason, prompt, output,
                                    thinking, cached, total, response.modelVersion, None, None, job_name, None,
                                    None),
                    )
                )  # fmt: skip
        if run_rows:
            out += _reconcile_run(run_rows, keys, report)
        yield out


def _general_blocks(
    blocks: Iterable[list[bytes]], parser: GeneralParser, keys: KeyReconciler, report: ShardReport
) -> Iterator[list[ResultRow]]:
    """Every line through the general path (embeddings; or msgspec unavailable)."""
    line_no = 0
    for lines in blocks:
        out = []
        for line in lines:
            line_no += 1
            row = _raw_line_row(line, line_no, parser, keys, report)
            if row is not None:
                out.append(row)
        yield out


def _reconcile_run(rows: list[ResultRow], keys: KeyReconciler, report: ShardReport) -> list[ResultRow]:
    """Reconcile a run of fast-path rows: the in-order prefix in one step, the rest key by key.

    Every row here came from a valid result line, so it counts as a line; a row whose key is unknown or a
    duplicate is reported and dropped; a matched row takes the key list's value of its key.
    """
    report.lines += len(rows)
    # The matched prefix's keys are the key list's values (same type and value): those rows keep them, and
    # take the fingerprints the key list has for them (C-level maps: this is on the per-line hot path).
    done = keys.match_in_order(list(map(_KEY, rows)))
    fingerprints = keys.run_fingerprints
    kept = rows if done == len(rows) else rows[:done]
    if fingerprints is not None and done:
        tails = zip(fingerprints, map(_VALUE, kept), strict=True)
        kept = list(map(_new, repeat(ResultRow), map(add, map(_BEFORE_FINGERPRINT, kept), tails)))
    if done == len(rows):
        return kept
    for row in rows[done:]:
        status, original = keys.resolve(row[0])
        if status is MATCHED:
            kept.append(_new(ResultRow, (original, *row[1:-2], keys.fingerprint, row[-1])))
        elif status is UNKNOWN:
            report.unknown(row[0])
        else:
            report.duplicate(row[0])
    return kept
