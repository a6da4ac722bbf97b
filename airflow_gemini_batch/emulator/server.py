"""``EmulatorServer``: run the emulator app with uvicorn on a background thread (tests, demos).

Invariants:

* Binds 127.0.0.1 by default; ``port=0`` binds a free port and ``.port`` / ``.base_url`` report the real one
  (we bind the socket ourselves and hand it to uvicorn, so there is no race between choosing and binding).
* ``start()`` returns only once uvicorn accepts connections; ``stop()`` joins the thread.
* Logging stays quiet (no access log, uvicorn at WARNING) and uvicorn's dictConfig is not applied, so the
  host process's logging setup (pytest, Airflow) is left alone.
* With a ``data_dir`` (and ``persist`` not False) file and job metadata persist in it: ``stop()`` keeps them
  on disk, and a new ``EmulatorServer`` on the same dir lists the same files and jobs (see ``persist``).
* Shutting down lets every held reply go first (``reply_holds``): uvicorn's graceful shutdown waits for the
  requests in flight, and a held one would wait for a release that never comes.
* Keep-alive timeout (120 s) exceeds aiohttp's client pool idle timeout (15 s), so the server never closes
  a connection the client is about to reuse (which makes the SDK sleep 1-10 s and retry).
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from airflow_gemini_batch.emulator.app import create_app
from airflow_gemini_batch.emulator.control import EmulatorControl

if TYPE_CHECKING:
    from types import TracebackType

    from fastapi import FastAPI

    from airflow_gemini_batch.emulator.state import Emulator

KEEP_ALIVE_SECONDS = 120


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: FastAPI, log_level: str = "warning", access_log: bool = False) -> uvicorn.Config:
    logging.getLogger("uvicorn.error").setLevel(log_level.upper())
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        log_config=None,
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=2,
    )


class EmulatorUvicorn(uvicorn.Server):
    """uvicorn's server for the emulator app: its shutdown releases the reply holds before it waits for the
    requests in flight (they would hold it up to its graceful timeout, then be cancelled unanswered)."""

    def __init__(self, config: uvicorn.Config, emulator: Emulator) -> None:
        super().__init__(config)
        self._emulator = emulator

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._emulator.reply_holds.reset()
        await super().shutdown(sockets)


def uvicorn_server(app: FastAPI, log_level: str = "warning", access_log: bool = False) -> EmulatorUvicorn:
    return EmulatorUvicorn(uvicorn_config(app, log_level, access_log), app.state.emulator)


class EmulatorServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        pending_seconds: float = 0.0,
        running_seconds: float = 0.0,
        log_level: str = "warning",
        access_log: bool = False,
        persist: bool | None = None,
        bigquery_endpoint: str | None = None,
        storage_endpoint: str | None = None,
    ) -> None:
        """:param persist: keep metadata across restarts in ``data_dir`` (default: when one is given).
        :param bigquery_endpoint: / ``storage_endpoint``: the BigQuery / GCS emulators Vertex jobs use."""
        self.host = host
        self.data_dir = (
            Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="gemini-emu-"))
        )
        self.app = create_app(
            self.data_dir,
            pending_seconds=pending_seconds,
            running_seconds=running_seconds,
            persist=data_dir is not None if persist is None else persist,
            bigquery_endpoint=bigquery_endpoint,
            storage_endpoint=storage_endpoint,
        )
        self._requested_port = port
        self._log_level = log_level
        self._access_log = access_log
        self._server: EmulatorUvicorn | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = port

    @property
    def emulator(self) -> Emulator:
        return self.app.state.emulator

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def control(self) -> EmulatorControl:
        return EmulatorControl(self.base_url)

    def start(self, timeout: float = 15.0) -> EmulatorServer:
        if self._thread is not None:
            return self
        self._sock = bind_socket(self.host, self._requested_port)
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn_server(self.app, self._log_level, self._access_log)
        server, sock = self._server, self._sock
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=[sock]), name="gemini-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("Gemini emulator failed to start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self.emulator.shutdown()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
