"""The plugin's HTTP API on Airflow's own app: auth on every route, DAG filtering, cancel, errors, caching.

Real parts: Airflow's ``create_app()`` with the SimpleAuthManager and JWTs it signs, the metadata DB filled by
``dag.test()`` runs of our real submit / sensor / load operators, the emulator reached by the real SDK.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount

from airflow_gemini_batch.links import GeminiBatchJobLink
from airflow_gemini_batch.manifest import (
    MANIFEST_XCOM_KEY,
    RESULTS_SUMMARY_XCOM_KEY,
    WAIT_SUMMARY_XCOM_KEY,
)
from tests.conftest import xcom_of
from tests.plugins.conftest import MODEL
from tests.polling import wait_until

LINK_XCOM_KEY = GeminiBatchJobLink().xcom_key  # "_link_GeminiBatchJobLink"
PREFIX = "/gemini-batch"
CSRF = {"X-Requested-With": "gemini-batch"}


@pytest.fixture(scope="module")
def client(airflow_db: Any) -> Iterator[Any]:
    """Airflow's whole api-server app (core API + mounted plugins), as ``airflow api-server`` builds it."""
    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "admin:admin,viewer:viewer,op:op"
    from airflow.api_fastapi.app import create_app
    from airflow.configuration import conf

    # When another test module imported airflow before ``airflow db migrate`` wrote airflow.cfg, this
    # process's config has an empty JWT secret and the execution API's startup refuses to run.
    if not conf.get("api_auth", "jwt_secret", fallback=""):
        os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_urlsafe(32)
    from fastapi.testclient import TestClient

    with TestClient(create_app()) as c:
        yield c


def token(username: str, role: str) -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    jwt = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))
    return {"Authorization": f"Bearer {jwt}"}


ADMIN = ("admin", "admin")
VIEWER = ("viewer", "viewer")


@pytest.fixture
def live() -> Any:
    """A fresh live-state cache per test (the emulator is reset per test, so old reads are meaningless)."""
    from airflow_gemini_batch.plugins.app import get_app
    from airflow_gemini_batch.plugins.live import LiveStates

    app = get_app()
    app.state.live = LiveStates(ttl=60.0, max_calls=20)
    return app.state.live


def jobs(client: Any, user: tuple[str, str] = ADMIN, **params: Any) -> dict[str, Any]:
    r = client.get(f"{PREFIX}/api/jobs", params=params, headers=token(*user))
    assert r.status_code == 200, r.text
    return r.json()


def plugin_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the plugin app, found programmatically so a new route cannot be missed."""
    from airflow_gemini_batch.plugins.app import get_app

    app = get_app()
    assert not any(isinstance(r, Mount) for r in app.routes), "a Mount (e.g. StaticFiles) bypasses app auth"
    out = []
    for route in app.routes:
        path = route.path.replace("{job_id}", "abc123")
        methods = route.methods if isinstance(route, APIRoute) else {"GET"}
        out += [(m, path) for m in sorted(methods) if m != "HEAD"]
    return out


def test_plugin_is_registered_and_light() -> None:
    """Importing the plugin (what every worker does) must not import FastAPI or the app."""
    import subprocess
    import sys

    code = (
        "import sys; import airflow_gemini_batch.plugins.plugin as p; "
        "print(any(m.startswith(('fastapi', 'airflow_gemini_batch.plugins.app')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_nav_entry_is_served_by_plugins_api(client: Any) -> None:
    r = client.get("/api/v2/plugins", headers=token(*ADMIN))
    plugin = next(p for p in r.json()["plugins"] if p["name"] == "gemini_batch")
    view = plugin["external_views"][0]
    assert view["name"] == "Gemini Batches" and view["url_route"] == "gemini-batches"
    assert view["category"] == "browse" and view["href"] == "gemini-batch/ui/"
    assert plugin["fastapi_apps"][0]["url_prefix"] == PREFIX


def test_anonymous_gets_401_on_every_route(client: Any) -> None:
    routes = plugin_routes()
    assert len(routes) >= 5
    for method, path in [*routes, ("GET", "/docs"), ("GET", "/openapi.json")]:
        r = client.request(method, PREFIX + path, headers=CSRF)
        expected = {401} if (method, path) in routes else {401, 404}
        assert r.status_code in expected, f"{method} {path} → {r.status_code} for an anonymous user"
    # A forged token is refused too.
    r = client.get(f"{PREFIX}/api/jobs", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code in (401, 403)


def test_empty_state_explains_how_jobs_appear(client: Any, live: Any) -> None:
    data = jobs(client, dag_id="no_such_dag")
    assert data["jobs"] == [] and data["totals"]["jobs"] == 0
    page = client.get(f"{PREFIX}/ui/", headers=token(*ADMIN)).text
    assert "GeminiBatchSubmitOperator" in page and "recorded yet" in page


def test_lists_real_runs_with_live_state_outcomes_tokens_and_cost(
    client: Any, live: Any, record_run: Any, emulator: Any
) -> None:
    """Submit → sensor → load, 8 prompts in 2 jobs of 4, 2 of them failing: the page shows what they recorded."""
    dag_run = record_run("ui_listed", n_requests=8, max_requests_per_job=4, failing={1, 6})
    wait = xcom_of(dag_run, "wait", WAIT_SUMMARY_XCOM_KEY)
    results = xcom_of(dag_run, "load", RESULTS_SUMMARY_XCOM_KEY)
    manifest = xcom_of(dag_run, "submit", MANIFEST_XCOM_KEY)
    assert results["counts"] == {"succeeded": 6, "failed": 2, "invalid_output": 0, "missing": 0, "reused": 0}
    assert results["tokens"]["total"] > 0 and results["cost"]["batch"] > 0

    data = jobs(client, dag_id="ui_listed", run_id=dag_run.run_id)
    assert len(data["jobs"]) == 2
    waited = {j["name"]: j for j in wait["jobs"]}
    loaded = {j["job_name"]: j for j in results["jobs"]}
    shards = {s["job_name"]: s for s in manifest["shards"]}
    for job in data["jobs"]:
        name = job["job_name"]
        assert job["state"] == "SUCCEEDED" and job["state_source"] == "live"
        assert job["progress"] == {"total": 4, "succeeded": 3, "failed": 1, "pending": 0}
        assert (waited[name]["succeeded_count"], waited[name]["failed_count"]) == (3, 1)
        assert (
            job["outcomes"]
            == loaded[name]["counts"]
            == {
                "succeeded": 3,
                "failed": 1,
                "invalid_output": 0,
                "missing": 0,
            }
        )
        assert job["load_report"]["key_count"] == 4 and job["load_report"]["unknown_keys"] == 0
        assert job["results_status"] == "ok"
        # Each job shows its own tokens and cost (from its entry in the results summary), not the task's.
        assert job["tokens"] == loaded[name]["tokens"] and job["cost"] == loaded[name]["cost"]
        assert 0 < job["tokens"]["total"] < results["tokens"]["total"] and job["cost"]["batch"] > 0
        assert "usage_is_task_total" not in job
        assert job["task_ids"] == ["submit", "wait", "load"] and job["can_cancel"] is False
        assert job["model"] == MODEL and job["task"] == "generate" and job["shard_count"] == 2
        assert job["display_name"] == shards[name]["display_name"] and job["request_count"] == 4
    assert sorted(j["shard_index"] for j in data["jobs"]) == [0, 1]
    assert {j["job_name"] for j in data["jobs"]} == {j["name"] for j in emulator.control.jobs()}

    totals = data["totals"]
    assert (totals["jobs"], totals["requests"], totals["succeeded"], totals["failed"]) == (2, 8, 6, 2)
    # Reused rows belong to no job: the per-job sums are the outcomes of the keys sent.
    assert {**totals["outcomes"], "reused": 0} == results["counts"] and totals["loaded_jobs"] == 2
    assert totals["tokens"] == results["tokens"]  # each job counted once: the jobs add up to the task
    cost = results["cost"]
    assert totals["cost"]["currency"] == "USD"
    for k in ("batch", "standard", "savings"):
        # Sums of per-job amounts (each rounded to 6 decimals) vs the task's: equal up to that rounding.
        assert totals["cost"][k] == pytest.approx(sum(j["cost"][k] for j in data["jobs"]), abs=1e-9)
        assert totals["cost"][k] == pytest.approx(cost[k], abs=2e-6)
    assert totals["cost"]["standard"] == pytest.approx(2 * totals["cost"]["batch"])
    assert totals["unpriced_jobs"] == 0

    # Filters: by state, and by the task of any of our three operators (what the extra link uses).
    assert len(jobs(client, dag_id="ui_listed", state="succeeded")["jobs"]) == 2
    assert jobs(client, dag_id="ui_listed", state="RUNNING")["jobs"] == []
    assert jobs(client, dag_id="ui_listed", task_id="other")["jobs"] == []
    for task_id in ("submit", "wait", "load"):
        link = xcom_of(dag_run, task_id, LINK_XCOM_KEY)
        assert link, f"no {LINK_XCOM_KEY} XCom for task {task_id}"
        query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
        assert query == {"dag_id": "ui_listed", "run_id": dag_run.run_id, "task_id": task_id}
        assert len(jobs(client, **query)["jobs"]) == 2

    # Detail view, API and page.
    job_id = data["jobs"][0]["job_id"]
    r = client.get(f"{PREFIX}/api/jobs/{job_id}", headers=token(*VIEWER))
    assert r.status_code == 200 and r.json()["job"]["job_name"] == f"batches/{job_id}"
    assert r.json()["job"]["outcomes"] == loaded[f"batches/{job_id}"]["counts"]
    assert client.get(f"{PREFIX}/ui/jobs/{job_id}", headers=token(*VIEWER)).status_code == 200
    assert client.get(f"{PREFIX}/api/jobs/nope404", headers=token(*ADMIN)).status_code == 404


def test_submit_that_waits_itself_and_a_single_job_with_its_own_usage(
    client: Any, live: Any, record_run: Any
) -> None:
    """``wait_for_completion=True``: the submit task records the manifest and the wait summary both."""
    dag_run = record_run("ui_self_wait", n_requests=3, wait="submit")
    assert xcom_of(dag_run, "submit", WAIT_SUMMARY_XCOM_KEY)["jobs"][0]["succeeded_count"] == 3
    results = xcom_of(dag_run, "load", RESULTS_SUMMARY_XCOM_KEY)
    (job,) = jobs(client, dag_id="ui_self_wait")["jobs"]
    assert job["task_ids"] == ["submit", "load"] and job["wait_task_id"] == "submit"
    assert job["wait"]["state"] == "SUCCEEDED" and job["wait"]["request_count"] == 3
    assert job["outcomes"]["succeeded"] == 3 and job["shard_count"] == 1
    # One job: its usage is the task's.
    assert job["tokens"] == results["tokens"] == results["jobs"][0]["tokens"]
    assert job["cost"] == results["cost"] == results["jobs"][0]["cost"]


def test_model_without_a_price_has_tokens_but_no_cost(client: Any, live: Any, record_run: Any) -> None:
    dag_run = record_run("ui_unpriced", model="gemini-emulated-unpriced-model")
    results = xcom_of(dag_run, "load", RESULTS_SUMMARY_XCOM_KEY)
    assert results["cost"]["batch"] is None
    data = jobs(client, dag_id="ui_unpriced")
    assert data["totals"]["cost"] is None and data["totals"]["unpriced_jobs"] == 1
    assert data["totals"]["tokens"] == results["tokens"] and results["tokens"]["total"] > 0
    (job,) = data["jobs"]
    assert job["cost"]["batch"] is None and job["cost"]["model"] == "gemini-emulated-unpriced-model"
    assert job["tokens"] == results["tokens"]


def test_user_sees_only_jobs_of_dags_they_may_read(
    client: Any, live: Any, record_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.api_fastapi.app import get_auth_manager

    record_run("ui_team_a", load=False)
    record_run("ui_team_b_secret", load=False)
    manager = get_auth_manager()
    original = manager.filter_authorized_dag_ids

    def restricted(*, dag_ids: set[str], user: Any, **kw: Any) -> set[str]:
        allowed = original(dag_ids=dag_ids, user=user, **kw)
        return {d for d in allowed if "secret" not in d} if user.get_name() == "viewer" else allowed

    monkeypatch.setattr(manager, "filter_authorized_dag_ids", restricted)
    admin_dags = {j["dag_id"] for j in jobs(client, ADMIN)["jobs"]}
    viewer = jobs(client, VIEWER)
    assert {"ui_team_a", "ui_team_b_secret"} <= admin_dags
    assert "ui_team_a" in {j["dag_id"] for j in viewer["jobs"]}
    assert all("secret" not in j["dag_id"] for j in viewer["jobs"])
    assert "ui_team_b_secret" not in viewer["dag_ids"]
    assert jobs(client, VIEWER, dag_id="ui_team_b_secret")["jobs"] == []
    secret = next(j for j in jobs(client, ADMIN, dag_id="ui_team_b_secret")["jobs"])
    # The detail and cancel routes hide it as well (404: its existence does not leak).
    assert client.get(f"{PREFIX}/api/jobs/{secret['job_id']}", headers=token(*VIEWER)).status_code == 404
    r = client.post(f"{PREFIX}/api/jobs/{secret['job_id']}/cancel", headers=token(*VIEWER) | CSRF)
    assert r.status_code == 404


def test_cancel_needs_edit_permission_and_csrf_header_then_really_cancels(
    client: Any, live: Any, record_run: Any, emulator: Any
) -> None:
    record_run("ui_cancel", wait=None, load=False, pending=True)
    job = jobs(client, dag_id="ui_cancel")["jobs"][0]
    assert job["state"] == "PENDING" and job["can_cancel"] is True
    assert jobs(client, VIEWER, dag_id="ui_cancel")["jobs"][0]["can_cancel"] is False
    url = f"{PREFIX}/api/jobs/{job['job_id']}/cancel"

    r = client.post(url, headers=token(*VIEWER) | CSRF)
    assert r.status_code == 403 and "edit permission" in r.json()["detail"]
    r = client.post(url, headers=token(*ADMIN))
    assert r.status_code == 403 and "X-Requested-With" in r.json()["detail"]
    r = client.post(url, headers=token(*ADMIN) | CSRF | {"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = client.get(url, headers=token(*ADMIN) | CSRF)
    assert r.status_code == 405
    assert not any(j["cancel_requested"] for j in emulator.control.jobs())

    r = client.post(url, headers=token(*ADMIN) | CSRF | {"Origin": "http://testserver"})
    assert r.status_code == 200, r.text
    assert r.json()["job"]["state"] == "CANCELLED" and r.json()["job"]["can_cancel"] is False
    (remote,) = emulator.control.jobs()
    assert remote["name"] == job["job_name"] and remote["state"] == "BATCH_STATE_CANCELLED"


def test_a_resubmitted_shard_shows_its_current_job_and_its_earlier_one(
    client: Any, live: Any, record_run: Any, emulator: Any
) -> None:
    """3 shards, shard 1's job EXPIRED; the same run again resubmits shard 1 alone. The page lists the three
    current jobs; shard 1's row names its earlier job with that job's live state (EXPIRED)."""
    emulator.control.set_job_behaviour(match="-00001", final_state="EXPIRED", count=1)
    when = datetime(2026, 1, 7, tzinfo=timezone.utc)
    first = record_run(
        "ui_recovered", n_requests=6, max_requests_per_job=2, logical_date=when, state="failed"
    )
    expired = xcom_of(first, "submit", MANIFEST_XCOM_KEY)["shards"][1]["job_name"]
    second = record_run("ui_recovered", n_requests=6, max_requests_per_job=2, logical_date=when)
    data = jobs(client, dag_id="ui_recovered", run_id=second.run_id)
    by_shard = {j["shard_index"]: j for j in data["jobs"]}
    assert sorted(by_shard) == [0, 1, 2] and len(emulator.control.jobs()) == 4
    assert [j["state"] for j in data["jobs"]] == ["SUCCEEDED"] * 3
    (previous,) = by_shard[1]["previous"]
    assert previous["job_name"] == expired and previous["state"] == "EXPIRED"
    assert by_shard[1]["previous_jobs"] == [expired] and by_shard[1]["job_name"] != expired
    assert by_shard[0]["previous"] == [] and by_shard[2]["previous"] == []
    assert all(j["nearing_expiry"] is False for j in data["jobs"])
    detail = client.get(f"{PREFIX}/api/jobs/{by_shard[1]['job_id']}", headers=token(*ADMIN)).json()["job"]
    assert detail["previous"][0]["state"] == "EXPIRED"


def test_a_job_not_finished_near_the_48_hour_expiry_is_flagged(
    client: Any, live: Any, record_run: Any, emulator: Any
) -> None:
    """A PENDING job created 41 h ago is flagged, with the hours left; the same job finished is not. The
    emulator cannot back-date a job, so the page's hook reads the real job and moves its creation back."""
    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.plugins.app import get_app
    from airflow_gemini_batch.plugins.live import LiveStates

    class CreatedLongAgo(GeminiBatchHook):
        def get_job(self, name: str) -> Any:
            job = super().get_job(name)
            job.create_time = (datetime.now(timezone.utc) - timedelta(hours=41)).isoformat()
            return job

    get_app().state.live = LiveStates(ttl=0.0, max_calls=20, hook_factory=CreatedLongAgo)
    record_run("ui_expiring", wait=None, load=False, pending=True)
    (job,) = jobs(client, dag_id="ui_expiring")["jobs"]
    assert job["state"] == "PENDING" and job["nearing_expiry"] is True
    assert 40.9 <= job["age_hours"] <= 41.5 and 6.5 <= job["expires_in_hours"] <= 7.1
    emulator.control.release()
    done = wait_until(
        lambda: [j for j in jobs(client, dag_id="ui_expiring")["jobs"] if j["state"] == "SUCCEEDED"],
        what="the job read as finished",
    )[0]
    assert done["nearing_expiry"] is False and done["age_hours"] >= 41


def test_api_unreachable_shows_reason_and_recorded_state_without_secrets(
    client: Any, live: Any, record_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs submitted and waited for on a working connection, which then stops answering.
    record_run("ui_unreachable", n_requests=6, max_requests_per_job=3, conn_id="gemini_down", load=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    api_key = json.loads(os.environ["AIRFLOW_CONN_GEMINI_DOWN"])["password"]
    down = {"conn_type": "gemini_batch", "host": f"http://127.0.0.1:{closed_port}", "password": api_key}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_DOWN", json.dumps(down))
    calls_before = live.calls
    r = client.get(f"{PREFIX}/api/jobs", params={"dag_id": "ui_unreachable"}, headers=token(*ADMIN))
    assert api_key not in r.text
    rows = r.json()["jobs"]
    assert len(rows) == 2
    for job in rows:
        assert job["live_error"] and "ConnectError" in job["live_error"]
        assert job["state"] == "SUCCEEDED" and job["state_source"] == "recorded"
        assert job["progress"]["succeeded"] == 3
    assert live.calls - calls_before == 1, (
        "a broken connection must cost one call per refresh, not one per job"
    )


def test_missing_connection_is_named(
    client: Any, live: Any, record_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs submitted on a connection an admin has since deleted.
    record_run("ui_no_conn", conn_id="gemini_nowhere", wait=None, load=False)
    monkeypatch.delenv("AIRFLOW_CONN_GEMINI_NOWHERE")
    (job,) = jobs(client, dag_id="ui_no_conn")["jobs"]
    assert "'gemini_nowhere' is not defined" in job["live_error"]
    assert job["state"] == "UNKNOWN" and job["state_source"] == "none"


def test_many_viewers_share_one_read_and_calls_are_capped(
    client: Any, live: Any, record_run: Any, emulator: Any
) -> None:
    from airflow_gemini_batch.plugins.live import LiveStates

    record_run("ui_cache", n_requests=3, max_requests_per_job=1, wait=None, load=False)
    before = emulator.control.calls().get("batches.get", 0)
    for user in (ADMIN, VIEWER, ADMIN, VIEWER):
        assert len(jobs(client, user, dag_id="ui_cache")["jobs"]) == 3
    assert emulator.control.calls().get("batches.get", 0) - before == 3  # one read per job, then the cache

    from airflow_gemini_batch.plugins.app import get_app

    get_app().state.live = capped = LiveStates(ttl=60.0, max_calls=2)
    rows = jobs(client, dag_id="ui_cache")["jobs"]
    assert capped.calls == 2 and sum(j["live_deferred"] for j in rows) == 1
    rows = jobs(client, dag_id="ui_cache")["jobs"]  # the next refresh reads the one left over
    assert capped.calls == 3 and not any(j["live_deferred"] for j in rows)


def test_each_run_shows_its_estimate_against_what_it_spent_once(
    client: Any, live: Any, record_run: Any
) -> None:
    """``runs``: one entry per submit task instance (not per job), its estimate from the manifest beside the
    load's actual cost; each job carries the same ``run_cost`` (never summed over jobs)."""
    dag_run = record_run("ui_run_cost", n_requests=6, max_requests_per_job=2)
    estimate = xcom_of(dag_run, "submit", MANIFEST_XCOM_KEY)["estimate"]
    results = xcom_of(dag_run, "load", RESULTS_SUMMARY_XCOM_KEY)
    data = jobs(client, dag_id="ui_run_cost")
    assert len(data["jobs"]) == 3
    (run,) = data["runs"]
    assert (run["dag_id"], run["run_id"], run["task_id"]) == ("ui_run_cost", dag_run.run_id, "submit")
    assert run["requests"] == 6 and run["estimate_usd"] == estimate["cost_usd"] > 0
    assert (
        run["estimated_input_tokens"] == estimate["input_tokens"] and run["estimate_method"] == "count_tokens"
    )
    assert (
        run["actual_usd"] == results["cost"]["batch"] and run["standard_usd"] == results["cost"]["standard"]
    )
    assert run["caching_saved_usd"] == 0.0 and run["reused"] == 0 and run["reuse_saved_usd"] == 0.0
    assert all(j["run_cost"] == data["jobs"][0]["run_cost"] for j in data["jobs"])
    # Before the load there is an estimate and nothing spent yet.
    pending = record_run("ui_run_cost_pending", wait=None, load=False)
    (waiting,) = jobs(client, dag_id="ui_run_cost_pending")["runs"]
    assert waiting["estimate_usd"] == xcom_of(pending, "submit", MANIFEST_XCOM_KEY)["estimate"]["cost_usd"]
    assert waiting["actual_usd"] is None
