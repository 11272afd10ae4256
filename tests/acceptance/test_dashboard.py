"""The dashboard in a real browser against real `pao api` and `pao worker` processes."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.acceptance import browser as chromium
from tests.acceptance.running import api_process, worker_process
from tests.helpers import auth

WAIT_MS = 30_000  # how long the page may take to show what it is waiting for
# `expect` has a timeout of its own (5 s), which a busy machine can pass while a page loads.
expect.set_options(timeout=WAIT_MS)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Ask for it after any fixture that runs asyncio: Playwright holds this thread's loop."""
    why = chromium.missing()
    if why is not None:
        if os.environ.get("PAO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the dashboard test needs a browser: {why}")
        pytest.skip(f"no browser for the dashboard test: {why} (CI requires it)")
    with chromium.chromium() as b:
        yield b


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()
    assert errors == [], errors  # no script error on any page the test opened


def _get(base: str, token: str, path: str) -> Any:
    resp = httpx.get(f"{base}{path}", headers=auth(token), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/ui")
    assert page.url == f"{base}/ui/"
    page.get_by_label("API token").fill(token)
    page.get_by_label("API token").press("Enter")  # the keyboard is enough
    expect(page.get_by_role("heading", name="Tasks", level=1)).to_be_visible()


def test_a_task_created_and_run_from_the_page_succeeds_with_its_output_and_log(
    db_url: str, writer_token: str, tmp_path: Path, page: Page
) -> None:
    with api_process(db_url, tmp_path) as base, worker_process(db_url, tmp_path):
        _sign_in(page, base, writer_token)

        # A bad schedule: the API's problem is shown with its field, and nothing is stored.
        page.get_by_text("New task").click()
        page.get_by_label("Title").fill("Browser check")
        page.get_by_label("Schedule", exact=True).fill("every now and then")
        page.get_by_role("button", name="Create task").click()
        problem = page.get_by_role("alert")
        expect(problem).to_contain_text("422")
        expect(problem).to_contain_text("schedule_expr")
        expect(page.get_by_label("Schedule", exact=True)).to_have_attribute("aria-invalid", "true")
        assert _get(base, writer_token, "/tasks")["items"] == []

        page.get_by_label("Schedule", exact=True).fill("30 8 * * 1-5")
        page.get_by_label("Pipeline (payload JSON)").fill(
            '{"pipeline": [{"id": "greet", "uses": "log",'
            ' "with": {"message": "hello from the browser"}}]}'
        )
        page.get_by_role("button", name="Create task").click()
        expect(page.get_by_role("heading", name="Browser check", level=1)).to_be_visible()
        expect(page.get_by_role("alert")).to_be_hidden()
        (task,) = _get(base, writer_token, "/tasks")["items"]
        assert task["title"] == "Browser check"
        assert page.url.endswith(f"#/tasks/{task['id']}")

        # Run now opens the run, which the page follows until it has succeeded.
        page.get_by_role("button", name="Run now").click()
        expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]{36}$"))
        run_id = page.url.rsplit("/", 1)[1]
        expect(page.locator("#run-status")).to_have_text("succeeded")
        step = page.locator('[data-step-id="greet"]')
        expect(step).to_contain_text("succeeded")
        expect(step.locator("pre.json").first).to_contain_text('"logged": true')
        expect(page.get_by_role("log")).to_contain_text("hello from the browser")
        expect(page.locator("#run-live")).to_have_text("This run has ended.")
        run = _get(base, writer_token, f"/runs/{run_id}")
        assert run["status"] == "succeeded"
        assert run["task_id"] == task["id"]

        # The list of recent runs shows it too, by the task's title.
        page.get_by_role("link", name="Runs").click()
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        expect(row).to_contain_text("Browser check")
        expect(row).to_contain_text("succeeded")

        # A long run is stopped from its page.
        body = {
            "title": "Long one",
            "schedule_kind": "event",
            "schedule_expr": "never.sent",
            "payload": {"pipeline": [{"id": "nap", "uses": "sleep", "with": {"seconds": 60}}]},
        }
        resp = httpx.post(f"{base}/tasks", json=body, headers=auth(writer_token), timeout=10)
        assert resp.status_code == 201, resp.text
        long_id = resp.json()["id"]
        resp = httpx.post(f"{base}/tasks/{long_id}/run_now", headers=auth(writer_token))
        long_run = resp.json()["id"]
        page.goto(f"{base}/ui/#/runs/{long_run}")
        expect(page.locator('[data-step-id="nap"]')).to_contain_text("running")
        page.get_by_role("button", name="Cancel run…").click()
        page.get_by_role("dialog").get_by_role("button", name="Cancel run").click()
        expect(page.locator("#run-status")).to_have_text("cancelled")
        assert _get(base, writer_token, f"/runs/{long_run}")["status"] == "cancelled"


def test_pause_resume_snooze_and_cancel_from_the_page_change_the_task(
    db_url: str, writer_token: str, tmp_path: Path, page: Page
) -> None:
    with api_process(db_url, tmp_path) as base:
        body = {
            "title": "Steered from the page",
            "schedule_kind": "cron",
            "schedule_expr": "*/5 * * * *",
            "payload": {"pipeline": [{"id": "x", "uses": "log", "with": {"message": "x"}}]},
        }
        resp = httpx.post(f"{base}/tasks", json=body, headers=auth(writer_token), timeout=10)
        assert resp.status_code == 201, resp.text
        task_id = resp.json()["id"]

        # A wrong token is refused at once, with the API's 401, and not kept.
        page.goto(f"{base}/ui/")
        page.get_by_label("API token").fill("pao_" + "x" * 38)
        page.get_by_role("button", name="Use token").click()
        expect(page.get_by_role("alert")).to_contain_text("401 · Unauthenticated")
        expect(page.get_by_role("alert")).to_contain_text("bearer token")
        assert page.evaluate("sessionStorage.getItem('pao.token')") is None
        _sign_in(page, base, writer_token)
        expect(page.get_by_role("alert")).to_be_hidden()

        # The task is listed with its next occurrences on the timeline.
        row = page.locator(f'tr[data-task-id="{task_id}"]')
        expect(row).to_contain_text("Steered from the page")
        expect(row.locator(".lane .mark").first).to_be_attached()
        row.get_by_role("link", name="Steered from the page").click()

        def status() -> str:
            return str(_get(base, writer_token, f"/tasks/{task_id}")["status"])

        heading = page.locator(".view-head")
        page.get_by_role("button", name="Pause").focus()
        page.keyboard.press("Enter")
        expect(heading).to_contain_text("paused")
        assert status() == "paused"
        expect(page.get_by_role("button", name="Pause")).to_be_disabled()

        page.get_by_role("button", name="Resume").focus()
        page.keyboard.press("Space")
        expect(heading).to_contain_text("active")
        assert status() == "active"

        before = _get(base, writer_token, f"/tasks/{task_id}")["next_run_at"]
        page.get_by_label("by").fill("3600")
        page.get_by_role("button", name="Snooze").click()
        expect(page.locator("table.record").get_by_text("snoozed", exact=True)).to_be_visible()
        after = _get(base, writer_token, f"/tasks/{task_id}")["next_run_at"]
        assert after != before

        # Cancel asks first; keeping the task changes nothing.
        page.get_by_role("button", name="Cancel task…").click()
        page.get_by_role("button", name="Keep it").click()
        page.get_by_role("button", name="Cancel task…").click()
        page.keyboard.press("Escape")
        expect(page.get_by_role("dialog")).to_be_hidden()
        assert status() == "active"
        page.get_by_role("button", name="Cancel task…").click()
        page.get_by_role("dialog").get_by_role("button", name="Cancel task").click()
        expect(heading).to_contain_text("cancelled")
        assert status() == "cancelled"

        # Forgetting the token leaves the page with nothing of the API on it.
        page.get_by_role("button", name="Forget token").click()
        expect(page.get_by_label("API token")).to_be_visible()
        expect(page.locator("#view")).to_be_empty()
        assert page.evaluate("sessionStorage.getItem('pao.token')") is None
