"""The page in a real browser: a real ``airflow api-server``, Airflow's login page, its nav, and our iframe.

Headless Debian Chromium (``/usr/bin/chromium``) driven by Playwright; never a downloaded browser. Screenshots
(light and dark) go to ``tests/artifacts/`` for a person to look at. Without Chromium the test is skipped
with the reason, except in CI (``CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORDS = {"admin": "admin-secret-pw", "viewer": "viewer-secret-pw"}


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} not found: run scripts/install-chromium.sh (Debian's chromium package)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so a missing browser fails the build.")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def api_server(airflow_db: Path, gemini_conn: str, tmp_path: Path) -> Iterator[str]:
    """``airflow api-server`` on a free port, on the tests' AIRFLOW_HOME, with known passwords."""
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    port = _free_port()
    env = os.environ.copy()  # AIRFLOW_HOME and AIRFLOW_CONN_GEMINI_BATCH_DEFAULT (the emulator) included
    env |= {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    airflow = Path(sys.executable).parent / "airflow"
    log_path = tmp_path / "api-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(airflow), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop exactly what we started
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"api-server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"api-server not healthy after 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/", wait_until="networkidle")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORDS["admin"])
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)


def _open_from_nav(page: Any) -> Any:
    """Browse → Gemini Batches, as a person would; returns the page's iframe."""
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Gemini Batches").click()
    page.wait_for_url("**/plugin/gemini-batches**")
    return page.frame_locator("iframe[title='Gemini Batches']")


def money(amount: float) -> str:
    """USD as the page's script formats it (``money`` in page_script.py)."""
    if abs(amount) >= 1:
        return f"${amount:.2f}"
    if abs(amount) >= 0.01:
        return f"${amount:.4f}"
    return "$" + (f"{amount:.6f}".rstrip("0").rstrip(".") or "0")


@pytest.fixture
def chromium() -> Path:
    """Checked before the api-server starts, so a missing browser fails (CI) or skips (elsewhere) at once."""
    _require_chromium()
    return CHROMIUM


def test_page_in_a_real_browser(
    chromium: Path, record_run: Any, emulator: Any, api_server: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    from airflow_gemini_batch.manifest import MANIFEST_XCOM_KEY, RESULTS_SUMMARY_XCOM_KEY
    from tests.conftest import xcom_of

    # A finished run of the real operators (2 jobs of 5; outcomes, tokens, cost) and a still-pending job the
    # admin can cancel.
    finished_run = record_run("reviews_enrichment", n_requests=10, max_requests_per_job=5)
    results = xcom_of(finished_run, "load", RESULTS_SUMMARY_XCOM_KEY)
    # A run whose shard 2 of 3 EXPIRED, run again: that shard's new job, with its earlier one on the row.
    emulator.control.set_job_behaviour(match="-00001", final_state="EXPIRED", count=1)
    when = datetime(2026, 1, 8, tzinfo=timezone.utc)
    first = record_run(
        "catalog_refresh", n_requests=6, max_requests_per_job=2, logical_date=when, state="failed"
    )
    expired = xcom_of(first, "submit", MANIFEST_XCOM_KEY)["shards"][1]["job_name"].split("/")[-1]
    record_run("catalog_refresh", n_requests=6, max_requests_per_job=2, logical_date=when)
    pending_run = record_run("nightly_summaries", wait=None, load=False, pending=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            for mode in ("light", "dark"):
                context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme=mode)
                page = context.new_page()
                _login(page, api_server)
                frame = _open_from_nav(page)
                # Other tests of the session may have recorded jobs too: look only at this test's DAGs.
                frame.locator("tbody tr").first.wait_for(timeout=30_000)
                finished = frame.locator("tr[data-job]", has_text="reviews_enrichment")
                assert finished.count() == 2
                text = finished.first.inner_text()
                assert (
                    "SUCCEEDED" in text and "5 ok" in text and "0 failed" in text and "0 pending of 5" in text
                )
                # Each row shows its own job's tokens and cost, from the results summary's job entry.
                row_job = finished.first.get_attribute("data-job")
                (usage,) = [j for j in results["jobs"] if j["job_name"] == f"batches/{row_job}"]
                cost, tokens = usage["cost"], usage["tokens"]
                assert money(cost["batch"]) in text and f"saved {money(cost['savings'])}" in text
                assert f"standard {money(cost['standard'])}" in text and "gemini-2.5-flash" in text
                assert "5 succeeded" in text and f"{tokens['total']:,} tokens" in text
                assert "task total" not in text
                # The run's money, once per run: estimate vs what the load reports spent.
                run_row = frame.locator("tr.run", has_text="reviews_enrichment").inner_text()
                estimate = xcom_of(finished_run, "submit", MANIFEST_XCOM_KEY)["estimate"]
                assert money(estimate["cost_usd"]) in run_row and money(results["cost"]["batch"]) in run_row
                # The cards total every visible DAG (other tests' runs too): check they are there, not sums.
                cards = frame.locator(".cards").inner_text()
                assert "Cost at batch price" in cards and "Loaded OK" in cards
                recovered = frame.locator("tr[data-job]", has_text="catalog_refresh")
                assert recovered.count() == 3
                resubmitted = recovered.filter(has_text="resubmitted: generation 1")
                assert resubmitted.count() == 1 and "shard 2 of 3" in resubmitted.inner_text()
                earlier = resubmitted.locator(f"[data-previous='{expired}']")
                assert (
                    f"generation 0: {expired}" in earlier.inner_text() and "EXPIRED" in earlier.inner_text()
                )
                assert "SUCCEEDED" in resubmitted.locator("td").nth(2).inner_text()
                pending = frame.locator("tr[data-job]", has_text="nightly_summaries")
                assert "PENDING" in pending.inner_text() and "not loaded yet" in pending.inner_text()
                assert frame.locator("body").evaluate("() => document.documentElement.dataset.theme") == mode
                page.screenshot(path=str(ARTIFACTS / f"gemini-batches-{mode}.png"))
                if mode == "dark":
                    # The job detail view, reached by the job link inside the iframe.
                    finished.first.locator("a.job").click()
                    frame.locator(".grid").wait_for(timeout=30_000)
                    detail = frame.locator("main").inner_text()
                    assert "Outcomes after loading" in detail and "5 keys · 5 result lines" in detail
                    assert f"prices as of {cost['prices_as_of']}" in detail
                    page.screenshot(path=str(ARTIFACTS / "gemini-batch-job-dark.png"))
                context.close()

            # Cancel from the page (cookie session + the page's anti-CSRF header), then the emulator agrees.
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            _login(page, api_server)
            frame = _open_from_nav(page)
            button = frame.locator("tr[data-job]", has_text="nightly_summaries").get_by_role(
                "button", name="Cancel job"
            )
            button.click()
            frame.get_by_role("button", name="Click again to cancel").click()
            frame.locator("tr[data-job]", has_text="nightly_summaries").locator(
                ".badge", has_text="CANCELLED"
            ).wait_for(timeout=30_000)
            context.close()
        finally:
            browser.close()

    pending_job = xcom_of(pending_run, "submit", MANIFEST_XCOM_KEY)["shards"][0]["job_name"]
    states = {j["name"]: j["state"] for j in emulator.control.jobs()}
    assert states.pop(pending_job) == "BATCH_STATE_CANCELLED"
    assert states.pop(f"batches/{expired}") == "BATCH_STATE_EXPIRED"
    assert list(states.values()) == ["BATCH_STATE_SUCCEEDED"] * (2 + 3)
