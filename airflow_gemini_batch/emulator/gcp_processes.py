"""The Google Cloud emulators (BigQuery, Cloud Storage) as processes: start, wait until healthy, stop.

Used by the tests' fixtures (``tests/gcp_emulators.py``), ``make demo-bigquery`` and the benchmarks. The
emulators are ``bqemulator`` (DuckDB behind the BigQuery REST and Storage Read gRPC APIs) and
``gcp-storage-emulator`` (the GCS JSON API), installed into a TOOL environment of their own
(``.venv-gcp-emulators`` in a source checkout, from ``requirements/gcp-emulators.lock``; ``make
setup-gcp-emulators`` builds it), never into the product's environment.

Invariants:

* Each emulator gets free ports and its own session (process group), with its output in a log file (never a
  pipe nobody reads); :func:`stop_process` ends the whole group by PID: SIGTERM, a bounded wait, SIGKILL.
* Start-up waits by polling the emulator's health endpoint, bounded by ``START_TIMEOUT``; an emulator that
  exits or stays silent is stopped and reported as :class:`EmulatorUnavailable` with the tail of its log.
* Whether an unavailable emulator fails or skips is the caller's policy (the tests fail in CI), not decided
  here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable

#: The tool environment of a source checkout (this file is airflow_gemini_batch/emulator/gcp_processes.py).
TOOL_VENV = Path(__file__).resolve().parents[2] / ".venv-gcp-emulators"
PROJECT = "test-project"
BUCKET = "test-bucket"
GCP_CONN_ID = "google_cloud_default"
#: bqemulator answers /healthz after ~5-6 s on an idle machine; generous for two busy cores.
START_TIMEOUT = 120.0

Process = subprocess.Popen[bytes]


class EmulatorUnavailable(RuntimeError):
    """The tool environment is missing or an emulator did not come up; the message says which and why."""


@dataclass
class BigQueryEmulator:
    rest_url: str  # http://127.0.0.1:P (BIGQUERY_EMULATOR_HOST wants the scheme)
    grpc_target: str  # 127.0.0.1:G (the Storage Read API)
    project: str = PROJECT


@dataclass
class StorageEmulator:
    base_url: str  # http://127.0.0.1:P
    data_dir: Path
    bucket: str = BUCKET


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(tool_venv: Path, name: str) -> Path:
    path = tool_venv / "bin" / name
    if not path.exists():
        raise EmulatorUnavailable(
            f"{path} is missing: the GCP emulators' tool environment is not built "
            "(`make setup-gcp-emulators` builds it from requirements/gcp-emulators.lock; bqemulator needs "
            "Python 3.11+)"
        )
    return path


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> Process:
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip


def stop_process(proc: Process, grace: float = 10.0) -> None:
    """SIGTERM to the process group ``proc`` leads, wait up to ``grace`` seconds, then SIGKILL the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (the leader may have gone first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _wait_healthy(what: str, url: str, proc: Process, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorUnavailable(f"{what} exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
            last = "a 5xx answer"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise EmulatorUnavailable(
        f"{what} did not answer {url} within {timeout:.0f} s (last: {last}):\n{_log_tail(log)}"
    )


def _start(
    what: str,
    argv: list[str],
    health_url: str,
    log: Path,
    env: dict[str, str],
    workdir: Path,
    on_start: Callable[[Process], Any] | None,
    timeout: float,
) -> Process:
    proc = _spawn(argv, log, env, workdir)
    try:
        if on_start is not None:
            on_start(proc)
        _wait_healthy(what, health_url, proc, log, timeout)
    except BaseException:
        stop_process(proc, grace=5.0)
        raise
    return proc


def start_bigquery_emulator(
    workdir: Path,
    gcs_local_root: Path | None = None,
    *,
    tool_venv: Path = TOOL_VENV,
    on_start: Callable[[Process], Any] | None = None,
    timeout: float = START_TIMEOUT,
) -> tuple[Process, BigQueryEmulator]:
    """``bqemulator start`` on free ports with the HOME the tool environment's setup INSTALLed DuckDB's
    spatial/avro extensions into (offline it would otherwise try to download them and exit).

    :param on_start: called with the process as soon as it exists (e.g. to register it for clean-up at exit),
        before the health wait.
    """
    exe = _tool(tool_venv, "bqemulator")
    rest, grpc = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGQUERY_", "STORAGE_EMULATOR"))}
    env["HOME"] = str(tool_venv / "home")
    if gcs_local_root is not None:
        env["BQEMU_GCS_LOCAL_ROOT"] = str(gcs_local_root)
    argv = [str(exe), "start", "--rest-port", str(rest), "--grpc-port", str(grpc), "--project", PROJECT]
    argv += ["--log-level", "warning"]
    health = f"http://127.0.0.1:{rest}/healthz"
    proc = _start("bqemulator", argv, health, workdir / "bqemulator.log", env, workdir, on_start, timeout)
    return proc, BigQueryEmulator(f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc}")


def start_storage_emulator(
    workdir: Path,
    *,
    tool_venv: Path = TOOL_VENV,
    on_start: Callable[[Process], Any] | None = None,
    timeout: float = START_TIMEOUT,
) -> tuple[Process, StorageEmulator]:
    """``gcp-storage-emulator`` on disk (so BigQuery load jobs could read its objects) with ``test-bucket``."""
    exe = _tool(tool_venv, "gcp-storage-emulator")
    port = free_port()
    data = workdir / "gcs-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [str(exe), "-d", str(data), "start", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--default-bucket", BUCKET, "-q"]
    health = f"http://127.0.0.1:{port}/storage/v1/b"
    log = workdir / "gcs-emulator.log"
    proc = _start("gcp-storage-emulator", argv, health, log, dict(os.environ), workdir, on_start, timeout)
    return proc, StorageEmulator(f"http://127.0.0.1:{port}", data)


def connection_extras(storage: StorageEmulator | None) -> dict[str, Any]:
    """The extras of an anonymous ``google_cloud_platform`` connection to the emulators."""
    extras: dict[str, Any] = {
        "project": PROJECT,
        "is_anonymous": True,
        "use_legacy_sql": False,
        "location": "US",
    }
    if storage is not None:
        extras["gcs.endpoint"] = storage.base_url
    return extras


def emulator_env(bigquery: BigQueryEmulator | None, storage: StorageEmulator | None) -> dict[str, str]:
    """The environment variables the official clients (and the product's Storage Read seam) read.

    ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` keeps gcsfs from first retrying a TLS gRPC bucket-type probe
    for 60 s."""
    env = {"GOOGLE_CLOUD_PROJECT": PROJECT, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    if bigquery is not None:
        env["BIGQUERY_EMULATOR_HOST"] = bigquery.rest_url
        env["BIGQUERY_STORAGE_EMULATOR_HOST"] = bigquery.grpc_target
    if storage is not None:
        env["STORAGE_EMULATOR_HOST"] = storage.base_url
    return env
