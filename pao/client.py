"""A small typed client of pao's public HTTP API, shared by the CLI and the MCP server.

It speaks only the documented contract (paths, JSON bodies, problem responses),
so whatever drives it is held to the same scopes and ownership rules as any
other caller. Every failure surfaces as one of two errors: `ApiProblem` when the
API answered with a problem, `ApiUnreachable` when it could not be asked.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from pao.errors import PaoError

if TYPE_CHECKING:
    # Loaded when a client connects: every `pao` command parses the client's options,
    # and the processes (`pao worker`, `pao scheduler`) would otherwise carry httpx.
    import httpx

DEFAULT_API_URL = "http://127.0.0.1:8080"
TIMEOUT = 30.0
"""Seconds a single API call may take; `POST /tasks` can wait on tool discovery."""


def api_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """`PAO_API_URL`, else the address `pao api` listens on by default."""
    env = os.environ if env is None else env
    return (env.get("PAO_API_URL") or DEFAULT_API_URL).rstrip("/")


class Task(TypedDict):
    id: str
    title: str
    description: str
    schedule_kind: str
    schedule_expr: str
    timezone: str
    payload: dict[str, Any]
    priority: int
    dedupe_key: str | None
    dedupe_window_seconds: int
    max_retries: int
    backoff_strategy: str
    concurrency_key: str | None
    concurrency_limit: int | None
    created_by: str
    status: str
    next_run_at: str | None
    misfire_policy: str
    misfire_grace_seconds: int
    version: int
    created_at: str
    updated_at: str


class Run(TypedDict):
    id: str
    task_id: str
    status: str
    attempt: int
    scheduled_for: str
    queued_at: str
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    worker_id: str | None
    steps: list[dict[str, Any]]
    error: str | None


class RunLog(TypedDict):
    id: int
    at: str
    level: str
    step_id: str | None
    message: str


class Occurrence(TypedDict):
    at: str
    local: str
    # Past occurrences only (`past=true`): what became of it and the run it led to.
    decision: NotRequired[str | None]
    detail: NotRequired[str | None]
    decided_at: NotRequired[str | None]
    run_id: NotRequired[str | None]
    run_status: NotRequired[str | None]


class EventAccepted(TypedDict):
    id: str
    type: str
    received_at: str
    queued: int


class TaskPage(TypedDict):
    items: list[Task]
    next_cursor: str | None


class RunPage(TypedDict):
    items: list[Run]
    next_cursor: str | None


class LogPage(TypedDict):
    items: list[RunLog]
    next_cursor: str | None


class Occurrences(TypedDict):
    items: list[Occurrence]


class TaskType(TypedDict):
    name: str
    description: str
    parameters_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    metadata: dict[str, Any]
    lease_seconds: int
    cost_per_call: str | None
    is_active: bool
    version: int
    created_at: str
    updated_at: str


class TaskTypePage(TypedDict):
    items: list[TaskType]
    next_cursor: str | None


class ClaimItem(TypedDict):
    claim_id: str
    run_id: str
    task_id: str
    step_id: str
    attempt: int
    parameters: dict[str, Any]
    idempotency_key: str
    lease_expires_at: str


class ClaimList(TypedDict):
    items: list[ClaimItem]


class ApiProblem(PaoError):
    """The API refused a request; `title` and `detail` say why, `errors` name bad fields."""

    def __init__(
        self,
        *,
        status: int,
        title: str,
        detail: str,
        type: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{title}: {detail}" if detail else title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        self.request_id = request_id

    def lines(self) -> list[str]:
        """The problem for a person: title and detail, then one line per invalid field."""
        out = [f"{self.title} ({self.status}): {self.detail}" if self.detail else self.title]
        out += [f"  {e.get('field', '?')}: {e.get('message', 'invalid')}" for e in self.errors]
        if self.status == 401:
            out.append("  check the token (PAO_TOKEN or --token); `pao agents create` makes one")
        if self.request_id:
            out.append(f"  request_id: {self.request_id}")
        return out

    @classmethod
    def of(cls, response: httpx.Response) -> ApiProblem:
        """Read a problem response; anything else becomes a problem with the raw text."""
        body: Any = None
        if response.headers.get("content-type", "").split(";")[0].strip().endswith("json"):
            try:
                body = response.json()
            except ValueError:
                body = None
        if not isinstance(body, dict):
            text = response.text.strip()[:500]
            return cls(
                status=response.status_code,
                title=response.reason_phrase or f"HTTP {response.status_code}",
                detail=text or f"{response.request.method} {response.request.url.path} failed",
                request_id=response.headers.get("x-request-id"),
            )
        errors = body.get("errors")
        return cls(
            status=int(body.get("status") or response.status_code),
            title=str(body.get("title") or response.reason_phrase),
            detail=str(body.get("detail") or ""),
            type=str(body.get("type") or "about:blank"),
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
            request_id=body.get("request_id") or response.headers.get("x-request-id"),
        )


class ApiUnreachable(PaoError):
    """The pao API could not be reached; start it (`pao api`) or set PAO_API_URL."""


class InvalidId(PaoError):
    """A task or run id that is not a UUID; nothing was sent."""


class PaoClient:
    """One agent's view of the API: every call carries its bearer token.

    Clients made with `with_token` share the connection pool, so a server acting
    for many agents keeps one pool.
    """

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self._http = http
        self._token = token

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, base_url: str, token: str, *, request_timeout: float = TIMEOUT
    ) -> AsyncIterator[PaoClient]:
        import httpx

        async with httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=request_timeout
        ) as http:
            yield cls(http, token)

    def with_token(self, token: str) -> PaoClient:
        return PaoClient(self._http, token)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        import httpx  # loaded by `connect` already: a lookup in sys.modules

        try:
            response = await self._http.request(
                method, path, json=json, params=query, headers=headers
            )
        except httpx.HTTPError as exc:
            raise ApiUnreachable(
                f"cannot reach the pao API at {self._http.base_url} ({exc.__class__.__name__}: "
                f"{exc}); is `pao api` running? Set PAO_API_URL to its address"
            ) from exc
        if response.is_error:
            raise ApiProblem.of(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # Tasks

    async def list_tasks(
        self,
        *,
        status: str | None = None,
        created_by: str | None = None,
        schedule_kind: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        params = {
            "status": status,
            "created_by": created_by,
            "schedule_kind": schedule_kind,
            "limit": limit,
            "cursor": cursor,
        }
        return cast(TaskPage, await self._call("GET", "/tasks", params=params))

    async def get_task(self, task_id: str) -> Task:
        return cast(Task, await self._call("GET", f"/tasks/{_id(task_id)}"))

    async def create_task(
        self, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Task:
        return cast(
            Task,
            await self._call("POST", "/tasks", json=dict(body), idempotency_key=idempotency_key),
        )

    async def preview(self, body: Mapping[str, Any]) -> Occurrences:
        return cast(Occurrences, await self._call("POST", "/tasks/preview", json=dict(body)))

    async def occurrences(
        self,
        task_id: str,
        *,
        count: int | None = None,
        from_: str | None = None,
        past: bool = False,
    ) -> Occurrences:
        params = {"count": count, "from": from_, "past": "true" if past else None}
        return cast(
            Occurrences,
            await self._call("GET", f"/tasks/{_id(task_id)}/occurrences", params=params),
        )

    async def run_now(self, task_id: str) -> Run:
        return cast(Run, await self._call("POST", f"/tasks/{_id(task_id)}/run_now"))

    async def pause(self, task_id: str) -> Task:
        return cast(Task, await self._call("POST", f"/tasks/{_id(task_id)}/pause"))

    async def resume(self, task_id: str) -> Task:
        return cast(Task, await self._call("POST", f"/tasks/{_id(task_id)}/resume"))

    async def snooze(self, task_id: str, seconds: int) -> Task:
        return cast(
            Task,
            await self._call("POST", f"/tasks/{_id(task_id)}/snooze", json={"seconds": seconds}),
        )

    async def cancel(self, task_id: str) -> Task:
        return cast(Task, await self._call("POST", f"/tasks/{_id(task_id)}/cancel"))

    # Runs

    async def list_runs(
        self,
        *,
        task_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> RunPage:
        params = {"task_id": task_id, "status": status, "limit": limit, "cursor": cursor}
        return cast(RunPage, await self._call("GET", "/runs", params=params))

    async def get_run(self, run_id: str) -> Run:
        return cast(Run, await self._call("GET", f"/runs/{_id(run_id)}"))

    async def run_logs(
        self, run_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> LogPage:
        params = {"limit": limit, "cursor": cursor}
        return cast(LogPage, await self._call("GET", f"/runs/{_id(run_id)}/logs", params=params))

    async def cancel_run(self, run_id: str) -> Run:
        return cast(Run, await self._call("POST", f"/runs/{_id(run_id)}/cancel"))

    # Events

    async def publish_event(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        audience: str | list[str] | None = None,
    ) -> EventAccepted:
        """`audience` ("*" or agent ids) reaches other agents' event tasks: events:broadcast."""
        body: dict[str, Any] = {"type": type, "payload": dict(payload)}
        if audience is not None:
            body["audience"] = audience
        return cast(
            EventAccepted,
            await self._call("POST", "/events", json=body, idempotency_key=idempotency_key),
        )

    # Task types and claims

    async def list_task_types(
        self, *, include_inactive: bool = False, limit: int | None = None, cursor: str | None = None
    ) -> TaskTypePage:
        params = {
            "include_inactive": str(include_inactive).lower(),
            "limit": limit,
            "cursor": cursor,
        }
        return cast(TaskTypePage, await self._call("GET", "/task-types", params=params))

    async def get_task_type(self, name: str) -> TaskType:
        return cast(TaskType, await self._call("GET", f"/task-types/{_type_name(name)}"))

    async def create_task_type(self, body: Mapping[str, Any]) -> TaskType:
        """Admin: declare a task type ({name, parameters_schema, ...})."""
        return cast(TaskType, await self._call("POST", "/task-types", json=dict(body)))

    async def update_task_type(self, name: str, body: Mapping[str, Any]) -> TaskType:
        """Admin: replace a task type's definition (everything but its name)."""
        path = f"/task-types/{_type_name(name)}"
        return cast(TaskType, await self._call("PUT", path, json=dict(body)))

    async def delete_task_type(self, name: str) -> None:
        """Admin: make a task type inactive."""
        await self._call("DELETE", f"/task-types/{_type_name(name)}")

    async def claim(self, task_type: str, *, limit: int = 1, wait_seconds: float = 0) -> ClaimList:
        """work:claim: up to `limit` steps, waiting up to `wait_seconds` (at most 30) for one.
        The HTTP client's read timeout must be longer than the wait."""
        body = {"limit": limit, "wait_seconds": wait_seconds}
        path = f"/task-types/{_type_name(task_type)}/claim"
        return cast(ClaimList, await self._call("POST", path, json=body))

    async def heartbeat(self, claim_id: str) -> dict[str, Any]:
        """Extend the claim's lease; ApiProblem with status 409: stop working on the step."""
        return cast(
            dict[str, Any], await self._call("POST", f"/claims/{_claim(claim_id)}/heartbeat")
        )

    async def progress(self, claim_id: str, message: str, percent: float | None = None) -> None:
        body = {"message": message, "percent": percent}
        await self._call("POST", f"/claims/{_claim(claim_id)}/progress", json=body)

    async def complete(
        self, claim_id: str, output: Mapping[str, Any], cost: float | None = None
    ) -> None:
        body = {"output": dict(output), "cost": cost}
        await self._call("POST", f"/claims/{_claim(claim_id)}/complete", json=body)

    async def fail(self, claim_id: str, error: str, *, retryable: bool = False) -> None:
        body = {"error": error, "retryable": retryable}
        await self._call("POST", f"/claims/{_claim(claim_id)}/fail", json=body)


_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,127}(?:\.[a-z0-9_-]{1,127}){0,16}$")
_CLAIM_ID = re.compile(r"^rc_[0-9]{1,19}_[0-9]{1,10}_[0-9a-f]{32}$")


def _type_name(value: str) -> str:
    """A task type's name for a path segment, checked here like `_id`."""
    if not _TYPE_NAME.match(value) or len(value) > 128:
        raise InvalidId(f"{value!r} is not a task type name, such as media.transcode")
    return value


def _claim(value: str) -> str:
    if not _CLAIM_ID.match(value):
        raise InvalidId(f"{value!r} is not a claim id; claim ids come from claim()")
    return value


def _id(value: str) -> str:
    """A UUID for a path segment, checked here: any other text could name another path."""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise InvalidId(
            f"{value!r} is not an id; ids are UUIDs such as 3f1c2b9e-5d2a-4c41-9a57-0e8b7f6d1c20"
        ) from None
