"""Cached contents (context caching): records in memory, persisted with the rest of the state, expiring by TTL.

Invariants:

* A cache's liveness is a pure function of the clock and its ``expire_time`` (and a delete): there is no
  sweeper to drift. An expired or deleted cache is 404 to ``get`` / ``patch`` / ``delete``, absent from
  ``list``, and a request that references it fails (``resolve``) — as on the real service.
* Its token count is the emulator's usual ~4 characters per token over the text of its system instruction
  and contents; ``create`` refuses one below the model's minimum (the service's documented limits: 2.5 Flash
  and 3 Flash 1 024 tokens, 2.5 Pro and 3 Pro 4 096), with the service's message.
* Lists are newest first with the same page tokens as files and jobs (the process-wide sequence).
* Every change (create, TTL update, delete, reset) calls ``on_change`` afterwards, outside the lock, so the
  persisted snapshot follows. Deleted caches stay in memory (flagged) so tests can count them.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.emulator.common import ApiError, new_id, pick, rfc3339
from airflow_gemini_batch.emulator.responder import CHARS_PER_TOKEN, all_prompt_text
from airflow_gemini_batch.emulator.store import next_seq, paginate

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Mapping

DEFAULT_TTL_SECONDS = 3600.0
#: The documented minimum cacheable size per model family (tokens); other models: the smaller one.
MIN_CACHE_TOKENS = {"pro": 4096, "flash": 1024}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def min_cache_tokens(model: str) -> int:
    return MIN_CACHE_TOKENS["pro"] if "-pro" in model else MIN_CACHE_TOKENS["flash"]


def parse_duration(raw: Any) -> float:
    """A protobuf Duration in JSON (``"3600s"``, ``"1.5s"``) → seconds."""
    match = _DURATION.match(str(raw))
    if match is None:
        raise ApiError(400, f"Invalid value at 'cached_content.ttl' ({raw!r}): a duration like '3600s'.")
    return float(match.group(1))


def parse_time(raw: Any) -> float:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError(400, f"Invalid value at 'cached_content.expire_time' ({raw!r}).") from None


def expiry_of(body: Mapping[str, Any], now: float, default: float | None) -> float | None:
    """``expireTime`` or ``now + ttl`` from a create / patch body (``default`` seconds when neither)."""
    expire = pick(body, "expireTime", "expire_time")
    ttl = pick(body, "ttl")
    if expire is not None and ttl is not None:
        raise ApiError(400, "Give only one of ttl and expire_time.")
    if expire is not None:
        return parse_time(expire)
    if ttl is not None:
        return now + parse_duration(ttl)
    return None if default is None else now + default


@dataclass
class CachedContent:
    id: str
    model: str
    display_name: str
    token_count: int
    expire_time: float
    create_time: float = field(default_factory=time.time)
    update_time: float = 0.0
    seq: int = field(default_factory=next_seq)
    deleted: bool = False
    #: requests answered with this cache so far (tests assert every line referenced it)
    hits: int = 0

    @property
    def name(self) -> str:
        return f"cachedContents/{self.id}"

    def live(self, now: float) -> bool:
        return not self.deleted and now < self.expire_time

    def resource(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "model": self.model}
        if self.display_name:
            body["displayName"] = self.display_name
        return body | {
            "createTime": rfc3339(self.create_time),
            "updateTime": rfc3339(self.update_time or self.create_time),
            "expireTime": rfc3339(self.expire_time),
            "usageMetadata": {"totalTokenCount": self.token_count},
        }

    def control_view(self, now: float) -> dict[str, Any]:
        return self.resource() | {"live": self.live(now), "deleted": self.deleted, "hits": self.hits}


class CacheStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, CachedContent] = {}
        self.on_change: Callable[[], None] = lambda: None

    # ---- persistence ----

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(c) for c in sorted(self._caches.values(), key=lambda c: c.seq)]

    def restore(self, records: list[dict[str, Any]]) -> int:
        top = 0
        with self._lock:
            for raw in records:
                cache = CachedContent(**raw)
                self._caches[cache.id] = cache
                top = max(top, cache.seq)
        return top

    # ---- API ----

    def create(self, body: Mapping[str, Any], now: float) -> CachedContent:
        model = str(pick(body, "model") or "")
        if not model:
            raise ApiError(400, "cached_content.model is required.")
        model = model if model.startswith("models/") else f"models/{model}"
        text = all_prompt_text(body)
        tokens = math.ceil(len(text) / CHARS_PER_TOKEN)
        minimum = min_cache_tokens(model)
        if tokens < minimum:
            raise ApiError(
                400,
                f"Cached content is too small. total_token_count={tokens}, min_total_token_count={minimum}",
            )
        expire = expiry_of(body, now, DEFAULT_TTL_SECONDS)
        assert expire is not None
        cache = CachedContent(
            id=new_id(12),
            model=model,
            display_name=str(pick(body, "displayName", "display_name") or ""),
            token_count=tokens,
            expire_time=expire,
            create_time=now,
        )
        with self._lock:
            self._caches[cache.id] = cache
        self.on_change()
        return cache

    def get(self, cache_id: str, now: float) -> CachedContent:
        with self._lock:
            cache = self._caches.get(cache_id)
        if cache is None or not cache.live(now):
            raise ApiError(403, f"CachedContent not found (or permission denied): cachedContents/{cache_id}")
        return cache

    def list(
        self, page_size: int, page_token: str | None, now: float
    ) -> tuple[list[CachedContent], str | None]:
        with self._lock:
            live = sorted(
                (c for c in self._caches.values() if c.live(now)), key=lambda c: c.seq, reverse=True
            )
        return paginate(live, page_size, page_token)

    def update(self, cache_id: str, body: Mapping[str, Any], now: float) -> CachedContent:
        cache = self.get(cache_id, now)
        expire = expiry_of(body, now, None)
        if expire is None:
            raise ApiError(400, "Only ttl or expire_time can be updated; give one.")
        with self._lock:
            cache.expire_time, cache.update_time = expire, now
        self.on_change()
        return cache

    def delete(self, cache_id: str, now: float) -> None:
        cache = self.get(cache_id, now)
        with self._lock:
            cache.deleted = True
        self.on_change()

    def resolve(self, name: str, model: str, now: float) -> CachedContent:
        """The live cache a request references, counted as a hit; :class:`ApiError` as the service answers."""
        cache = self.get(str(name).removeprefix("cachedContents/"), now)
        if cache.model != model:
            raise ApiError(
                400,
                f"Model used by GenerateContent request ({model}) and CachedContent ({cache.model}) has to "
                "be the same.",
            )
        with self._lock:
            cache.hits += 1
        return cache

    def all_caches(self) -> builtins.list[CachedContent]:
        with self._lock:
            return sorted(self._caches.values(), key=lambda c: c.seq)

    def reset(self) -> None:
        with self._lock:
            self._caches.clear()
