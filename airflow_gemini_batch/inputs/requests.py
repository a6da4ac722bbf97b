"""Rows → request lines: one ``{"key": ..., "request": GenerateContentRequest}`` JSONL line per valid row.

It is one module, past the usual size, because the three ways to build a request (prompt column, template,
callable) share the pre-encoded job-wide fragments and the per-row validation.

Invariants:

* Row values are data. A prompt template is parsed once into literal text and column slots; values are copied
  into the slots and never parsed again, so a value containing ``{x}`` or ``{{ }}`` stays literal (no
  ``str.format``, no Jinja on values). ``{{``/``}}`` in the template itself are literal braces.
* Every row is either encoded or recorded as invalid with its reason (``InvalidRows``); nothing is dropped
  silently. Validation happens here, while streaming, before any API call.
* The hot path (prompt column or template) builds each line from pre-encoded byte fragments and two
  ``orjson.dumps`` of strings: no per-row dicts. The job-wide parts (system instruction, generation config,
  schema, tools, safety settings, cache) are encoded once.
* Keys go on the wire as strings (``str(key)``); the key lists hold exactly the JSON of the wire key.
* A cache made for this run (``shared_context``) exists only after the rows are validated, so its name cannot
  be in the lines as they are built: with ``cache_slot`` the ``cachedContent`` field is a fixed-width slot
  (:func:`cache_slot_field`: the field, then spaces, which JSON allows between tokens) holding a placeholder,
  filled in place with the real name before upload. Same width, same bytes count, same fingerprint on every try.
* The per-request limit (``DEFAULT_MAX_REQUEST_BYTES`` = 10 MiB of JSON line) is ours: well above a
  1M-token text prompt (~4 MB), far under the 2 GB file limit, and it keeps one bad row (a blob selected by
  mistake) from making a shard the service rejects.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.fingerprint import PromptFingerprinter, new_slot, request_fingerprint
from airflow_gemini_batch.inputs.sources import MalformedLine

if TYPE_CHECKING:
    from airflow_gemini_batch.inputs.validation import InvalidRows

DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
#: Bytes of a request line's ``"cachedContent":"<name>"`` slot, padding included (names are ~55 characters).
CACHE_SLOT_WIDTH = 192

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def cache_slot_field(name: str) -> bytes:
    """``"cachedContent":"<name>"`` padded with spaces to :data:`CACHE_SLOT_WIDTH` bytes."""
    field = b'"cachedContent":' + orjson.dumps(name)
    if len(field) > CACHE_SLOT_WIDTH:
        raise ValueError(f"The cached content name {name!r} is longer than a request line's slot for it.")
    return field + b" " * (CACHE_SLOT_WIDTH - len(field))


def response_schema_dict(schema: Any) -> dict[str, Any] | None:
    """A JSON-schema dict, or a pydantic model class → its ``model_json_schema()``."""
    if schema is None or isinstance(schema, dict):
        return schema
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    raise GeminiBatchInputError(
        f"response_schema must be a JSON-schema dict or a pydantic model class, got {type(schema).__name__}."
    )


@dataclass
class RequestSpec:
    """What every request of a job shares, and how a row becomes a prompt.

    Exactly one of ``prompt_column``, ``prompt_template``, ``request_builder`` (default:
    ``prompt_column="prompt"``). Dict options may use snake_case or camelCase names at their top level; they
    are written in REST camelCase.
    """

    task: str = "generate"
    key_column: str = "id"
    prompt_column: str | None = None
    prompt_template: str | None = None
    request_builder: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    system_instruction: str | dict[str, Any] | None = None
    generation_config: dict[str, Any] | None = None
    response_schema: dict[str, Any] | None = None
    tools: list[Any] | None = None
    safety_settings: list[dict[str, Any]] | None = None
    cached_content: str | None = None
    #: ``cached_content`` is a placeholder, written as a fixed-width slot to be filled later (module docstring).
    cache_slot: bool = False
    #: what request fingerprints name as ``cachedContent`` instead of ``cached_content`` (a run's cache
    #: placeholder differs per run; the shared context's digest does not, and changes with the context)
    fingerprint_cached_content: str | None = None
    embedding_task_type: str | None = None
    output_dimensionality: int | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    _checked: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.task not in ("generate", "embed"):
            raise GeminiBatchInputError(f"task must be 'generate' or 'embed', got {self.task!r}.")
        given = [n for n in ("prompt_column", "prompt_template", "request_builder") if getattr(self, n)]
        if len(given) > 1:
            raise GeminiBatchInputError(
                f"Give only one of prompt_column, prompt_template, request_builder; got {given}."
            )
        if not given:
            self.prompt_column = "prompt"
        self.response_schema = response_schema_dict(self.response_schema)

    def job_wide(self) -> dict[str, Any]:
        """The fields added to every request, in REST camelCase."""
        if self.task == "embed":
            out: dict[str, Any] = {}
            if self.embedding_task_type:
                out["taskType"] = self.embedding_task_type
            if self.output_dimensionality:
                out["outputDimensionality"] = int(self.output_dimensionality)
            return out
        out = {}
        if self.system_instruction:
            si = self.system_instruction
            out["systemInstruction"] = {"parts": [{"text": si}]} if isinstance(si, str) else si
        config = {_camel(k): v for k, v in (self.generation_config or {}).items()}
        if self.response_schema is not None:
            config.setdefault("responseMimeType", "application/json")
            config["responseJsonSchema"] = self.response_schema
        if config:
            out["generationConfig"] = config
        if self.tools:
            out["tools"] = self.tools
        if self.safety_settings:
            out["safetySettings"] = [{_camel(k): v for k, v in s.items()} for s in self.safety_settings]
        if self.cached_content:
            out["cachedContent"] = self.cached_content
        return out


def parse_template(template: str) -> tuple[list[str], list[str]]:
    """``"a {x} b {{c}}"`` → literals ``["a ", " b {c}"]`` and columns ``["x"]`` (one more literal)."""
    literals, columns, buf, pos = [], [], [], 0
    for m in _PLACEHOLDER.finditer(template):
        buf.append(template[pos : m.start()])
        token = m.group(0)
        if token in ("{{", "}}"):
            buf.append(token[0])
        elif m.group(1) is not None and m.group(1).strip():
            literals.append("".join(buf))
            buf = []
            columns.append(m.group(1).strip())
        else:
            raise GeminiBatchInputError(
                f"prompt_template has a stray {token!r} at position {m.start()}: use {{column}} for a "
                "value and {{ or }} for a literal brace."
            )
        pos = m.end()
    buf.append(template[pos:])
    literals.append("".join(buf))
    return literals, columns


def compile_template(template: str, columns: Sequence[str]) -> Callable[[tuple[Any, ...]], str | None]:
    """A fast renderer ``row tuple → prompt`` (None when a used column is NULL).

    The generated function's source holds only integer column positions and names of constants (``_L0``...):
    neither template text nor row values ever become code, and values are inserted once, unparsed.
    """
    literals, used = parse_template(template)
    unknown = [c for c in dict.fromkeys(used) if c not in columns]
    if unknown:
        raise GeminiBatchInputError(
            f"prompt_template uses column(s) {unknown} that the input does not have; available columns: "
            f"{list(columns)}. Fix the placeholder names or select those columns in the SQL."
        )
    idx = [list(columns).index(c) for c in used]
    consts = {f"_L{i}": lit for i, lit in enumerate(literals)}
    null_check = " or ".join(f"r[{i}] is None" for i in sorted(set(idx))) or "False"
    body = "".join(f"{{_L{n}}}{{r[{i}]}}" for n, i in enumerate(idx)) + f"{{_L{len(idx)}}}"
    src = f"def _render(r):\n    if {null_check}:\n        return None\n    return f'{body}'\n"
    namespace: dict[str, Any] = dict(consts)
    exec(compile(src, "<prompt_template>", "exec"), namespace)
    return namespace["_render"]


def _decode(value: Any) -> str | None:
    """A non-str value → text; None when it is bytes that are not UTF-8."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value)


class RequestEncoder:
    """Encodes batches of row tuples into JSONL request lines, recording invalid rows.

    :param spec: the job-wide request options.
    :param columns: the input's column names (checked now: key, prompt column, template placeholders).
    :param invalid: where invalid rows go.
    :param prebuilt: rows are ``(key, request_dict)`` (JSONL file or ``{"key", "request"}`` list items).
    :param model: the job's model, part of every request fingerprint (:mod:`~.inputs.fingerprint`).
    """

    def __init__(
        self,
        spec: RequestSpec,
        columns: Sequence[str],
        invalid: InvalidRows,
        prebuilt: bool = False,
        model: str = "",
    ):
        self.spec = spec
        self.model = model
        self.invalid = invalid
        self.columns = list(columns)
        self.prebuilt = prebuilt
        self.limit = spec.max_request_bytes
        self._job_wide = spec.job_wide()
        self._slot: tuple[bytes, bytes] | None = None
        if spec.cache_slot and spec.cached_content:
            bare = b'"cachedContent":' + orjson.dumps(spec.cached_content)
            self._slot = (bare, cache_slot_field(spec.cached_content))
        self._embed = spec.task == "embed"
        key_column = "key" if prebuilt else spec.key_column
        self._ki = self._column(key_column, "key_column")
        self._get_prompt: Callable[[tuple[Any, ...]], Any] | None = None
        if prebuilt:
            self._ri = 1
        elif spec.prompt_template:
            self._get_prompt = compile_template(spec.prompt_template, self.columns)
        elif spec.prompt_column:
            self._get_prompt = operator.itemgetter(self._column(spec.prompt_column, "prompt_column"))
        self._head = b'{"key":'
        #: True while every key so far was larger than the one before (same type): then no key can repeat,
        #: and the duplicate-key pass is skipped. Typical for ``ORDER BY id`` or a table read in rowid order.
        self.monotonic = True
        self._last: Any = None
        if self._embed:
            self._mid = b',"request":{"content":{"parts":[{"text":'
            self._tail = b"}]}" + self._wide_bytes() + b"}}\n"
        else:
            self._mid = b',"request":{"contents":[{"role":"user","parts":[{"text":'
            self._tail = b"}]}]" + self._wide_bytes() + b"}}\n"
        slot = new_slot()
        self._fingerprint_prompt = PromptFingerprinter(
            model, spec.task, self._request_of(slot), slot
        ).of_encoded

    def _request_of(self, prompt: str) -> dict[str, Any]:
        """The request the hot path writes for ``prompt`` (as a dict: only for its fingerprint fragments)."""
        parts = [{"text": prompt}]
        if self._embed:
            return {"content": {"parts": parts}, **self._job_wide}
        return self._for_fingerprint({"contents": [{"role": "user", "parts": parts}], **self._job_wide})

    def _for_fingerprint(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request as its fingerprint sees it: a run's cache placeholder named by what it caches."""
        stable = self.spec.fingerprint_cached_content
        if stable and self.spec.cached_content and request.get("cachedContent") == self.spec.cached_content:
            return {**request, "cachedContent": stable}
        return request

    def _column(self, name: str, param: str) -> int:
        if name not in self.columns:
            raise GeminiBatchInputError(
                f"{param}={name!r} is not a column of the input; columns are {self.columns}. "
                f"Select it in the query or set {param}."
            )
        return self.columns.index(name)

    def _wide_bytes(self) -> bytes:
        return self._with_slot(b"," + orjson.dumps(self._job_wide)[1:-1]) if self._job_wide else b""

    def _with_slot(self, encoded: bytes) -> bytes:
        return encoded.replace(self._slot[0], self._slot[1], 1) if self._slot else encoded

    def encode(self, rows: Sequence[tuple[Any, ...]]) -> tuple[list[bytes], list[bytes]]:
        """→ (request lines with newline, JSON-encoded keys), same length, in input order."""
        lines, keys, _ = self.encode_with_fingerprints(rows)
        return lines, keys

    def encode_with_fingerprints(
        self, rows: Sequence[tuple[Any, ...]]
    ) -> tuple[list[bytes], list[bytes], list[str]]:
        """→ (request lines with newline, JSON-encoded keys, request fingerprints), same length, in order."""
        if self._get_prompt is None:
            return self._encode_dicts(rows)
        lines: list[bytes] = []
        keys: list[bytes] = []
        fingerprints: list[str] = []
        add_line, add_key, add_fingerprint = lines.append, keys.append, fingerprints.append
        ki, get_prompt, dumps, limit = self._ki, self._get_prompt, orjson.dumps, self.limit
        fingerprint_of = self._fingerprint_prompt
        head, mid, tail, join = self._head, self._mid, self._tail, b"".join
        key_at = len(head)
        mono, last = self.monotonic, self._last
        for row in rows:
            key = row[ki]
            prompt = get_prompt(row)
            if (
                (type(key) is not str and type(key) is not int)
                or type(prompt) is not str
                or (not key and key != 0)
            ):
                key, prompt = self._slow_checks(row, key, prompt)
                if key is None:
                    continue
            if not prompt or prompt.isspace():
                self.invalid.add("empty_prompt", key)
                continue
            try:
                key_json = dumps(key if type(key) is str else str(key))
                prompt_json = dumps(prompt)
                line = join((head, key_json, mid, prompt_json, tail))
            except orjson.JSONEncodeError:
                self.invalid.add("non_utf8", key)
                continue
            if len(line) > limit:
                self.invalid.add("too_large", key, f"{len(line):,} bytes")
                continue
            add_line(line)
            # A slice of the line, not orjson's own result: each object orjson returns sits in a ~4 KB heap
            # block for as long as it lives, so keeping them (10 000 per batch) would cost ~40 MB of RSS.
            add_key(line[key_at : key_at + len(key_json)])
            add_fingerprint(fingerprint_of(prompt_json))
            if mono:
                if last is not None and (type(key) is not type(last) or key <= last):
                    mono = False
                last = key
        self.monotonic, self._last = mono, last
        return lines, keys, fingerprints

    def _slow_checks(self, row: tuple[Any, ...], key: Any, prompt: Any) -> tuple[Any, Any]:
        """Off the hot path: NULL/odd keys, non-str prompts. (None, None) means: recorded as invalid."""
        if key is None or key == "" or isinstance(key, MalformedLine):
            self.invalid.add("missing_key", key if isinstance(key, MalformedLine) else None)
            return None, None
        if type(key) is not str and type(key) is not int:
            text = _decode(key)
            if text is None:
                self.invalid.add("non_utf8", repr(key))
                return None, None
            key = text
        if prompt is None:
            self.invalid.add("null_value" if self.spec.prompt_template else "empty_prompt", key)
            return None, None
        if type(prompt) is not str:
            prompt = _decode(prompt)
            if prompt is None:
                self.invalid.add("non_utf8", key)
                return None, None
        return key, prompt

    def _encode_dicts(self, rows: Sequence[tuple[Any, ...]]) -> tuple[list[bytes], list[bytes], list[str]]:
        """Prebuilt requests and ``request_builder``: a dict per row (slower, but flexible)."""
        self.monotonic = False  # not tracked here: the duplicate check always runs
        lines: list[bytes] = []
        keys: list[bytes] = []
        fingerprints: list[str] = []
        for row in rows:
            key = row[self._ki]
            if key is None or key == "" or isinstance(key, MalformedLine):
                if isinstance(key, MalformedLine):
                    self.invalid.add("malformed", key, key.reason)
                else:
                    self.invalid.add("missing_key", None)
                continue
            if type(key) is not str:
                key = _decode(key) if type(key) is not int else str(key)
                if key is None:
                    self.invalid.add("non_utf8", repr(row[self._ki]))
                    continue
            request = self._request_for(row, key)
            if request is None:
                continue
            key_json = b"%b" % orjson.dumps(key)  # copies: see the note on orjson results in encode()
            try:
                line = self._with_slot(orjson.dumps({"key": key, "request": request})) + b"\n"
            except orjson.JSONEncodeError as e:
                reason = "non_utf8" if "utf-8" in str(e).lower() else "bad_request"
                self.invalid.add(reason, key, None if reason == "non_utf8" else f"not JSON-serializable: {e}")
                continue
            if len(line) > self.limit:
                self.invalid.add("too_large", key, f"{len(line):,} bytes")
                continue
            lines.append(line)
            keys.append(key_json)
            fingerprints.append(
                request_fingerprint(self.model, self.spec.task, self._for_fingerprint(request))
            )
        return lines, keys, fingerprints

    def _request_for(self, row: tuple[Any, ...], key: str) -> dict[str, Any] | None:
        if self.prebuilt:
            request = row[self._ri]
        else:
            try:
                request = self.spec.request_builder(dict(zip(self.columns, row, strict=False)))  # type: ignore[misc]
            except Exception as e:
                self.invalid.add("builder_error", key, f"{type(e).__name__}: {e}")
                return None
        if not isinstance(request, Mapping):
            self.invalid.add("bad_request", key, f"got {type(request).__name__}, expected a dict")
            return None
        content_field = "content" if self._embed else "contents"
        if not request.get(content_field):
            self.invalid.add("empty_prompt", key)
            return None
        # Job-wide options are defaults: what the row's own request sets wins.
        return {**self._job_wide, **request} if self._job_wide else dict(request)
