"""Result-line parsing and outcome classification: one batch result line → one typed :class:`ResultRow`.

It is one module, past the usual size, because every shape a result line can take (text, parts, thoughts,
schema output, embeddings, errors, blocked prompts) is classified in one place, so no outcome is decided twice.

Invariants:

* Every input key ends in exactly one of four outcomes (:mod:`airflow_gemini_batch.results.rows`), so the
  counts add up to what was sent (architecture invariant 5). A line that cannot be parsed is never guessed
  at: it is reported (count + line numbers) and its key becomes ``missing`` through reconciliation
  (:mod:`airflow_gemini_batch.results.reconcile`).
* Parsing is streamed: a responses file is read a block of lines at a time
  (:mod:`airflow_gemini_batch.results.responses_file`); nothing holds more than a block. Inline responses
  (capped at 20 MB by the service) are the only input that is a list in memory.
* The parser is tolerant, because the wire format is loosely documented: a line may carry ``response``,
  ``error`` or ``status``; the key sits at the top level (``key``, file output) or in ``metadata.key``
  (inline output); a response without candidates (a blocked prompt) is a failure, not a success.
* :meth:`ResultParser.object_row` is the one definition of how a line becomes a row. The responses file's
  fast path for the common line shape only takes lines it turns into the same row, and hands every other
  line to it; ``tests/results/test_fast_path_property.py`` checks that over generated lines.
* The key of a row is the value from the submit-time key list (an int stays an int), never the echo from
  the service, which may have been turned into a string (inline ``metadata`` is ``dict[str, str]``).
"""

from __future__ import annotations

import logging
from itertools import chain
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.results.reconcile import MATCHED, UNKNOWN
from airflow_gemini_batch.results.responses_file import file_row_blocks
from airflow_gemini_batch.results.rows import (
    EXAMPLES,
    FAILED,
    INVALID_OUTPUT,
    MISSING,
    N_STORED,
    OUTCOMES,
    STORED_FIELDS,
    SUCCEEDED,
    TOKEN_FIELDS,
    ResultRow,
    ShardReport,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from airflow_gemini_batch.results.reconcile import KeyReconciler

# The row types and outcomes are defined in ``results.rows``; they are importable from here too, the module
# a loader reads results through.
__all__ = [
    "EXAMPLES",
    "FAILED",
    "INVALID_OUTPUT",
    "MISSING",
    "N_STORED",
    "OUTCOMES",
    "STORED_FIELDS",
    "SUCCEEDED",
    "TOKEN_FIELDS",
    "ResultParser",
    "ResultRow",
    "ShardReport",
    "build_validator",
    "iter_file_rows",
    "iter_inline_rows",
    "iter_job_failed_rows",
    "iter_missing_rows",
    "to_json_schema",
]

log = logging.getLogger(__name__)

_new = tuple.__new__

# Finish reasons after which an empty answer is a failure rather than an empty success.
_OK_FINISH = frozenset({None, "STOP", "FINISH_REASON_UNSPECIFIED"})


def to_json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-style ``Schema`` (``type: "OBJECT"``, ``nullable``) → JSON Schema for jsonschema.

    A manifest may carry either dialect; JSON Schema passes through unchanged apart from dropping the
    Gemini-only ``propertyOrdering``.

    Not google-genai's ``types.Schema.model_validate(schema).json_schema`` (checked on 2.x and 3.x), although
    it converts a plain Gemini-dialect schema the same way: ``types.Schema`` forbids fields it does not know,
    so the JSON Schema most manifests carry (``responseJsonSchema``; pydantic's ``$defs``; ``oneOf``,
    ``allOf``, ``not``; a list of types) fails to validate instead of passing through, and it converts
    nested schemas only under ``items``, ``anyOf`` and ``properties`` (an ``additionalProperties`` schema
    keeps Gemini's upper-case types, which jsonschema rejects). A load must validate answers against exactly
    the schema the job was sent with, in either dialect.
    """
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for name, value in schema.items():
        if name in ("propertyOrdering", "property_ordering"):
            continue
        if name == "type" and isinstance(value, str):
            out[name] = value.lower()
        elif name in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[name] = {k: to_json_schema(v) for k, v in value.items()}
        elif name in ("items", "anyOf", "oneOf", "allOf", "any_of", "additionalProperties", "not"):
            out["anyOf" if name == "any_of" else name] = to_json_schema(value)
        else:
            out[name] = value
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def build_validator(schema: dict[str, Any]) -> Any:
    """A compiled jsonschema validator (built once per load: compiling per line would dominate)."""
    from jsonschema.validators import validator_for

    json_schema = to_json_schema(schema)
    cls = validator_for(json_schema)
    cls.check_schema(json_schema)
    return cls(json_schema)


class ResultParser:
    """Classifies parsed result lines (dicts) into :class:`ResultRow`.

    :param task: ``generate`` or ``embed`` (the manifest's task).
    :param response_schema: the job's response schema, if any; answers are then parsed as JSON and validated,
        and a mismatch is ``invalid_output``.
    :param parse_json: parse answers as JSON even without a schema (needed to fill ``output_columns``).
    """

    def __init__(
        self, task: str = "generate", response_schema: dict[str, Any] | None = None, parse_json: bool = False
    ) -> None:
        self.embed = task == "embed"
        self.validator = build_validator(response_schema) if response_schema else None
        self.parse_json = parse_json or response_schema is not None

    def classify(self, obj: dict[str, Any], key: Any, job_name: str | None) -> ResultRow:
        response = obj.get("response")
        if response is None or not isinstance(response, dict):
            error = obj.get("error") or obj.get("status")
            if isinstance(error, dict):
                return ResultRow(
                    key, FAILED, error_code=error.get("code"), error_message=error.get("message"),
                    job_name=job_name,
                )  # fmt: skip
            message = str(error) if error else "result line has neither a response nor an error"
            return ResultRow(key, FAILED, error_message=message, job_name=job_name)
        if self.embed:
            return self._embedding(response, key, job_name)
        return self._generation(response, key, job_name)

    def _embedding(self, response: dict[str, Any], key: Any, job_name: str | None) -> ResultRow:
        embedding = response.get("embedding")
        if embedding is None and response.get("embeddings"):
            embedding = response["embeddings"][0]
        values = embedding.get("values") if isinstance(embedding, dict) else None
        if not values:
            return ResultRow(key, FAILED, error_message="response has no embedding values", job_name=job_name)
        usage = response.get("usageMetadata") or {}
        tokens = usage.get("promptTokenCount") or response.get("tokenCount")
        return ResultRow(
            key, SUCCEEDED, embedding=values, prompt_tokens=tokens, total_tokens=tokens, job_name=job_name
        )

    def _generation(self, response: dict[str, Any], key: Any, job_name: str | None) -> ResultRow:
        usage = response.get("usageMetadata")
        if usage:
            prompt = usage.get("promptTokenCount")
            output = usage.get("candidatesTokenCount")
            thinking = usage.get("thoughtsTokenCount")
            cached = usage.get("cachedContentTokenCount")
            total = usage.get("totalTokenCount")
        else:
            prompt = output = thinking = cached = total = None
        model_version = response.get("modelVersion")
        candidates = response.get("candidates")
        if not candidates:
            reason = (response.get("promptFeedback") or {}).get("blockReason")
            message = f"prompt blocked: {reason}" if reason else "response has no candidates"
            return ResultRow(
                key, FAILED, None, None, None, reason, prompt, output, thinking, cached, total,
                model_version, None, message, job_name,
            )  # fmt: skip
        candidate = candidates[0]
        finish = candidate.get("finishReason")
        parts: list[Any] = (candidate.get("content") or {}).get("parts") or []
        if len(parts) == 1 and not parts[0].get("thought"):
            text = parts[0].get("text")
        else:
            # Thought summaries are not the answer; tool-call parts carry no text.
            texts = [p["text"] for p in parts if p.get("text") is not None and not p.get("thought")]
            text = "".join(texts) if texts else None
        if text is None and finish not in _OK_FINISH:
            return ResultRow(
                key, FAILED, None, None, None, finish, prompt, output, thinking, cached, total,
                model_version, None, f"no answer (finish reason {finish})", job_name,
            )  # fmt: skip
        return self.answer_row(
            key, text, finish, prompt, output, thinking, cached, total, model_version, job_name
        )

    def answer_row(
        self,
        key: Any,
        text: str | None,
        finish: str | None,
        prompt: int | None,
        output: int | None,
        thinking: int | None,
        cached: int | None,
        total: int | None,
        model_version: str | None,
        job_name: str | None,
    ) -> ResultRow:
        """The row of an answer: ``succeeded``, or ``invalid_output`` when JSON is expected and it is not."""
        if not self.parse_json:
            # tuple.__new__ skips the NamedTuple's Python-level __new__: this is the per-line hot path.
            return _new(
                ResultRow, (key, SUCCEEDED, text, None, None, finish, prompt, output, thinking, cached, total,
                            model_version, None, None, job_name, None, None),
            )  # fmt: skip
        outcome, value, message = self._check_json(text)
        # The answer is already JSON text when valid: stored as it came, never re-serialized.
        return ResultRow(
            key, outcome, text, text if outcome == SUCCEEDED else None, None, finish, prompt, output,
            thinking, cached, total, model_version, None, message, job_name, value=value,
        )  # fmt: skip

    def _check_json(self, text: str | None) -> tuple[str, Any, str | None]:
        try:
            value = orjson.loads(text or "")
        except orjson.JSONDecodeError as e:
            return INVALID_OUTPUT, None, f"output is not valid JSON: {e}"
        if self.validator is not None:
            from jsonschema.exceptions import best_match

            error = best_match(self.validator.iter_errors(value))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return (
                    INVALID_OUTPUT,
                    value,
                    f"output does not match the response schema at {where}: {error.message}",
                )
        return SUCCEEDED, value, None

    def object_row(
        self, obj: Any, line_no: int, keys: KeyReconciler, report: ShardReport, by_position: bool
    ) -> ResultRow | None:
        """The general, tolerant handling of one decoded line or inline item (``None``: reported, not a row).

        Reconciles the item's key against ``keys`` and classifies it; a line that is no result is reported
        as malformed, a key that is not in the list (or already matched) as unknown (or duplicate).
        ``by_position``: an item without a key is matched to the next key in list order (inline embedding
        results carry no metadata; the service returns them in input order); a file line without one is
        malformed.
        """
        report.lines += 1
        if type(obj) is not dict:
            report.malformed(line_no)
            return None
        response = obj.get("response")
        if response is None and obj.get("error") is None and obj.get("status") is None:
            report.malformed(line_no)  # valid JSON but no result in it: its key ends up missing
            return None
        key = _key_of(obj)
        if key is not None:
            status, original = keys.resolve(key)
        elif by_position:
            status, original = keys.take_next()
        else:
            report.malformed(line_no)
            return None
        if status is MATCHED:
            if not self.embed and type(response) is dict:
                row = self._generation(response, original, report.job_name)
            else:
                row = self.classify(obj, original, report.job_name)
            fingerprint = keys.fingerprint
            return row if fingerprint is None else _new(ResultRow, (*row[:-2], fingerprint, row[-1]))
        if status is UNKNOWN:
            report.unknown(key)
        else:
            report.duplicate(key)
        return None


def _key_of(obj: dict[str, Any]) -> Any:
    key = obj.get("key")
    if key is None:
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            key = metadata.get("key")
    return key


def _rows_from_items(
    items: Iterable[Any], parser: ResultParser, keys: KeyReconciler, report: ShardReport
) -> Iterator[ResultRow]:
    for line_no, item in enumerate(items, 1):
        row = parser.object_row(item, line_no, keys, report, True)
        if row is not None:
            yield row


def iter_file_rows(
    path: Path | str, parser: ResultParser, keys: KeyReconciler, report: ShardReport
) -> Iterator[ResultRow]:
    """Rows of a downloaded responses file, then a ``missing`` row for every key without a line.

    Not a generator itself: ``chain`` flattens the blocks in C, so taking a row costs no Python-level step.
    """
    return chain(
        chain.from_iterable(file_row_blocks(path, parser, keys, report)),
        iter_missing_rows(keys, report.job_name),
    )


def iter_inline_rows(
    items: list[Any], parser: ResultParser, keys: KeyReconciler, report: ShardReport
) -> Iterator[ResultRow]:
    """Rows of ``inlinedResponses`` items (numbered from 1 like lines), then the ``missing`` rows."""
    yield from _rows_from_items(items, parser, keys, report)
    yield from iter_missing_rows(keys, report.job_name)


def iter_missing_rows(keys: KeyReconciler, job_name: str) -> Iterator[ResultRow]:
    for key, fingerprint in keys.iter_unmatched_entries():
        yield ResultRow(
            key, MISSING, error_message="no result line for this key", job_name=job_name,
            request_fingerprint=fingerprint,
        )  # fmt: skip


def iter_job_failed_rows(
    keys: KeyReconciler, job_name: str, state: str, error: dict[str, Any] | None
) -> Iterator[ResultRow]:
    """Every key of a job that did not succeed becomes ``failed``, naming the job state (never dropped)."""
    code = (error or {}).get("code")
    message = f"job {state}" + (f": {error['message']}" if error and error.get("message") else "")
    for key, fingerprint in keys.iter_unmatched_entries():
        yield ResultRow(
            key, FAILED, error_code=code, error_message=message, job_name=job_name,
            request_fingerprint=fingerprint,
        )  # fmt: skip
