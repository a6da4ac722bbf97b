"""Context caching of a shared prefix: one cached content per run, referenced by every request, deleted after.

A DAG author gives a long shared context (a document, instructions, examples) once, as ``shared_context``; the
run caches it with ``caches.create`` and every request line names the cache in ``cachedContent``, so the
prefix is billed once as storage and then at the cached-token price on every request, not as input tokens.

Invariants:

* Refused before any paid call: a prefix below the model's minimum cacheable size (:data:`MIN_CACHE_TOKENS`,
  the service's documented limits) stops the run with an error naming the size, the minimum and the fix,
  before a row is read. The size is estimated at ~4 characters a token (the service's own count decides at
  ``create``; a prefix with non-text parts is not estimated).
* Created at most once per run, like jobs: the display name is deterministic (``agb-<identity>-<digest>-cache``,
  the digest over model and cached contents); the intent is recorded in the task state store before
  ``caches.create`` and the name right after (:class:`~airflow_gemini_batch.submit.ledger.SubmissionLedger`).
  A retry re-uses the recorded cache (and renews its TTL); a cache whose name was never recorded (the worker
  died between create and record) is found by its display name in ``caches.list``. A recorded cache that is
  gone (expired, deleted after a load) is created again, and recorded uploads of shards without a job are
  dropped: their files name the old cache.
* Created only after every row was read and validated: the request lines carry a fixed-width slot for the
  name (:func:`~airflow_gemini_batch.inputs.requests.cache_slot_field`), filled in place in each shard file by
  :func:`fill_cache_slots` before upload. The fingerprint is over the placeholder (which carries the
  context's digest), so it is the same on every try whatever the cache's name, and changes with the context.
* Its TTL (``cache_ttl_seconds``) covers the expected wait and is the backstop when nothing else runs; the wait
  (sensor, trigger) renews it while jobs run (:func:`needs_renewal`), the load deletes it, and so do a kill
  and a final failure of the submit (when no job references it). What a cache costs stops with its delete.
* The system instruction and tools go into the cache, not the requests: the service refuses a request that
  sets them next to ``cachedContent``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.requests import cache_slot_field
from airflow_gemini_batch.manifest import ContextCacheInfo

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from airflow_gemini_batch.hooks.gemini import CacheStatus, GeminiBatchHook
    from airflow_gemini_batch.submit.ledger import SubmissionLedger

log = logging.getLogger(__name__)

#: The minimum cacheable size in tokens, per model family, from the Gemini API's caching docs (2.5 Flash and
#: 3 Flash 1 024, 2.5 Pro and 3 Pro 4 096). A model not listed: 4 096 for a "-pro" model, else 1 024.
MIN_CACHE_TOKENS = {
    "gemini-2.5-flash": 1024,
    "gemini-2.5-pro": 4096,
    "gemini-3-flash": 1024,
    "gemini-3-pro": 4096,
}
CHARS_PER_TOKEN = 4
#: Six hours: most batch jobs finish well within it; the wait renews it for the rest, up to the 48 h expiry.
DEFAULT_CACHE_TTL_SECONDS = 6 * 3600
_SCAN_BLOCK = 8 * 1024 * 1024


def min_cache_tokens(model: str) -> int:
    model_id = model.removeprefix("models/")
    for family, minimum in MIN_CACHE_TOKENS.items():
        if model_id.startswith(family):
            return minimum
    return 4096 if "-pro" in model_id else 1024


def _content(item: Any, what: str) -> dict[str, Any]:
    if isinstance(item, str):
        return {"role": "user", "parts": [{"text": item}]}
    if isinstance(item, dict) and isinstance(item.get("parts"), list):
        return {"role": "user", **item}
    raise GeminiBatchInputError(
        f"{what} must be text, a Content dict ({{'parts': [...]}}) or a list of them; got {type(item).__name__}."
    )


@dataclass(frozen=True)
class SharedContext:
    """What the run caches: contents, plus the job-wide system instruction and tools (they move into it)."""

    model: str
    contents: list[dict[str, Any]]
    system_instruction: dict[str, Any] | None
    tools: list[Any] | None
    ttl_seconds: float

    @classmethod
    def of(
        cls,
        shared_context: Any,
        *,
        model: str,
        system_instruction: str | dict[str, Any] | None,
        tools: list[Any] | None,
        ttl_seconds: float | None,
    ) -> SharedContext:
        items = shared_context if isinstance(shared_context, list) else [shared_context]
        contents = [_content(item, "shared_context") for item in items]
        si = _content(system_instruction, "system_instruction") if system_instruction else None
        if si is not None:
            si.pop("role", None)
        ttl = DEFAULT_CACHE_TTL_SECONDS if ttl_seconds is None else float(ttl_seconds)
        if not ttl >= 60:
            raise GeminiBatchInputError(f"cache_ttl_seconds must be at least 60, got {ttl_seconds!r}.")
        return cls(model, contents, si, list(tools) if tools else None, ttl)

    def _texts(self) -> Iterable[Any]:
        for content in [*self.contents, *([self.system_instruction] if self.system_instruction else [])]:
            for part in content.get("parts") or []:
                yield part.get("text") if isinstance(part, dict) and set(part) == {"text"} else None

    def estimated_tokens(self) -> int | None:
        """~4 characters a token over the text parts; None when a part is not text (a file, an image)."""
        texts = list(self._texts())
        if any(t is None for t in texts):
            return None
        return math.ceil(sum(len(str(t)) for t in texts) / CHARS_PER_TOKEN)

    def check_size(self) -> None:
        """Refuse, before any paid call, a prefix the service would not cache (below the model's minimum)."""
        tokens, minimum = self.estimated_tokens(), min_cache_tokens(self.model)
        if tokens is None or tokens >= minimum:
            return
        raise GeminiBatchInputError(
            f"shared_context is about {tokens:,} tokens (system instruction included, ~{CHARS_PER_TOKEN} "
            f"characters a token), below the minimum cacheable size of {self.model} ({minimum:,} tokens); "
            "nothing was created or uploaded. Fix: give at least "
            f"{minimum:,} tokens (~{minimum * CHARS_PER_TOKEN:,} characters) of shared context, or drop "
            "shared_context and put that text in the prompt or system_instruction (a prefix that small saves "
            "little)."
        )

    @property
    def digest(self) -> str:
        canonical = orjson.dumps(
            [self.model, self.contents, self.system_instruction, self.tools], option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(canonical).hexdigest()

    def display_name(self, identity_hash: str) -> str:
        return f"agb-{identity_hash}-{self.digest[:8]}-cache"


def placeholder_name(identity_hash: str, context: SharedContext) -> str:
    """What the request lines name until the cache exists (see :func:`fill_cache_slots`). It carries the
    context's digest, so the lines — and the input fingerprint — change exactly when the shared context does."""
    return f"cachedContents/agb-slot-{identity_hash}-{context.digest[:16]}"


def needs_renewal(expire_time: float | None, ttl_seconds: float, now: float) -> bool:
    """Renew when less than half the TTL is left: a poll or two late still finds the cache alive."""
    return expire_time is not None and expire_time - now < ttl_seconds / 2


def fill_cache_slots(path: Path, placeholder: str, name: str) -> int:
    """Write ``name`` into every placeholder slot of a shard file, in place; returns the slots filled.

    Streams the file in 8 MiB blocks (overlapping by a slot, so none is split unseen) and writes each slot
    at its offset: memory stays one block whatever the shard size, and the file keeps its size.
    """
    old, new = cache_slot_field(placeholder), cache_slot_field(name)
    filled, offset, buf = 0, 0, b""
    with open(path, "r+b", buffering=0) as fh:
        fd = fh.fileno()
        while block := fh.read(_SCAN_BLOCK):
            buf += block
            start = 0
            while (at := buf.find(old, start)) != -1:
                os.pwrite(fd, new, offset + at)
                filled += 1
                start = at + len(old)
            keep = max(len(buf) - (len(old) - 1), start)
            offset, buf = offset + keep, buf[keep:]
    return filled


@dataclass(frozen=True)
class RunCache:
    """The run's cache as the manifest carries it: names, TTL and expiry (epoch seconds)."""

    name: str
    display_name: str
    ttl_seconds: float
    expire_time: float | None
    token_count: int | None
    #: True when this try made it (False: re-used from an earlier try or found by its display name)
    created: bool
    #: True when the recorded cache was gone and this one replaced it
    replaced: bool = False
    #: the service's create time (epoch seconds): the start of what its storage costs
    create_time: float | None = None

    def as_manifest(self) -> ContextCacheInfo:
        return ContextCacheInfo(
            name=self.name,
            display_name=self.display_name,
            ttl_seconds=self.ttl_seconds,
            expire_time=self.expire_time,
            token_count=self.token_count,
            create_time=self.create_time,
        )


def ensure_cache(
    hook: GeminiBatchHook, ledger: SubmissionLedger, context: SharedContext, identity_hash: str
) -> RunCache:
    """The run's cache: the recorded one (TTL renewed), the one found by display name, or a new one."""
    display_name = context.display_name(identity_hash)
    rec = ledger.cache()
    ours = rec.get("display_name") == display_name
    status: CacheStatus | None = None
    if ours and rec.get("name"):
        status = hook.extend_cache(rec["name"], context.ttl_seconds)
        if status is not None:
            log.info(
                "Re-using context cache %s (%s); TTL renewed to %ds",
                status.name,
                display_name,
                context.ttl_seconds,
            )
    elif (ours and rec.get("intent")) or not ledger.durable:
        found = hook.find_cache_by_display_name(display_name)
        if found is not None:
            log.warning(
                "Found context cache %s by display name %s (created, but its name was never recorded); "
                "re-using it instead of creating another",
                found.name,
                display_name,
            )
            status = hook.extend_cache(found.name, context.ttl_seconds) or None
    if status is not None:
        ledger.record_cache(display_name, status.name)
        return _run_cache(status, display_name, context, created=False)
    replaced = ours and bool(rec.get("name"))
    if replaced:
        log.warning("Context cache %s is gone (expired or deleted); creating it again", rec["name"])
    ledger.record_cache_intent(display_name)
    status = hook.create_cache(
        model=context.model,
        display_name=display_name,
        contents=context.contents,
        ttl_seconds=context.ttl_seconds,
        system_instruction=context.system_instruction,
        tools=context.tools,
    )
    ledger.record_cache(display_name, status.name)
    log.info(
        "Created context cache %s (%s): %s tokens, TTL %ds",
        status.name,
        display_name,
        status.token_count,
        context.ttl_seconds,
    )
    return _run_cache(status, display_name, context, created=True, replaced=replaced)


def _run_cache(
    status: CacheStatus, display_name: str, context: SharedContext, *, created: bool, replaced: bool = False
) -> RunCache:
    return RunCache(
        name=status.name,
        display_name=display_name,
        ttl_seconds=context.ttl_seconds,
        expire_time=status.expire_time,
        token_count=status.token_count,
        created=created,
        replaced=replaced,
        create_time=status.create_time,
    )


def delete_cache(hook: GeminiBatchHook, name: str, why: str, logger: Any = None) -> bool | None:
    """Best effort: a failed delete is logged, never raised (the TTL is the backstop).

    :returns: True when deleted now, False when it was already gone, None when the delete failed.
    """
    logger = logger or log
    try:
        deleted = hook.delete_cache(name)
    except Exception as e:
        logger.warning(
            "Could not delete context cache %s (%s); its TTL ends it: %s", name, why, type(e).__name__
        )
        return None
    if deleted:
        logger.info("Deleted context cache %s (%s)", name, why)
    return deleted
