"""Invalid input rows: counted by reason, named in one clear error, or skipped into a file — never lost.

Invariant: every row the submit operator cannot encode is recorded here with its reason. With
``on_invalid_row="fail"`` the task stops before any API call with a message naming the first keys of each
reason, their count, the limit involved and the fix; with ``"skip"`` every skipped key is written to the
skipped-keys file under the staging path and counted in the manifest.
"""

from __future__ import annotations

from typing import IO, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.sources import MalformedLine

MAX_EXAMPLE_KEYS = 10

REASONS = {
    "missing_key": (
        "key is missing or NULL",
        "select a non-NULL key column (key_column) or filter those rows",
    ),
    "empty_prompt": (
        "prompt is NULL, empty or only whitespace",
        "filter them in the query (e.g. WHERE prompt IS NOT NULL AND trim(prompt) <> '')",
    ),
    "null_value": (
        "a column used by prompt_template is NULL",
        "COALESCE the column in the query or filter those rows",
    ),
    "duplicate_key": (
        "key appears more than once (only the first occurrence is kept when skipping)",
        "make key_column unique (e.g. SELECT DISTINCT, or use the primary key)",
    ),
    "too_large": ("request is over the per-request limit", "shorten the prompt or raise max_request_bytes"),
    "non_utf8": (
        "text is not valid UTF-8",
        "fix the encoding at the source (e.g. CAST/CONVERT to UTF-8 text)",
    ),
    "malformed": ('line is not a JSON object with "key" and "request"', "fix the input JSONL file"),
    "bad_request": ("request is not a valid request object", "return a request dict with contents"),
    "builder_error": ("request_builder raised an exception", "fix request_builder for those rows"),
}


class InvalidRows:
    """Counts invalid rows by reason and keeps the first keys for the message.

    When skipping, every skipped key goes to the skipped-keys file (``{"key": ..., "reason": ...}`` lines),
    so none disappears silently.
    """

    def __init__(self, skip: bool, skipped_file: IO[bytes] | None, max_request_bytes: int) -> None:
        self.skip = skip
        self.max_request_bytes = max_request_bytes
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.details: dict[str, str] = {}
        self._file = skipped_file

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, key: Any, detail: str | None = None) -> None:
        if key is not None and not isinstance(key, (str, MalformedLine)):
            key = str(key)  # the wire form: messages and the skipped file show keys as the key lists do
        self.counts[reason] = self.counts.get(reason, 0) + 1
        label = str(key) if isinstance(key, MalformedLine) else _label(key)
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLE_KEYS:
            examples.append(label)
        if detail and reason not in self.details:
            self.details[reason] = detail
        if self.skip and self._file is not None:
            wire_key = None if key is None or isinstance(key, MalformedLine) else key
            record: dict[str, Any] = {"key": wire_key, "reason": reason}
            if isinstance(key, MalformedLine):
                record["line"] = key.line_no
            try:
                self._file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            except orjson.JSONEncodeError:  # a key that is itself not valid UTF-8
                record["key"], record["key_repr"] = None, ascii(wire_key)
                self._file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def message(self) -> str:
        if self.skip:
            outcome = "invalid and were skipped (on_invalid_row='skip')"
        else:
            outcome = "invalid; nothing was submitted to the Gemini API"
        lines = [f"{self.total} input row(s) are {outcome}."]
        for reason, count in self.counts.items():
            what, fix = REASONS[reason]
            if reason == "too_large":
                what = f"{what} of {self.max_request_bytes:,} bytes (JSON line)"
            detail = f" ({self.details[reason]})" if reason in self.details else ""
            keys = ", ".join(self.examples[reason])
            more = (
                f" and {count - len(self.examples[reason])} more"
                if count > len(self.examples[reason])
                else ""
            )
            lines.append(f"- {count} row(s): {what}{detail}; first keys: {keys}{more}. Fix: {fix}.")
        if not self.skip:
            lines.append(
                "Or set on_invalid_row='skip' to submit the valid rows and list the skipped keys in staging."
            )
        return "\n".join(lines)

    def raise_if_any(self) -> None:
        if self.counts and not self.skip:
            raise GeminiBatchInputError(self.message())


def _label(key: Any) -> str:
    try:
        return orjson.dumps(key).decode()
    except orjson.JSONEncodeError:
        return ascii(key)
