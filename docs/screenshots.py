"""Take the dashboard screenshots in docs/ from a real system.

    .venv/bin/python docs/screenshots.py

Starts a throwaway embedded PostgreSQL and real `pao api`, `pao scheduler` and
`pao worker` processes (with the demo MCP servers of ops/mcp-demo), creates a
few tasks through the API, runs the morning briefing, lets the scheduler catch
up on an hourly task as if it had been down for ten hours (its `next_run_at`
is set ten hours back: the one change made behind the API's back), then opens
/ui in Debian's chromium and saves a PNG of each main view.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.common import database  # noqa: E402
from tests.acceptance import browser as chromium  # noqa: E402
from tests.acceptance.procs import Process, free_port, wait_ready  # noqa: E402
from tests.helpers import new_agent  # noqa: E402

OUT = ROOT / "docs"
SCOPES = ["tasks:read", "tasks:write", "runs:read", "events:publish"]
ZONE = "Europe/Chisinau"


def log_step(step_id: str, message: str) -> dict[str, Any]:
    return {"id": step_id, "uses": "log", "with": {"message": message}}


TASKS: list[dict[str, Any]] = [
    {
        "title": "Morning Briefing",
        "description": "Weather for Chisinau, sent to the team chat on weekdays",
        "schedule_kind": "rrule",
        "schedule_expr": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30",
        "payload": {
            "pipeline": [
                {"id": "weather", "uses": "weather-mcp.forecast", "with": {"city": "Chisinau"}},
                log_step("note", "forecast: ${steps.weather.summary}"),
                {
                    "id": "notify",
                    "uses": "telegram-mcp.send_message",
                    "with": {"chat_id": 42, "text": "Good morning! ${steps.weather.summary}"},
                },
            ]
        },
    },
    {
        "title": "Inbox sweep",
        "description": "Hourly: file new mail into projects",
        "schedule_kind": "cron",
        "schedule_expr": "0 * * * *",
        "misfire_grace_seconds": 3 * 3600,
        "payload": {"pipeline": [log_step("sweep", "swept the inbox")]},
    },
    {
        "title": "Weekly report",
        "schedule_kind": "rrule",
        "schedule_expr": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=17;BYMINUTE=0",
        "payload": {"pipeline": [log_step("report", "report sent")]},
    },
    {
        "title": "Nightly backup check",
        "schedule_kind": "cron",
        "schedule_expr": "15 2 * * *",
        "payload": {"pipeline": [log_step("check", "backups verified")]},
    },
    {
        "title": "Invoice reminder",
        "schedule_kind": "once",
        "schedule_expr": "",  # filled in: three days from now
        "payload": {"pipeline": [log_step("remind", "invoice reminder sent")]},
    },
    {
        "title": "GitHub triage",
        "schedule_kind": "event",
        "schedule_expr": "github.*",
        "payload": {"pipeline": [log_step("triage", "triaged ${event.type}")]},
    },
    {
        "title": "Webhook relay",
        "description": "Forwards build results; its receiver is slow today",
        "schedule_kind": "event",
        "schedule_expr": "ci.build",
        "max_retries": 0,
        "payload": {
            "pipeline": [
                log_step("receive", "build ${event.payload.build} finished"),
                {"id": "forward", "uses": "sleep", "with": {"seconds": 3}, "timeout_seconds": 1},
            ]
        },
    },
    {
        "title": "Long import",
        "schedule_kind": "cron",
        "schedule_expr": "0 3 * * 0",
        "payload": {
            "pipeline": [
                log_step("begin", "importing 12 files"),
                {"id": "import", "uses": "sleep", "with": {"seconds": 60}},
            ]
        },
    },
    {
        "title": "Plant watering",
        "schedule_kind": "cron",
        "schedule_expr": "0 7 * * *",
        "payload": {"pipeline": [log_step("water", "watered")]},
    },
]


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    with database() as url:
        token = new_agent(url, SCOPES, name="docs")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        logs = Path(tempfile.mkdtemp(prefix="pao-screenshots-"))
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "PAO_PORT": str(port),
            "PAO_TOOLS_FILE": str(ROOT / "ops" / "mcp-demo" / "tools.json"),
            "PAO_SCHEDULER_TICK_MS": "200",
            "PAO_DEFAULT_TIMEZONE": ZONE,
            # The demo MCP servers are started as `python …`: this interpreter's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        procs = [
            Process([sys.executable, "-m", "pao", name], env, logs / f"{name}.log")
            for name in ("api", "scheduler", "worker")
        ]
        try:
            wait_ready(base, procs[0])
            shoot(base, url, token)
        finally:
            for proc in procs:
                proc.kill()
    print(f"screenshots in {OUT}; process logs in {logs}")


def shoot(base: str, url: str, token: str) -> None:
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def ok(resp: httpx.Response) -> Any:
        if resp.is_error:
            raise SystemExit(f"{resp.request.method} {resp.request.url}: {resp.text}")
        return resp.json()

    until(lambda: all(s["reachable"] for s in ok(http.get("/tools"))["servers"]), "MCP servers")
    ids: dict[str, str] = {}
    for task in TASKS:
        body = dict(task)
        if body["schedule_kind"] == "once":
            body["schedule_expr"] = (datetime.now(UTC) + timedelta(days=3, hours=2)).strftime(
                "%Y-%m-%dT%H:00:00Z"
            )
        body.setdefault("timezone", ZONE)
        ids[body["title"]] = ok(http.post("/tasks", json=body))["id"]
    ok(http.post(f"/tasks/{ids['Plant watering']}/pause"))

    briefing = ok(http.post(f"/tasks/{ids['Morning Briefing']}/run_now"))["id"]
    until(lambda: ok(http.get(f"/runs/{briefing}"))["status"] == "succeeded", "the briefing")

    # Ten hours of scheduler downtime, caught up under the task's misfire policy.
    hourly = ids["Inbox sweep"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tasks SET next_run_at = date_trunc('hour', now()) - interval '9 hours'"
            " WHERE id = %s",
            (hourly,),
        )

    def caught_up() -> bool:
        record = ok(http.get(f"/tasks/{hourly}/occurrences", params={"past": "true"}))["items"]
        queued = [o for o in record if o["decision"] == "queued"]
        return bool(queued) and queued[0]["run_status"] == "succeeded"

    until(caught_up, "the hourly task to catch up")
    ok(http.post(f"/tasks/{hourly}/snooze", json={"seconds": 1800}))

    # A few more runs for the list: events, one that fails, one still running.
    for number in (1, 2):
        ok(http.post("/events", json={"type": "github.push", "payload": {"n": number}}))
    ok(http.post("/events", json={"type": "ci.build", "payload": {"build": 812}}))
    until(lambda: ok(http.get("/runs", params={"status": "failed"}))["items"], "a failed run")
    ok(http.post(f"/tasks/{ids['Long import']}/run_now"))
    until(lambda: ok(http.get("/runs", params={"status": "running"}))["items"], "a running run")
    until(lambda: not ok(http.get("/runs", params={"status": "queued"}))["items"], "queued runs")

    with chromium.chromium() as browser:
        context = browser.new_context(
            viewport={"width": 1360, "height": 860}, timezone_id=ZONE, locale="en-GB"
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{base}/ui/")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Use token").click()
        page.locator("tr[data-task-id]").first.wait_for()
        page.locator(".lane .mark").first.wait_for()
        page.screenshot(path=OUT / "dashboard-tasks.png", full_page=True)

        page.goto(f"{base}/ui/#/runs/{briefing}")
        page.get_by_text("This run has ended.").wait_for()
        page.get_by_role("log").get_by_text("forecast: Chisinau").wait_for()
        page.screenshot(path=OUT / "dashboard-run.png", full_page=True)

        page.goto(f"{base}/ui/#/tasks/{hourly}")
        page.locator("table.record tbody tr").first.wait_for()
        page.screenshot(path=OUT / "dashboard-decisions.png", full_page=True)

        page.goto(f"{base}/ui/#/runs")
        page.locator("tr[data-run-id]").first.wait_for()
        page.screenshot(path=OUT / "dashboard-runs.png", full_page=True)
        context.close()


if __name__ == "__main__":
    main()
