"""The dashboard in a real browser against real `pao api` and `pao worker` processes."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
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


def _png(width: int, height: int) -> bytes:
    """A real (decodable) PNG of red pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _upload(base: str, token: str, name: str, data: bytes, **form: str) -> dict[str, Any]:
    files = {"file": (name, data, "application/octet-stream")}
    resp = httpx.post(f"{base}/assets", files=files, data=form, headers=auth(token), timeout=10)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.fixture
def filer_token(make_token: Callable[..., str]) -> str:
    return make_token(
        "tasks:read", "tasks:write", "runs:read", "assets:read", "assets:write", name="filer"
    )


def test_assets_uploaded_previewed_downloaded_linked_and_deleted_from_the_page(
    db_url: str, filer_token: str, writer_token: str, tmp_path: Path, page: Page
) -> None:
    token = filer_token
    refused: list[str] = []
    page.on(
        "console",
        lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    picture = _png(3, 2)
    source = tmp_path / "cat.png"
    source.write_bytes(picture)
    with api_process(db_url, tmp_path) as base:
        _sign_in(page, base, token)
        page.get_by_role("link", name="Assets").click()
        expect(page.get_by_role("heading", name="Assets", level=1)).to_be_visible()
        expect(page.get_by_text("No assets yet")).to_be_visible()

        # Upload from the page: listed, and stored as sent.
        page.get_by_label("File").set_input_files(str(source))
        page.get_by_label("Label", exact=True).fill("a cat")
        page.get_by_label("Tags").fill("pets, q1")
        page.get_by_role("button", name="Upload", exact=True).click()
        status = f"Uploaded cat.png (image/png, {len(picture)} B)"
        expect(page.locator("#upload-status")).to_contain_text(status)
        (asset,) = _get(base, token, "/assets")["items"]
        assert (asset["label"], asset["tags"]) == ("a cat", ["pets", "q1"])
        assert asset["sha256"] == hashlib.sha256(picture).hexdigest()
        row = page.locator(f'tr[data-asset-id="{asset["id"]}"]')
        expect(row).to_contain_text("cat.png")
        expect(row).to_contain_text("image/png")
        expect(row).to_contain_text("pets")

        # Previewed from the bytes it fetched with the token: the image really decodes.
        row.get_by_role("button", name="Preview").click()
        image = page.get_by_role("img", name="Preview of cat.png")
        expect(image).to_be_visible()
        assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [3, 2]
        assert image.evaluate("img => img.src").startswith("blob:")

        # Filters go to the API.
        page.get_by_label("Filter by media type").fill("text/*")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_text("No asset matches these filters.")).to_be_visible()
        page.get_by_label("Filter by media type").fill("image/*")
        page.get_by_role("button", name="Filter").click()
        expect(row).to_be_visible()

        # Download: the browser saves the bytes under the asset's name.
        with page.expect_download() as info:
            row.get_by_role("button", name="Download cat.png").click()
        download = info.value
        assert download.suggested_filename == "cat.png"
        assert Path(download.path()).read_bytes() == picture

        # A signed link, shown to copy, that works without a token.
        row.get_by_role("button", name="Copy a link to cat.png").click()
        link = page.locator("#asset-link-url")
        expect(link).to_have_value(re.compile(r"/asset-links/"))
        assert httpx.get(link.input_value(), timeout=10).content == picture
        expect(page.locator("#asset-link")).to_contain_text("Anyone with it can download the file")

        # A run's assets on its page: the image previewed, a page and a text offered for
        # download only, never rendered.
        body = {
            "title": "Makes files",
            "schedule_kind": "event",
            "schedule_expr": "never.sent",
            "payload": {"pipeline": [{"id": "x", "uses": "log", "with": {"message": "x"}}]},
        }
        task = httpx.post(f"{base}/tasks", json=body, headers=auth(token), timeout=10).json()
        run = httpx.post(f"{base}/tasks/{task['id']}/run_now", headers=auth(token)).json()
        _upload(base, token, "chart.png", _png(4, 4), run_id=run["id"])
        html = b"<html><body><script>document.title='pwned'</script>hi</body></html>"
        page_asset = _upload(base, token, "page.html", html, run_id=run["id"])
        notes = _upload(base, token, "notes.txt", b"just text\n", run_id=run["id"])
        assert page_asset["media_type"] == "text/html"
        page.goto(f"{base}/ui/#/runs/{run['id']}")
        assets = page.locator("#run-assets")
        chart = page.get_by_role("img", name="Preview of chart.png")
        expect(chart).to_be_visible()
        assert chart.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [4, 4]
        for other in (page_asset, notes):
            item = assets.locator(f'li[data-asset-id="{other["id"]}"]')
            expect(item).to_contain_text(other["filename"])
            expect(item.get_by_role("button", name=f"Download {other['filename']}")).to_be_visible()
            expect(item.locator("img, iframe, object, embed")).to_have_count(0)
        assert page.title() == "pao dashboard"
        with page.expect_download() as info:
            assets.get_by_role("button", name="Download page.html").click()
        assert Path(info.value.path()).read_bytes() == html

        # Delete asks first, then the asset is gone.
        page.get_by_role("link", name="Assets").click()
        row = page.locator(f'tr[data-asset-id="{asset["id"]}"]')
        row.get_by_role("button", name="Delete cat.png").click()
        page.get_by_role("dialog").get_by_role("button", name="Delete").click()
        expect(row).to_have_count(0)
        gone = httpx.get(f"{base}/assets/{asset['id']}", headers=auth(token), timeout=10)
        assert gone.status_code == 404

        # A token that may not read assets still sees its run's list (the run carries it),
        # here empty, and no error.
        page.get_by_role("button", name="Forget token").click()
        _sign_in(page, base, writer_token)
        task = httpx.post(f"{base}/tasks", json=body, headers=auth(writer_token)).json()
        run = httpx.post(f"{base}/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
        page.goto(f"{base}/ui/#/runs/{run['id']}")
        expect(page.locator("#run-assets")).to_contain_text("This run has no assets.")
        expect(page.get_by_role("alert")).to_be_hidden()
    assert refused == []
