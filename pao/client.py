"""A small typed client of pao's public HTTP API, shared by the CLI and the MCP server.

It speaks only the documented contract (paths, JSON bodies, problem responses),
so whatever drives it is held to the same scopes and ownership rules as any
other caller. Every failure surfaces as one of two errors: `ApiProblem` when the
API answered with a problem, `ApiUnreachable` when it could not be asked.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import io
import logging
import os
import re
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, NotRequired, TypedDict, cast

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
    budget_per_run: str | None
    cost_estimate: str
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
    cost: str


class RunAsset(TypedDict):
    """An asset a run made, as GET /runs/{id} lists it."""

    id: str
    filename: str
    media_type: str
    size: int
    sha256: str
    step_id: str | None
    created_at: str


class RunDetail(Run):
    """A run as GET /runs/{id} shows it: with the assets it made."""

    assets: list[RunAsset]


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


class UsageWindow(TypedDict):
    """An agent's runs, cost and new asset bytes in its day or month; amounts are decimal
    text."""

    starts_at: str
    ends_at: str
    runs: int
    cost: str
    budget: str | None
    reserved: str
    remaining: str | None
    asset_bytes_added: int
    """Bytes of the assets it keeps that were created in the window."""


class HourWindow(TypedDict):
    starts_at: str
    ends_at: str
    max_runs: int | None
    runs_started: int | None


class Usage(TypedDict):
    agent_id: str
    timezone: str
    today: UsageWindow
    this_month: UsageWindow
    this_hour: HourWindow
    asset_bytes: int
    asset_quota_bytes: int


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


class Asset(TypedDict):
    id: str
    label: str
    filename: str
    media_type: str
    size: int
    sha256: str
    tags: list[str]
    status: str
    created_by: str
    run_id: str | None
    created_at: str


class AssetPage(TypedDict):
    items: list[Asset]
    next_cursor: str | None


class AssetLink(TypedDict):
    url: str
    expires_at: str


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


class Completion(TypedDict):
    """One item of `PaoClient.complete_many`."""

    claim_id: str
    output: Mapping[str, Any]
    cost: NotRequired[float | None]


class ClaimOutcome(TypedDict, total=False):
    """What became of one item of `PaoClient.complete_many`: `status` 200 and `state`
    succeeded, or 404 / 409 with the problem `type` and `detail` (stop working on it)."""

    claim_id: str
    status: int
    state: str
    type: str
    detail: str


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
        data: Mapping[str, Any] | None = None,
        files: Mapping[str, Any] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        import httpx  # loaded by `connect` already: a lookup in sys.modules

        try:
            response = await self._http.request(
                method, path, json=json, params=query, headers=headers, data=data, files=files
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

    async def get_run(self, run_id: str) -> RunDetail:
        """The run with its steps, their outputs, and the assets it made."""
        return cast(RunDetail, await self._call("GET", f"/runs/{_id(run_id)}"))

    async def run_logs(
        self, run_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> LogPage:
        params = {"limit": limit, "cursor": cursor}
        return cast(LogPage, await self._call("GET", f"/runs/{_id(run_id)}/logs", params=params))

    async def cancel_run(self, run_id: str) -> Run:
        return cast(Run, await self._call("POST", f"/runs/{_id(run_id)}/cancel"))

    # Agents: usage (any agent, its own), budgets (admins)

    async def usage(self, agent_id: str | None = None) -> Usage:
        """Runs and cost today and this month, budgets and what remains: this agent's, or
        (admins) another's."""
        who = "me" if agent_id is None else _id(agent_id)
        return cast(Usage, await self._call("GET", f"/agents/{who}/usage"))

    async def update_agent(self, agent_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Change an agent (admins): e.g. {"budget_per_day": 10, "timezone": "UTC"}."""
        return cast(
            dict[str, Any], await self._call("PUT", f"/agents/{_id(agent_id)}", json=dict(body))
        )

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

    async def complete_many(self, items: Sequence[Completion]) -> list[ClaimOutcome]:
        """Complete up to 100 claims' steps in one request and one transaction (POST
        /claims/complete): one outcome per item, in order. An item whose claim was lost
        (409) or is unknown (404) changes nothing while the others succeed; ApiProblem 422
        (a malformed item, an output breaking its type's output_schema) or 403 (another
        agent's claim) refuses the whole batch."""
        body = {
            "items": [
                {
                    "claim_id": _claim(i["claim_id"]),
                    "output": dict(i["output"]),
                    "cost": i.get("cost"),
                }
                for i in items
            ]
        }
        found = await self._call("POST", "/claims/complete", json=body)
        return cast(list[ClaimOutcome], found["items"])

    async def fail(self, claim_id: str, error: str, *, retryable: bool = False) -> None:
        body = {"error": error, "retryable": retryable}
        await self._call("POST", f"/claims/{_claim(claim_id)}/fail", json=body)

    async def release(self, claim_id: str) -> None:
        """Hand the step back unfinished (no attempt spent): the next claimer gets it at
        once with a new claim id, and this one answers 409 from then on."""
        await self._call("POST", f"/claims/{_claim(claim_id)}/release")

    # Assets

    async def upload_asset(
        self,
        path: str | os.PathLike[str],
        *,
        label: str = "",
        tags: Sequence[str] = (),
        media_type: str | None = None,
        run_id: str | None = None,
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> Asset:
        """Upload a file, streamed from disk (never read whole). `media_type` is checked
        against the content (unset: sniffed); `run_id` attaches it to a run you may see or
        hold a claim on. `progress(sent)` is called as the file's bytes are read to be sent.
        ApiProblem 413 over PAO_ASSET_MAX_BYTES, 409 over the quota."""
        name = filename if filename is not None else os.path.basename(os.fspath(path))
        with open(path, "rb") as fh:  # noqa: ASYNC230 (httpx reads it piece by piece)
            source = fh if progress is None else _Counted(fh, progress)
            return await self._upload(source, name, label, tags, media_type, run_id)

    async def upload_asset_bytes(
        self,
        data: bytes,
        filename: str,
        *,
        label: str = "",
        tags: Sequence[str] = (),
        media_type: str | None = None,
        run_id: str | None = None,
    ) -> Asset:
        """Upload bytes already in memory (small ones: an MCP tool's argument)."""
        return await self._upload(io.BytesIO(data), filename, label, tags, media_type, run_id)

    async def _upload(
        self,
        source: BinaryIO | _Counted,
        filename: str,
        label: str,
        tags: Sequence[str],
        media_type: str | None,
        run_id: str | None,
    ) -> Asset:
        data: dict[str, Any] = {"label": label}
        if tags:
            data["tags"] = list(tags)
        if run_id is not None:
            data["run_id"] = _id(run_id)
        files = {"file": (filename, source, media_type or "application/octet-stream")}
        return cast(Asset, await self._call("POST", "/assets", data=data, files=files))

    async def list_assets(
        self,
        *,
        tag: str | None = None,
        label: str | None = None,
        media_type: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> AssetPage:
        """`media_type` may name a family: `audio/*`."""
        params = {
            "tag": tag,
            "label": label,
            "media_type": media_type,
            "run_id": run_id,
            "task_id": task_id,
            "limit": limit,
            "cursor": cursor,
        }
        return cast(AssetPage, await self._call("GET", "/assets", params=params))

    async def get_asset(self, asset_id: str) -> Asset:
        return cast(Asset, await self._call("GET", f"/assets/{_id(asset_id)}"))

    async def delete_asset(self, asset_id: str) -> None:
        await self._call("DELETE", f"/assets/{_id(asset_id)}")

    async def asset_link(self, asset_id: str, expires_in: int = 900) -> AssetLink:
        """A signed URL that reads the asset without a token for `expires_in` seconds."""
        body = {"expires_in": expires_in}
        return cast(
            AssetLink, await self._call("POST", f"/assets/{_id(asset_id)}/links", json=body)
        )

    async def download_asset(
        self,
        asset_id: str,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> Asset:
        """Write the asset's content to `path`, streamed, and check it against its SHA-256.
        `progress(received)` counts the bytes in the file so far.

        Without `resume` the file is written afresh, and removed on any failure. With
        `resume`, bytes already in `path` are kept and only the rest is asked for (a Range
        with If-Range, so a changed asset is sent whole); a broken download leaves the
        partial file for the next try. A content that does not match its SHA-256 is always
        removed."""
        asset = await self.get_asset(asset_id)
        have, digest = _partial(path, asset["size"]) if resume else (0, hashlib.sha256())
        try:
            if not resume or have == 0 or have < asset["size"]:
                async with self._content(asset, offset=have) as response:
                    if response.status_code != 206:  # the whole content: start over
                        have, digest = 0, hashlib.sha256()
                    with open(path, "ab" if have else "wb") as out:  # noqa: ASYNC230
                        await _receive(response, out, digest, have, progress)
            _check(asset, digest)
        except CorruptedDownload:
            with suppress(FileNotFoundError):
                os.unlink(path)
            raise
        except BaseException:
            if not resume:
                with suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        return asset

    async def write_asset(
        self, asset_id: str, out: BinaryIO, *, progress: Progress | None = None
    ) -> Asset:
        """Stream the asset's content into `out` (standard output, a pipe), then check it
        against its SHA-256: CorruptedDownload if it does not match (what was written
        stays written; say so to whoever reads it)."""
        asset = await self.get_asset(asset_id)
        digest = hashlib.sha256()
        async with self._content(asset) as response:
            await _receive(response, out, digest, 0, progress)
        _check(asset, digest)
        return asset

    async def read_asset(self, asset_id: str, *, max_bytes: int) -> tuple[Asset, bytes | None]:
        """The asset and its content, or None for the content when it is larger than
        `max_bytes` (nothing of it is read then)."""
        asset = await self.get_asset(asset_id)
        if asset["size"] > max_bytes:
            return asset, None
        digest = hashlib.sha256()
        buffer = io.BytesIO()
        async with self._content(asset) as response:
            await _receive(response, buffer, digest, 0, None, limit=max_bytes)
        _check(asset, digest)
        return asset, buffer.getvalue()

    @asynccontextmanager
    async def _content(self, asset: Asset, *, offset: int = 0) -> AsyncIterator[httpx.Response]:
        """GET /assets/{id}/content from `offset` (a Range with If-Range on the asset's
        ETag: a 206 with the rest, or a 200 with the whole). A problem answer is raised as
        ApiProblem; a transport failure, even while the body is read, as ApiUnreachable."""
        import httpx

        headers = {"Authorization": f"Bearer {self._token}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = f'"{asset["sha256"]}"'
        url = f"/assets/{_id(asset['id'])}/content"
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.is_error:
                    await response.aread()
                    raise ApiProblem.of(response)
                yield response
        except httpx.HTTPError as exc:
            raise ApiUnreachable(
                f"the download of asset {asset['id']} broke off ({exc.__class__.__name__}: "
                f"{exc}); try again"
            ) from exc


Progress = Callable[[int], None]
"""Called with the bytes sent or received so far."""


class CorruptedDownload(ApiProblem):
    """A downloaded content does not match its SHA-256."""


class _Counted:
    """A file being uploaded, telling `progress` how much of it has been read to send
    (what httpx asks of a file: read, seek, tell, and fileno for its size)."""

    def __init__(self, raw: BinaryIO, progress: Progress) -> None:
        self._raw = raw
        self._progress = progress

    def fileno(self) -> int:
        return self._raw.fileno()

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._progress(self._raw.tell())
        return data


async def _receive(
    response: httpx.Response,
    out: BinaryIO,
    digest: Any,
    done: int,
    progress: Progress | None,
    *,
    limit: int | None = None,
) -> None:
    """Copy a response's body into `out` a piece at a time, hashing it."""
    if progress is not None:
        progress(done)
    async for piece in response.aiter_bytes(1 << 20):
        done += len(piece)
        if limit is not None and done > limit:
            raise ApiProblem(
                status=502,
                title="Unexpected content",
                detail=f"the content is longer than the {limit} bytes expected",
            )
        digest.update(piece)
        out.write(piece)
        if progress is not None:
            progress(done)


def _partial(path: str | os.PathLike[str], size: int) -> tuple[int, Any]:
    """How much of an asset of `size` bytes a partial download at `path` holds, and the
    hash of those bytes (read a piece at a time); nothing if it is missing or too long."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as old:
            if os.fstat(old.fileno()).st_size > size:
                return 0, digest  # not a part of this asset: start again
            have = 0
            while piece := old.read(1 << 20):
                digest.update(piece)
                have += len(piece)
    except FileNotFoundError:
        return 0, hashlib.sha256()
    return have, digest


def _check(asset: Asset, digest: Any) -> None:
    if digest.hexdigest() != asset["sha256"]:
        raise CorruptedDownload(
            status=502,
            title="Corrupted download",
            detail=f"the content of asset {asset['id']} does not match its SHA-256; "
            "download it again",
        )


# Remote workers ------------------------------------------------------------------------


class PermanentError(Exception):
    """Raise it from a `RemoteWorker` handler when trying the step again cannot help (its
    input is wrong, a file it names does not exist): the step fails with retryable false.
    Any other exception fails the step with retryable true; the task's retries decide."""


@dataclass(frozen=True)
class StepResult:
    """A handler's answer with what the step cost; a handler may return just the output."""

    output: Mapping[str, Any]
    cost: float | None = None


HandlerResult = Mapping[str, Any] | StepResult
Handler = (
    Callable[["StepContext"], Awaitable[HandlerResult]] | Callable[["StepContext"], HandlerResult]
)

_remote_log = logging.getLogger("pao.remote_worker")
STOP_POLL_SECONDS = 1.0
"""How long a stopping RemoteWorker waits for the answer to a long poll in flight."""


class StepContext:
    """What a handler gets for one claimed step: its fields, `progress()` and `lost`."""

    def __init__(self, item: ClaimItem, loop: asyncio.AbstractEventLoop) -> None:
        self.claim_id = item["claim_id"]
        self.run_id = item["run_id"]
        self.task_id = item["task_id"]
        self.step_id = item["step_id"]
        self.attempt = item["attempt"]
        self.parameters: dict[str, Any] = item["parameters"]
        self.idempotency_key = item["idempotency_key"]
        """The same for every delivery of the step: use it to make the work idempotent."""
        self.lease_expires_at = item["lease_expires_at"]
        self._loop = loop
        self._lost = threading.Event()  # read by a sync handler's thread
        self.claim_lost = False
        """Whether the server took the claim away (as opposed to the worker stopping)."""
        self.abandon = asyncio.Event()
        self.reports: collections.deque[tuple[str, float | None]] = collections.deque()
        self.reported = asyncio.Event()  # set when reports has one
        self.sending = asyncio.Lock()  # held while a report is sent: ending waits for it

    @property
    def lost(self) -> bool:
        """True once the handler should stop and return: the claim was lost (the lease ran
        out, the run was cancelled) or the worker is stopping and hands the step back.
        Whatever the handler returns after that is dropped. Async handlers are cancelled
        instead; sync ones cannot be, so they should look at this between pieces of work."""
        return self._lost.is_set()

    def progress(self, message: str, percent: float | None = None) -> None:
        """Report progress: a line in the run's log and an event on its live streams. It is
        sent in the background, in order, so it never blocks the handler; call it from an
        async handler or from a sync handler's thread."""
        report = (message[:2000] or "working", percent)
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            self._report(report)
        else:
            self._loop.call_soon_threadsafe(self._report, report)

    def _report(self, report: tuple[str, float | None]) -> None:
        self.reports.append(report)
        self.reported.set()

    def _stop(self, *, claim_lost: bool) -> None:
        self.claim_lost = self.claim_lost or claim_lost
        self._lost.set()
        self.abandon.set()


@dataclass
class WorkerStats:
    """What a `RemoteWorker` did with the steps it claimed."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0


class RemoteWorker:
    """Claim steps of one task type and do them with `handler`, until `stop()` or SIGTERM.

    ``handler(ctx)`` (async, or sync: run in a thread) gets a `StepContext` and returns the
    step's output (a mapping, checked by the server against the type's output_schema) or a
    `StepResult` with a cost. Raising fails the step: `PermanentError` with retryable
    false, anything else with retryable true. Meanwhile the worker heartbeats each claim at
    a third of the type's lease, so a handler may take longer than the lease, and sends the
    handler's `ctx.progress` reports. A heartbeat or report answered 409 means the claim
    is lost: an async handler is cancelled, a sync one sees `ctx.lost`, and nothing is sent
    for the step afterwards.

    Up to `concurrency` steps run at once, claimed `batch` at a time (default: as many as
    there are free slots) with long polls of `wait_seconds`; the client's request timeout
    must be longer than that. `stop()` (and SIGTERM or SIGINT when `run(handle_signals=True)`)
    stops claiming, gives running handlers `grace_seconds` to finish, then interrupts the
    rest and hands their steps back (POST /claims/{id}/release): the next claimer gets them
    at once and no attempt is spent. `lease_seconds` is read from GET /task-types/{name}
    when the token may read it (tasks:read), else from each claim's lease_expires_at.

    A 4xx answer to a claim (unknown type, missing work:claim scope) ends `run()` with that
    ApiProblem: retrying cannot help. Unreachable APIs and 5xx answers are retried with
    backoff.
    """

    def __init__(
        self,
        client: PaoClient,
        task_type: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        batch: int | None = None,
        wait_seconds: float = 20.0,
        lease_seconds: float | None = None,
        grace_seconds: float = 0.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 <= wait_seconds <= 30:
            raise ValueError("wait_seconds must be between 0 and 30 (the API's longest poll)")
        self.client = client
        self.task_type = _type_name(task_type)
        self.handler = handler
        self.concurrency = concurrency
        self.batch = min(100, max(1, batch or concurrency))
        self.wait_seconds = wait_seconds
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.stats = WorkerStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._hand_back: asyncio.Event | None = None

    def stop(self) -> None:
        """Stop claiming and hand back what is held (see the class); `run()` then returns.
        Safe to call from any thread, and before `run()` has started."""
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None:
            self._stop_early = True
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            stopping.set()
        else:
            loop.call_soon_threadsafe(stopping.set)

    _stop_early = False

    async def run(self, *, handle_signals: bool = False) -> None:
        """Work until `stop()` (or SIGTERM/SIGINT with `handle_signals`, main thread only)."""
        loop = self._loop = asyncio.get_running_loop()
        stopping = self._stopping = asyncio.Event()
        self._hand_back = asyncio.Event()
        if self._stop_early:
            stopping.set()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, stopping.set)
        active: set[asyncio.Task[None]] = set()
        try:
            lease = self.lease_seconds or await self._type_lease()
            await self._claim_loop(stopping, active, lease)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            stopping.set()
            if active and self.grace_seconds > 0:
                await asyncio.wait(active, timeout=self.grace_seconds)
            self._hand_back.set()
            if active:
                await asyncio.gather(*active, return_exceptions=True)

    async def _type_lease(self) -> float | None:
        try:
            return float((await self.client.get_task_type(self.task_type))["lease_seconds"])
        except ApiProblem as problem:
            if problem.status in (401, 403):
                return None  # a work:claim-only token: each claim's lease_expires_at says
            raise

    async def _claim_loop(
        self, stopping: asyncio.Event, active: set[asyncio.Task[None]], lease: float | None
    ) -> None:
        backoff = 0.5
        while not stopping.is_set():
            free = self.concurrency - len(active)
            stop_wait = asyncio.create_task(stopping.wait())
            try:
                if free <= 0:
                    await asyncio.wait({*active, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                limit = min(self.batch, free)
                claim = asyncio.create_task(
                    self.client.claim(self.task_type, limit=limit, wait_seconds=self.wait_seconds)
                )
                await asyncio.wait({claim, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not claim.done():
                    await self._abandon_poll(claim)
                    return
                try:
                    items = claim.result()["items"]
                except (ApiUnreachable, ApiProblem) as exc:
                    if isinstance(exc, ApiProblem) and exc.status < 500 and exc.status != 429:
                        raise
                    _remote_log.warning("claiming %s failed, retrying: %s", self.task_type, exc)
                    with suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_wait), backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff = 0.5
                for item in items:
                    self.stats.claimed += 1
                    task = asyncio.create_task(self._work(item, lease))
                    active.add(task)
                    task.add_done_callback(active.discard)
            finally:
                stop_wait.cancel()

    async def _abandon_poll(self, claim: asyncio.Task[ClaimList]) -> None:
        """Stopping during a long poll: an answer already on its way is waited for (briefly)
        and its steps handed back; then the poll is dropped. Should the server claim for a
        dropped poll after all, those steps go to the next claimer when their lease ends."""
        await asyncio.wait({claim}, timeout=STOP_POLL_SECONDS)
        if not claim.done():
            claim.cancel()
        try:
            items = (await claim)["items"]
        except (asyncio.CancelledError, PaoError):
            return
        for item in items:
            self.stats.claimed += 1
            await self._release(StepContext(item, asyncio.get_running_loop()))

    async def _work(self, item: ClaimItem, lease: float | None) -> None:
        assert self._loop is not None
        assert self._hand_back is not None
        ctx = StepContext(item, self._loop)
        keeper = asyncio.create_task(self._keep(ctx, lease or _lease_left(item)))
        if inspect.iscoroutinefunction(self.handler):
            job: asyncio.Future[HandlerResult] = asyncio.ensure_future(
                cast(Callable[[StepContext], Awaitable[HandlerResult]], self.handler)(ctx)
            )
        else:
            sync = cast(Callable[[StepContext], HandlerResult], self.handler)
            job = asyncio.ensure_future(asyncio.to_thread(sync, ctx))
        hand_back = asyncio.create_task(self._hand_back.wait())
        abandon = asyncio.create_task(ctx.abandon.wait())
        try:
            waits: set[asyncio.Future[Any]] = {job, hand_back, abandon}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if not job.done():
                ctx._stop(claim_lost=False)  # a sync handler sees ctx.lost
                job.cancel()  # an async one is interrupted; a thread cannot be
                await asyncio.gather(job, return_exceptions=True)
                if ctx.claim_lost:
                    self.stats.lost += 1
                    _remote_log.warning("lost the claim on step %s; stopped it", ctx.step_id)
                else:
                    await self._release(ctx)
                return
            # Reports made before the handler returned go first, in order.
            async with ctx.sending:
                keeper.cancel()
                while ctx.reports and await self._send_report(ctx):
                    pass
            await self._finish(ctx, job)
        finally:
            for task in (keeper, hand_back, abandon):
                task.cancel()

    async def _finish(self, ctx: StepContext, job: asyncio.Future[HandlerResult]) -> None:
        exc = job.exception()
        try:
            if exc is None:
                result = job.result()
                output, cost = (
                    (result.output, result.cost)
                    if isinstance(result, StepResult)
                    else (result, None)
                )
                try:
                    await self.client.complete(ctx.claim_id, output, cost)
                except ApiProblem as problem:
                    if problem.status != 422:
                        raise
                    # The output breaks the type's output_schema: doing it again will too.
                    await self.client.fail(
                        ctx.claim_id, f"the handler's output was refused: {problem}"[:10_000]
                    )
                    self.stats.failed += 1
                    return
                self.stats.completed += 1
                return
            retryable = not isinstance(exc, PermanentError)
            error = f"{exc.__class__.__name__}: {exc}"[:10_000]
            await self.client.fail(ctx.claim_id, error, retryable=retryable)
            self.stats.failed += 1
        except ApiProblem as problem:
            if problem.status == 409:
                self.stats.lost += 1
                _remote_log.warning("step %s ended elsewhere: %s", ctx.step_id, problem)
            else:
                _remote_log.error("could not end step %s: %s", ctx.step_id, problem)
        except ApiUnreachable as exc:
            _remote_log.error(
                "could not end step %s (%s); it is offered again when its lease runs out",
                ctx.step_id,
                exc,
            )

    async def _release(self, ctx: StepContext) -> None:
        try:
            await self.client.release(ctx.claim_id)
            self.stats.released += 1
        except (ApiProblem, ApiUnreachable) as exc:
            _remote_log.warning(
                "could not hand back step %s (%s); it is offered again when its lease runs out",
                ctx.step_id,
                exc,
            )

    async def _keep(self, ctx: StepContext, lease: float) -> None:
        """Heartbeat at a third of the lease and send progress reports, until cancelled or
        the claim is lost."""
        loop = asyncio.get_running_loop()
        interval = max(lease / 3, 0.05)
        while True:
            due = loop.time() + interval
            while (left := due - loop.time()) > 0:
                try:
                    await asyncio.wait_for(ctx.reported.wait(), left)
                except TimeoutError:
                    break
                ctx.reported.clear()
                while ctx.reports:
                    async with ctx.sending:
                        if ctx.reports and not await self._send_report(ctx):
                            return
            if not await self._send(ctx, self.client.heartbeat(ctx.claim_id)):
                return

    async def _send_report(self, ctx: StepContext) -> bool:
        """Send the oldest report (removed once sent); whether the claim still holds."""
        message, percent = ctx.reports[0]
        held = await self._send(ctx, self.client.progress(ctx.claim_id, message, percent))
        ctx.reports.popleft()
        return held

    async def _send(self, ctx: StepContext, call: Awaitable[Any]) -> bool:
        """Whether the claim still holds: False (and the handler is stopped) on 404/403/409."""
        try:
            await call
        except ApiProblem as problem:
            if problem.status in (403, 404, 409):
                ctx._stop(claim_lost=True)
                return False
            _remote_log.warning("heartbeat of step %s failed: %s", ctx.step_id, problem)
        except ApiUnreachable as exc:
            _remote_log.warning("heartbeat of step %s failed: %s", ctx.step_id, exc)
        return True


def _lease_left(item: ClaimItem) -> float:
    """The lease a claim was given, by this machine's clock (the type's lease_seconds is
    better: clocks differ)."""
    until = datetime.fromisoformat(item["lease_expires_at"])
    return max(1.0, (until - datetime.now(UTC)).total_seconds())


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
