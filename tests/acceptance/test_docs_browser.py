"""/docs and /redoc in a real browser: they work under their Content-Security-Policy, and load
nothing from anywhere but this server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Response, expect

from tests.acceptance import browser as chromium
from tests.acceptance.running import api_process

WAIT_MS = 30_000
# `expect` has a timeout of its own (5 s), which a busy machine can pass while a page loads.
expect.set_options(timeout=WAIT_MS)
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # in its bundle; the policy blocks it


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[str]:
    with api_process(db_url, tmp_path) as base:
        yield base


@pytest.fixture
def browser(api: str) -> Iterator[Browser]:
    """After the API fixture: Playwright holds this thread's event loop."""
    why = chromium.missing()
    if why is not None:
        if os.environ.get("PAO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the docs test needs a browser: {why}")
        pytest.skip(f"no browser for the docs test: {why} (CI requires it)")
    with chromium.chromium() as b:
        yield b


@pytest.mark.parametrize(
    ("path", "shows"),
    [
        ("/docs", lambda page: page.get_by_text("/tasks/{task_id}/stream").first),
        ("/redoc", lambda page: page.get_by_role("heading", name="Personal Agent Orchestrator")),
    ],
    ids=["swagger-ui", "redoc"],
)
def test_the_docs_pages_render_under_their_policy(
    api: str, browser: Browser, path: str, shows: Callable[[Page], Locator]
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console: list[str] = []
    errors: list[str] = []
    elsewhere: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            console.append(message.text)

    def on_response(response: Response) -> None:
        if not response.url.startswith((api, "data:", "blob:")):
            elsewhere.append(response.url)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", on_response)
    try:
        page.goto(api + path)
        expect(shows(page)).to_be_visible()
        page.wait_for_load_state("networkidle")
    finally:
        context.close()
    assert errors == []
    assert elsewhere == []  # nothing was fetched from anywhere else
    # The policy held everything the page needs; it blocked only ReDoc's hard-coded logo.
    blocked = [m for m in console if "Content Security Policy" in m]
    assert [m for m in blocked if REDOC_LOGO not in m] == []
