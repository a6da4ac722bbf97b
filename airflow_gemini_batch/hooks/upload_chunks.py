"""A file reader for the SDK's resumable upload that keeps one chunk buffer for the whole file.

Invariant: uploading a file of any size holds about one SDK chunk (8 MiB) of file bytes in the worker, on
both google-genai majors.

Why: the SDK's resumable upload (``BaseApiClient._upload_fd``) reads the file in 8 MiB chunks and POSTs each
one. On google-genai 2.x the transport is ``httpx``, whose ``Response`` and its body stream reference each
other; the cycle also holds the ``Request`` and with it the chunk's ``bytes``, so every sent chunk stays in
memory until the cyclic garbage collector runs (a 1.9 GB upload peaked at +200 MB). The collector counts
objects, not bytes, so when it runs is unrelated to how much the chunks weigh.

:class:`ReusedBufferReader` is what the upload is given instead of the path: a file object whose ``read``
fills one reused buffer and returns a :class:`BufferedChunk` — sized (the SDK takes its ``len`` for the
offset and ``Content-Length``) and iterable in 1 MiB ``bytes`` pieces (the transport streams an iterable
body). What a lingering request keeps is then a view of the shared buffer, not a copy of the chunk. The bytes
on the wire, the chunk boundaries and the protocol are the SDK's own; a chunk the SDK re-sends on a retry
yields the same bytes, because the buffer is refilled only by the next ``read``.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

CHUNK_BYTES = 8 * 1024 * 1024
"""Buffer size: the SDK's own ``CHUNK_SIZE`` (a larger request is served in pieces of this size)."""
PIECE_BYTES = 1024 * 1024
"""Size of each ``bytes`` piece handed to the transport (short-lived; freed as soon as it is sent)."""


class BufferedChunk:
    """One upload chunk as a window of the reader's buffer: ``len()`` and iteration in ``bytes`` pieces."""

    def __init__(self, view: memoryview) -> None:
        self._view = view

    def __len__(self) -> int:
        return len(self._view)

    def __bool__(self) -> bool:
        return len(self._view) > 0

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self._view), PIECE_BYTES):
            yield bytes(self._view[start : start + PIECE_BYTES])


class ReusedBufferReader(io.RawIOBase):
    """A seekable reader over ``raw`` whose ``read`` returns a :class:`BufferedChunk` of one reused buffer.

    Only for the SDK's upload, which uses ``tell``/``seek`` (to size the file) and ``read`` (to chunk it).
    """

    def __init__(self, raw: io.BufferedIOBase, chunk_bytes: int = CHUNK_BYTES) -> None:
        super().__init__()
        self._raw = raw
        self._buffer = bytearray(chunk_bytes)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def read(self, size: int = -1) -> BufferedChunk | bytes:  # a chunk, not bytes: the module docstring
        want = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
        view = memoryview(self._buffer)[:want]
        filled = self._raw.readinto(view) or 0
        return BufferedChunk(view[:filled]) if filled else b""
