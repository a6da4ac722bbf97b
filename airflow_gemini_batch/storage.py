"""Local path or object storage: the one place that tells them apart.

Every stage that takes "a local path or an ObjectStoragePath URI" (the input JSONL file, the staging folder,
key lists, the object-storage sink's folder) asks here, so they all agree on which is which:

* A path without a scheme, or a ``file://`` URI, is a local file. It is read and written with the built-in
  ``open`` - no fsspec layer per read, which matters on the hot paths that stream key lists and shards - and a
  relative path is relative to the working directory. :func:`file_uri` and :func:`local_path` are each
  other's inverse (no percent-encoding, as ``ObjectStoragePath`` reads ``file://`` URIs as they are).
* Anything with another scheme (``gs://``, ``s3://``, ``gs://conn_id@bucket/...``) goes through Airflow's
  ``ObjectStoragePath``, which resolves the connection and its credentials.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

_FILE_SCHEME = "file://"
_COPY_BUFFER = 8 * 1024 * 1024


def local_path(uri: str | os.PathLike[str]) -> Path | None:
    """The absolute local path a path or URI names, or ``None`` when it is not on this machine's file system."""
    text = os.fspath(uri)
    if text.startswith(_FILE_SCHEME):
        return Path(text.removeprefix(_FILE_SCHEME)).absolute()
    if "://" not in text:
        return Path(text).absolute()
    return None


def file_uri(path: str | os.PathLike[str]) -> str:
    """The ``file://`` URI of a local path (absolute)."""
    return _FILE_SCHEME + str(Path(path).absolute())


def is_local(uri: str | os.PathLike[str]) -> bool:
    return local_path(uri) is not None


def object_path(uri: str | os.PathLike[str]) -> ObjectStoragePath:
    """``ObjectStoragePath`` of any path or URI (a local one as its ``file://`` URI)."""
    from airflow.sdk import ObjectStoragePath

    local = local_path(uri)
    return ObjectStoragePath(file_uri(local) if local is not None else os.fspath(uri))


def open_binary(uri: str | os.PathLike[str], mode: str = "rb") -> IO[bytes]:
    """A file opened in binary ``mode`` (``rb`` / ``wb``): the built-in ``open`` locally, else the store's."""
    local = local_path(uri)
    if local is not None:
        return open(local, mode)
    return object_path(uri).open(mode)


def is_file(uri: str | os.PathLike[str]) -> bool:
    local = local_path(uri)
    return local.is_file() if local is not None else object_path(uri).exists()


def make_dirs(uri: str | os.PathLike[str]) -> None:
    """Create a folder and its parents if missing (on an object store: whatever the store needs)."""
    local = local_path(uri)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
    else:
        object_path(uri).mkdir(parents=True, exist_ok=True)


def copy_file(source: Path, target_uri: str) -> None:
    """Copy a local file to a path or URI, streamed (a shard's key list may be large), parents created."""
    target = local_path(target_uri)
    if target is not None and target == source.absolute():
        return
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        object_path(target_uri).parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, open_binary(target_uri, "wb") as dst:
        shutil.copyfileobj(src, dst, length=_COPY_BUFFER)
