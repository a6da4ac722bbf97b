"""The request fingerprint: what decides that a row's answer in the destination can be reused.

A request fingerprint is the sha256 (hex) of the canonical JSON - sorted keys at every level, no whitespace,
orjson's ``OPT_SORT_KEYS`` - of ``{"model": ..., "request": ..., "task": ...}``, where ``request`` is the
request exactly as it goes on the wire: the row's prompt *and* the job-wide parts merged into it (system
instruction, generation config, response schema, tools, safety settings, cached content). So a changed prompt,
model, config or schema changes the fingerprint of exactly the rows it changes; the row key is not part of it
(two keys with the same prompt share a fingerprint, and reuse is decided per key *and* fingerprint).

Invariants:

* One definition: :func:`request_fingerprint` (a dict) and :class:`PromptFingerprinter` (the encoder's hot
  path, a prompt string spliced between pre-encoded canonical fragments) give the same hex for the same
  request; ``tests/inputs/test_fingerprint.py`` checks it over awkward prompts and job-wide options.
* Computed once, at submit time, from the request that is sent, and written beside the key list
  (``fingerprints-<n>.txt``, one hex digest per line, same order): the load stores what was *sent*, even when
  the source table or the template changed between submit and load.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson

#: Length of one fingerprint: a sha256 in hex.
FINGERPRINT_HEX = 64
#: Length of one line of a fingerprints file: the hex digits and a newline.
FINGERPRINT_LINE_BYTES = FINGERPRINT_HEX + 1


def canonical_json(model: str, task: str, request: Any) -> bytes:
    """The canonical bytes a fingerprint is the sha256 of."""
    return orjson.dumps({"model": model, "request": request, "task": task}, option=orjson.OPT_SORT_KEYS)


def request_fingerprint(model: str, task: str, request: Any) -> str:
    """sha256 hex of :func:`canonical_json` (see the module docstring)."""
    return hashlib.sha256(canonical_json(model, task, request)).hexdigest()


class PromptFingerprinter:
    """Fingerprints of requests that differ only in their prompt text, without a dict per row.

    The canonical JSON of a template request whose prompt is a unique placeholder is split at the placeholder
    into a prefix and a suffix; a row's canonical JSON is then ``prefix + orjson.dumps(prompt) + suffix`` -
    the bytes :func:`canonical_json` gives for that request, since a string encodes the same wherever it sits.

    :param request_with_slot: the request with ``slot`` as its prompt text (job-wide parts included).
    """

    def __init__(self, model: str, task: str, request_with_slot: Any, slot: str) -> None:
        parts = canonical_json(model, task, request_with_slot).split(orjson.dumps(slot))
        if len(parts) != 2:  # the slot is a fresh uuid: it cannot occur in the job-wide parts
            raise ValueError("the prompt slot must occur exactly once in the template request")
        self._prefix = hashlib.sha256(parts[0])
        self._suffix = parts[1]

    def of_encoded(self, prompt_json: bytes) -> str:
        """The fingerprint of the request whose prompt is ``prompt_json`` (``orjson.dumps(prompt)``)."""
        digest = self._prefix.copy()
        digest.update(prompt_json)
        digest.update(self._suffix)
        return digest.hexdigest()


def new_slot() -> str:
    """A placeholder prompt that no job-wide option can contain."""
    return f"prompt-slot-{uuid.uuid4().hex}"
