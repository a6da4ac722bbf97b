"""A real Airflow deployment for the e2e tests: each component a process of its own, driven over the REST API.

Invariants:

* Every process is started in a new session (its own process group) and registered before anything can fail;
  :func:`stop_all` ends them by PID: SIGTERM to the group, a bounded wait, SIGKILL to the group and to every
  descendant seen meanwhile. It runs from the fixtures' ``finally``, from ``atexit`` and from a SIGTERM/SIGHUP
  handler, so a failed, interrupted (Ctrl-C) or killed test run leaves no Airflow process behind.
* Output of every process goes to a log file in the deployment's folder, never to a pipe nobody reads.
* Nothing sleeps to force a state: :func:`poll` waits for an observed outcome, with a generous bound, and says
  what it last saw when the bound passes (plus the tail of each component's log).
* The only way the tests talk to Airflow is the public REST API (``/api/v2``, a JWT from ``/auth/token``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAGS = Path(__file__).resolve().parent / "dags"

#: Generous on a busy 2-core machine; the happy path takes a fraction of it.
DEFAULT_TIMEOUT = 180.0

# ---- process bookkeeping ------------------------------------------------------------------------------------

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_DESCENDANTS: set[int] = set()
_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _children_of(pid: int) -> set[int]:
    """Every descendant PID of ``pid`` right now (via psutil, an Airflow dependency)."""
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM to the process group of ``proc`` (it leads its own), wait, then SIGKILL group and descendants."""
    with _LOCK:
        _LIVE.pop(proc.pid, None)
    descendants = _children_of(proc.pid)
    leader = _is_group_leader(proc.pid)
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM) if leader else _signal_pid(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            descendants |= _children_of(proc.pid)
            time.sleep(0.1)
    if leader:
        _signal_group(proc.pid, signal.SIGKILL)
    elif proc.poll() is None:
        _signal_pid(proc.pid, signal.SIGKILL)
    for pid in descendants:
        # A descendant may have moved to a group of its own (setsid); it is still ours, stopped by PID.
        _signal_group(pid, signal.SIGKILL) if _is_group_leader(pid) else _signal_pid(pid, signal.SIGKILL)
        _signal_pid(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except (ProcessLookupError, PermissionError):
        return False


_CLEANUPS: list[Callable[[], None]] = []


def add_cleanup(fn: Callable[[], None]) -> None:
    """Run ``fn`` after :func:`stop_all` on an abnormal exit too (e.g. drop a database); idempotent ``fn``."""
    _install_handlers()
    with _LOCK:
        _CLEANUPS.append(fn)


def remove_cleanup(fn: Callable[[], None]) -> None:
    with _LOCK, contextlib.suppress(ValueError):
        _CLEANUPS.remove(fn)


def stop_all() -> None:
    """Stop every process still registered (all in parallel, so teardown takes one grace period at most),
    then run the registered clean-ups."""
    with _LOCK:
        procs = list(_LIVE.values())
    threads = [threading.Thread(target=stop_process, args=(p,), daemon=True) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    with _LOCK:
        cleanups = list(reversed(_CLEANUPS))
        _CLEANUPS.clear()
    for fn in cleanups:
        with contextlib.suppress(Exception):
            fn()


def _on_signal(signum: int, frame: Any) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """atexit + SIGTERM/SIGHUP → :func:`stop_all` (SIGINT is pytest's KeyboardInterrupt: the fixtures'
    ``finally`` runs, and atexit after it)."""
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def register(proc: subprocess.Popen[bytes]) -> None:
    """Have :func:`stop_all` stop ``proc`` too (a process started elsewhere, e.g. the emulator)."""
    _install_handlers()
    with _LOCK:
        _LIVE[proc.pid] = proc


def spawn(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with output to ``log``; registered for :func:`stop_all` at once."""
    _install_handlers()
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out, _LOCK:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
        _LIVE[proc.pid] = proc
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComponentDied(AssertionError):
    """An Airflow component exited: :func:`poll` stops at once instead of waiting out its bound."""


def poll(
    what: str,
    probe: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds saying what it saw.

    A probe that raises counts as "not yet" (the component may still be starting); the last error is shown.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = result
        except ComponentDied:
            raise
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(
                f"Timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}\n{extra}"
            )
        time.sleep(interval)


# ---- the REST client ----------------------------------------------------------------------------------------


class RestApi:
    """The Airflow 3 public REST API with a JWT from the simple auth manager's ``POST /auth/token``."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = {"username": username, "password": password}
        self._client = httpx.Client(base_url=self.base_url, timeout=30.0)
        self._token: str | None = None

    def token(self) -> str:
        response = self._client.post("/auth/token", json=self._credentials)
        response.raise_for_status()
        return response.json()["access_token"]

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        extra_headers = kw.pop("headers", {})
        for attempt in range(2):
            if self._token is None:
                self._token = self.token()
            headers = {**extra_headers, "Authorization": f"Bearer {self._token}"}
            response = self._client.request(method, f"/api/v2/{path.lstrip('/')}", headers=headers, **kw)
            if response.status_code == 401 and attempt == 0:
                self._token = None  # expired: log in again once
                continue
            return response
        return response

    def get(self, path: str, **kw: Any) -> Any:
        response = self.request("GET", path, **kw)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.request("POST", path, json=body)
        if response.status_code >= 400:
            raise AssertionError(f"POST {path} → {response.status_code}: {response.text}")
        return response.json()

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        response = self.request("PATCH", path, json=body)
        if response.status_code >= 400:
            raise AssertionError(f"PATCH {path} → {response.status_code}: {response.text}")
        return response.json()

    def close(self) -> None:
        self._client.close()

    # -- what the tests ask ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.get("monitor/health")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        body = self.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"dags/{dag_id}/dagRuns/{run_id}")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        response = self.request(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        content = response.json().get("content")
        if isinstance(content, list):  # structured log lines (dicts) and plain strings, both seen
            return "\n".join(json.dumps(c) if isinstance(c, dict) else str(c) for c in content)
        return str(content)


# ---- a deployment -------------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Deployment:
    """An AIRFLOW_HOME with a metadata DB, and its components as processes. Use as a context manager."""

    root: Path
    executor: str
    sql_alchemy_conn: str
    extra_env: dict[str, str] = field(default_factory=dict)
    username: str = "e2e"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    components: dict[str, Component] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = self.root / "airflow_home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({self.username: self.password}))
        self.env = self._env(passwords)
        self.api = RestApi(self.base_url, self.username, self.password)

    def _env(self, passwords: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GEMINI_BATCH_TEST"))}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__EXECUTOR=self.executor,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.sql_alchemy_conn,
            AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
            AIRFLOW__CORE__AUTH_MANAGER=(
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{self.username}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
            AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP=r"airflow\..*",
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
            AIRFLOW__API__BASE_URL=self.base_url,
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.home / "logs"),
            AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
            # Log servers on ports of their own: two deployments (or anything else on 8793/8794) never clash.
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
            AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="60",
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="600",
            AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES="1",
            AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="2",
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def migrate(self) -> None:
        log = self.logs / "db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            code = subprocess.call(
                [str(BIN / "airflow"), "db", "migrate"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.home, timeout=300,
            )  # fmt: skip
        if code != 0:
            raise RuntimeError(
                f"airflow db migrate failed ({code}):\n{log.read_text(errors='replace')[-3000:]}"
            )

    def start(
        self, name: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> Component:
        argv = [str(BIN / "airflow"), *args]
        log = self.logs / f"{name}.log"
        proc = spawn(argv, log, {**self.env, **(env or {})}, cwd or self.home)
        component = Component(name, proc, log)
        self.components[name] = component
        return component

    def start_core(self) -> None:
        """api-server, scheduler, dag-processor, triggerer, all at once (they start in parallel)."""
        self.start(
            "api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"
        )
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")
        self.start("triggerer", "triggerer")

    def wait_healthy(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``/api/v2/monitor/health`` says the metadata DB, scheduler, triggerer and DAG processor are up."""

        def probe() -> bool:
            self.check_alive()
            health = self.api.health()
            wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return all((health.get(k) or {}).get("status") == "healthy" for k in wanted)

        poll("the deployment to be healthy", probe, timeout, interval=1.0, on_timeout=self.log_tails)

    def wait_log_line(self, name: str, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Poll component ``name``'s log until it contains ``text`` (e.g. a Celery worker's "ready.")."""
        component = self.components[name]

        def probe() -> bool:
            self.check_alive()
            return text in component.log.read_text(errors="replace")

        poll(f"{name} to log {text!r}", probe, timeout, interval=1.0, on_timeout=self.log_tails)

    def check_alive(self) -> None:
        for c in self.components.values():
            if c.proc.poll() is not None:
                raise ComponentDied(
                    f"Airflow component {c.name!r} exited with {c.proc.returncode}; its log:\n"
                    + _tail(c.log, 4000)
                )

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(
            f"---- {c.name} ({c.log}) ----\n{_tail(c.log, chars)}" for c in self.components.values()
        )

    def stop(self) -> None:
        self.api.close()
        threads = [
            threading.Thread(target=stop_process, args=(c.proc,), daemon=True)
            for c in self.components.values()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=40)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- driving DAGs through the REST API ---------------------------------------------------------------------

    def wait_dag_parsed(self, dag_id: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        def probe() -> Any:
            self.check_alive()
            response = self.api.request("GET", f"dags/{dag_id}")
            if response.status_code == 404:
                errors = self.api.get("importErrors").get("import_errors") or []
                if errors:
                    raise AssertionError(f"DAG import errors: {errors}")
                return None
            response.raise_for_status()
            return response.json()

        return poll(f"DAG {dag_id} to be parsed", probe, timeout, interval=1.0, on_timeout=self.log_tails)

    def trigger(self, dag_id: str, run_id: str) -> dict[str, Any]:
        self.api.patch(f"dags/{dag_id}", {"is_paused": False})
        return self.api.post(f"dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})

    def wait_run_finished(
        self,
        dag_id: str,
        run_id: str,
        seen_states: dict[str, set[str]] | None = None,
        done: Callable[[dict[str, Any], dict[str, dict[str, Any]]], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Poll the run and its task instances until the run is ``success``/``failed`` (and ``done``, if given);
        every task state observed on the way is added to ``seen_states``."""
        last: dict[str, Any] = {}

        def probe() -> Any:
            self.check_alive()
            run = self.api.dag_run(dag_id, run_id)
            tis = self.api.task_instances(dag_id, run_id)
            last["run"], last["tis"] = run["state"], {t: ti["state"] for t, ti in tis.items()}
            if seen_states is not None:
                for task_id, ti in tis.items():
                    seen_states.setdefault(task_id, set()).add(str(ti["state"]))
            if run["state"] not in ("success", "failed"):
                return None
            if done is not None and not done(run, tis):
                return None
            return run, tis

        return poll(
            f"run {dag_id}/{run_id} to finish", probe, timeout, interval=0.5,
            on_timeout=lambda: f"run/TI states: {last}\n{self.log_tails()}",
        )  # fmt: skip

    def failure_report(self, dag_id: str, run_id: str) -> str:
        """The states and, for unsuccessful tasks, the task logs (via the REST API) — for assertion messages."""
        lines = []
        for task_id, ti in self.api.task_instances(dag_id, run_id).items():
            lines.append(f"{task_id}: {ti['state']} on {ti.get('hostname')} (queue {ti.get('queue')})")
            if ti["state"] != "success" and ti.get("try_number"):
                with contextlib.suppress(Exception):
                    lines.append(_last(self.api.task_log(dag_id, run_id, task_id, ti["try_number"]), 4000))
        return "\n".join(lines)


def _tail(path: Path, chars: int) -> str:
    try:
        return _last(path.read_text(errors="replace"), chars)
    except OSError:
        return "(no log)"


def _last(text: str, chars: int) -> str:
    return text if len(text) <= chars else "…" + text[-chars:]
