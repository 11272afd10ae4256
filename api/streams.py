"""Live runs as Server-Sent Events, relayed from PostgreSQL notifications.

Each API process keeps one connection of its own (not from the pool) that
LISTENs for run events and hands them to the streams it serves, so any
replica serves any client, whichever worker runs the task. A stream
subscribes before it reads the run, so nothing that happens in between is
lost; what notifications cannot carry (outputs, log text, anything missed
while the listener reconnected) it reads from the database, at the latest at
the next heartbeat.

Frames a client receives, each `event: <name>` with one JSON `data:` line:
`run` (the whole run, as GET /runs/{id} shows it: first when the stream
meets a run, again once it has ended), `state` (`{run_id, status, attempt}`),
`step` (`{run_id, index, step}`: a step started or ended), `cost`
(`{run_id, step_id, cost, run_cost}`: a step was charged, amounts as decimal
text; a remote step's reported cost comes as the difference from its declared
one) and `log` (a log line with its `run_id`). Comment lines (`: heartbeat`) keep proxies from
closing an idle stream.

A stream answers to the agent that opened it (`StreamGuard`): at each
heartbeat (and as often while busy) it checks, with one statement, that the
token still signs in, the agent is neither revoked, disabled nor expired and
may still see the task, and ends if not. Each agent holds at most
`streams_per_agent` streams at once, counted in PostgreSQL across every API
replica (pao/store/stream_slots.py); the next one is answered 429. A stream
ends by itself after `stream_max_seconds`, with a `: stream lifetime reached;
reconnect` comment: a client that reconnects starts again from the current
state (the first frame is the whole run), so nothing is lost and no
Last-Event-ID is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from fastapi.responses import StreamingResponse
from psycopg_pool import AsyncConnectionPool

from api import metrics
from api.models import RunLogPublic, RunPublic
from pao import db, logs, streams, tokens
from pao.errors import DatabaseUnavailable, RateLimited
from pao.models import Agent, Run
from pao.settings import Settings
from pao.store import run_events, stream_slots
from pao.store import runs as run_store
from pao.vocabulary import RunStatus, StepStatus

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
LISTEN_WAIT_SECONDS = 5.0
LOG_PAGE = 500
TASK_RECENT_RUNS = 20
KEEP_ENDED = 1000
_STATUS_RANK: dict[str, int] = {RunStatus.QUEUED: 0, RunStatus.RUNNING: 1}
# Bound once: a member looked up on its enum class costs 0.2 µs (Python 3.11), each event.
_QUEUED, _RUNNING, _STEP_RUNNING = RunStatus.QUEUED, RunStatus.RUNNING, StepStatus.RUNNING
LIFETIME_ENDED = ": stream lifetime reached; reconnect\n\n"
SLOT_LOST = ": stream ended; reconnect\n\n"
RELEASE_WAIT_SECONDS = 2.0


def sse_response(frames: AsyncIterator[str]) -> StreamingResponse:
    """A text/event-stream response that proxies pass through unbuffered."""
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def frame(event: str, data: Any) -> str:
    """One Server-Sent Event; compact JSON never contains a newline."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


class Subscriber:
    """One stream's inbox; a full inbox means "re-read everything" rather than blocking."""

    def __init__(self, task_id: uuid.UUID, run_id: uuid.UUID | None) -> None:
        self.task_id = str(task_id)
        self.run_id = str(run_id) if run_id else None
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.overflowed = False
        self.stopped = False

    def put(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def stop(self) -> None:
        """End the stream at its next turn (the server is shutting down)."""
        self.stopped = True
        while self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait({"e": "stop"})


class StreamHub:
    """The process's one listening connection and the streams it feeds."""

    def __init__(self, url: str | None, pool: AsyncConnectionPool[db.Conn]) -> None:
        self.url = url  # where to LISTEN; None: nowhere (db.listen_url), streams poll
        self.pool = pool
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._listening = asyncio.Event()
        self._asked = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._releases: set[asyncio.Task[None]] = set()
        self._down = False
        self.stopping = False
        # Other channels this listener serves (api/remote.py): channel -> callback, called
        # with each payload, and with None whenever listening (re)starts.
        self._hooks: dict[str, Callable[[str | None], None]] = {}

    def hook(self, channel: str, callback: Callable[[str | None], None]) -> None:
        """Also LISTEN on `channel` (before the listener starts); see `_hooks`."""
        self._hooks[channel] = callback

    def start(self) -> None:
        """Start listening now (streams start it at their first subscriber)."""
        self._start()

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen(), name="stream-listener"),
                asyncio.create_task(self._announce_loop(), name="stream-announcer"),
            ]

    def stop_all(self) -> None:
        """Shutdown has begun: end every stream now, so the server need not wait for them.

        Their clients reconnect (EventSource does so by itself) to a replica
        that stays, and start again from the run's current state.
        """
        self.stopping = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.stop()

    async def close(self) -> None:
        if self._releases:  # slots of streams that just ended: give them back if we can
            await asyncio.wait(set(self._releases), timeout=RELEASE_WAIT_SECONDS)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def ready(self) -> None:
        """Wait until this process listens; DatabaseUnavailable (a 503) if it cannot."""
        self._start()
        try:
            async with asyncio.timeout(LISTEN_WAIT_SECONDS):
                await self._listening.wait()
        except TimeoutError:
            raise DatabaseUnavailable() from None

    async def admit(
        self,
        agent: Agent,
        authorization: str | None,
        task_id: uuid.UUID,
        settings: Settings,
    ) -> StreamGuard:
        """A slot for one more stream of the agent's, or RateLimited (429) when it holds
        `streams_per_agent` already, on this replica or any other."""
        heartbeat = settings.stream_heartbeat_seconds
        lease = 2 * heartbeat + 10  # two missed renewals, and a slow database, before it lapses
        async with db.connection(self.pool) as conn:
            slot = await stream_slots.claim(
                conn, agent.id, cap=settings.streams_per_agent, lease_seconds=lease
            )
        if slot is None:
            raise RateLimited(
                f"this agent already has {settings.streams_per_agent} live streams open, the "
                "most it may; close one, or ask the operator to raise PAO_STREAMS_PER_AGENT",
                retry_after=max(1, math.ceil(heartbeat)),
            )
        _, _, token = (authorization or "").partition(" ")  # signed in with it just now
        return StreamGuard(
            self,
            slot,
            agent_id=agent.id,
            token_hash=tokens.token_hash(token.strip()),
            task_id=task_id,
            as_admin=agent.is_admin,
            heartbeat=heartbeat,
            max_seconds=settings.stream_max_seconds,
        )

    def release(self, slot: stream_slots.Slot) -> None:
        """Give a slot back in a task of its own: the stream that held it may be being
        cancelled (its client left), and its cancelled scope would cancel the statement too."""
        task = asyncio.create_task(self._release(slot), name="stream-slot-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, slot: stream_slots.Slot) -> None:
        try:
            async with db.connection(self.pool) as conn:
                await stream_slots.release(conn, slot)
        except (DatabaseUnavailable, psycopg.Error) as exc:
            log.info("could not give back a stream slot (%s); its lease runs out by itself", exc)

    async def subscribe(self, task_id: uuid.UUID, run_id: uuid.UUID | None = None) -> Subscriber:
        """Listen for the task's (or one run's) events; workers hear of it before this returns."""
        self._start()
        sub = Subscriber(task_id, run_id)
        self._subscribers.setdefault(sub.task_id, set()).add(sub)
        metrics.STREAMS_OPEN.inc()
        try:
            async with asyncio.timeout(LISTEN_WAIT_SECONDS):
                await self._listening.wait()
            await self._announce([sub.task_id])
        except (TimeoutError, DatabaseUnavailable):
            self.unsubscribe(sub)
            raise DatabaseUnavailable() from None
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.task_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            metrics.STREAMS_OPEN.dec()
            if not subs:
                del self._subscribers[sub.task_id]

    def _dispatch(self, event: dict[str, Any]) -> None:
        for sub in self._subscribers.get(event["task"], ()):
            if sub.run_id is None or sub.run_id == event["run"]:
                sub.put(event)

    def _resync_all(self) -> None:
        for subs in self._subscribers.values():
            for sub in subs:
                sub.overflowed = True
                sub.put({"e": "resync"})

    async def _listen(self) -> None:
        if self.url is None:
            # Behind a transaction-mode pooler with no direct URL: no notifications, streams
            # read the database at each heartbeat instead.
            self._listening.set()
            return
        while True:
            try:
                conn = await db.listen_connection(self.url)
                async with conn:
                    await conn.execute(f"LISTEN {streams.EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {streams.WATCH_CHANNEL}")
                    for channel in self._hooks:
                        await conn.execute(f"LISTEN {channel}")
                    self._listening.set()
                    if self._down:
                        log.info("stream listener is back")
                        self._down = False
                    self._resync_all()  # whatever happened while not listening
                    self._asked.set()  # and workers may have forgotten what we watch
                    for callback in self._hooks.values():
                        callback(None)
                    async for note in conn.notifies():
                        if note.channel in self._hooks:
                            self._hooks[note.channel](note.payload)
                            continue
                        if note.channel == streams.WATCH_CHANNEL:
                            if note.payload == streams.ASK:
                                self._asked.set()
                            continue
                        for event in streams.parse(note.payload):
                            self._dispatch(event)
            except (psycopg.Error, OSError) as exc:
                if not self._down:
                    log.warning("stream listener lost the database (%s); reconnecting", exc)
                self._down = True
            self._listening.clear()
            await asyncio.sleep(1.0)

    async def _announce_loop(self) -> None:
        """Repeat what this process watches, so workers (even new ones) keep publishing it."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(streams.ANNOUNCE_SECONDS):
                    await self._asked.wait()
            self._asked.clear()
            if self._subscribers:
                with contextlib.suppress(DatabaseUnavailable, psycopg.Error):
                    await self._announce(list(self._subscribers))

    async def _announce(self, task_ids: list[str]) -> None:
        async with db.connection(self.pool) as conn:
            for payload in streams.announcements(uuid.UUID(t) for t in task_ids):
                await run_events.announce(conn, payload)


class StreamGuard:
    """One stream's standing: its agent's slot, when it must check the agent again, and when
    its lifetime ends."""

    def __init__(
        self,
        hub: StreamHub,
        slot: stream_slots.Slot,
        *,
        agent_id: uuid.UUID,
        token_hash: bytes,
        task_id: uuid.UUID,
        as_admin: bool,
        heartbeat: float,
        max_seconds: float,
    ) -> None:
        self.hub = hub
        self.slot: stream_slots.Slot | None = slot
        self.agent_id = agent_id
        self.token_hash = token_hash
        self.task_id = task_id
        self.as_admin = as_admin
        self.heartbeat = heartbeat
        self.lapsed = False  # the slot was lost: the client should reconnect
        now = time.monotonic()
        self.ends_at = now + max_seconds
        self.next_check = now + heartbeat

    def wait(self) -> float:
        """How long to wait for events before a heartbeat is due or the lifetime is over."""
        return max(0.0, min(self.heartbeat, self.ends_at - time.monotonic()))

    def expired(self) -> bool:
        return time.monotonic() >= self.ends_at

    async def still_allowed(self, *, now: bool = False) -> bool:
        """Whether the stream may go on: the agent checked (and the slot renewed) once a
        heartbeat has passed since the last check, or `now`."""
        if self.slot is None:
            return False
        if not now and time.monotonic() < self.next_check:
            return True
        async with db.connection(self.hub.pool) as conn:
            check = await stream_slots.renew(
                conn,
                self.slot,
                agent_id=self.agent_id,
                token_hash=self.token_hash,
                task_id=self.task_id,
                as_admin=self.as_admin,
            )
        self.next_check = time.monotonic() + self.heartbeat
        if not check.allowed:
            log.info("stream ended: its agent may no longer watch this task")
            return False
        if check.slot is None:
            # The lease lapsed and was taken (or the counters were lost in a crash): end, and
            # let the client reconnect under the limit rather than count twice.
            log.warning("stream ended: its slot's lease lapsed")
            self.slot = None
            self.lapsed = True
            return False
        self.slot = check.slot
        return True

    def release(self) -> None:
        if self.slot is not None:
            self.hub.release(self.slot)
            self.slot = None


@dataclass
class _Seen:
    """What one client has been sent about one run, so nothing is sent twice or backwards."""

    status: str
    attempt: int
    steps: dict[int, int] = field(default_factory=dict)  # index -> 0 started, 1 ended
    last_log: int = 0
    ended: bool = False


class Relay:
    """Turns run events and database reads into frames for one client."""

    def __init__(
        self,
        pool: AsyncConnectionPool[db.Conn],
        owner: uuid.UUID | None,
        sub: Subscriber,
        heartbeat: float,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.sub = sub
        self.heartbeat = heartbeat
        self.seen: dict[uuid.UUID, _Seen] = {}
        self._restarted: dict[uuid.UUID, int] = {}  # run starting over -> last log line sent

    # -- reading the database --------------------------------------------------------------

    async def read(
        self, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[Run, list[RunLogPublic]]]:
        """The runs, and their log lines not yet sent: two queries however many runs."""
        if not run_ids:
            return {}
        async with db.connection(self.pool) as conn:
            found = await run_store.get_runs(conn, run_ids, owner=self.owner)
            ids = [run.id for run in found]
            if not ids:
                return {}
            after = {run_id: self._last_log(run_id) for run_id in ids}
            lines = await run_store.list_logs_of_runs(
                conn, ids, after_id=min(after.values()), limit=LOG_PAGE
            )
            by_run: dict[uuid.UUID, list[RunLogPublic]] = {run_id: [] for run_id in ids}
            if len(lines) < LOG_PAGE:
                for line in lines:
                    by_run[line.run_id].append(RunLogPublic.of(line))
            else:  # much to catch up on: page through run by run
                for run_id in ids:
                    by_run[run_id] = await self._new_logs(conn, run_id, after[run_id])
        return {run.id: (run, by_run[run.id]) for run in found}

    def _last_log(self, run_id: uuid.UUID) -> int:
        seen = self.seen.get(run_id)
        return seen.last_log if seen else self._restarted.get(run_id, 0)

    async def _new_logs(self, conn: db.Conn, run_id: uuid.UUID, after: int) -> list[RunLogPublic]:
        found: list[RunLogPublic] = []
        while True:
            page = await run_store.list_run_logs(conn, run_id, after_id=after, limit=LOG_PAGE)
            found += [RunLogPublic.of(line) for line in page]
            if len(page) < LOG_PAGE:
                return found
            after = page[-1].id

    async def sync(self, run_ids: list[uuid.UUID]) -> list[str]:
        """Read the runs; frames for whatever the client has not seen of them, in that order."""
        fetched = await self.read(run_ids)
        out: list[str] = []
        for run_id in run_ids:
            if run_id in fetched:
                out += self.absorb(*fetched.pop(run_id))
        return out

    # -- turning what is known into frames -------------------------------------------------

    def absorb(self, run: Run, lines: list[RunLogPublic]) -> list[str]:
        """Frames for a run read from the database (the first sight sends it whole)."""
        seen = self.seen.get(run.id)
        out: list[str] = []
        if seen is None:
            seen = self.seen[run.id] = _Seen(run.status, run.attempt)
            seen.last_log = self._restarted.pop(run.id, 0)
            for index, record in enumerate(run.steps):
                seen.steps[index] = _step_rank(record)
            out.append(frame("run", RunPublic.of(run).model_dump(mode="json")))
            out += self._log_frames(run.id, seen, lines)
            seen.ended = run.status in streams.FINAL
            return out
        if seen.ended:
            return out
        for index, record in enumerate(run.steps):
            out += self._step(run.id, seen, index, record)
        out += self._log_frames(run.id, seen, lines)
        out += self._state(run.id, seen, run.status, run.attempt)
        if run.status in streams.FINAL:
            seen.ended = True
            out.append(frame("run", RunPublic.of(run).model_dump(mode="json")))
        return out

    def _state(self, run_id: uuid.UUID, seen: _Seen, status: str, attempt: int) -> list[str]:
        if _status_rank(status) <= _status_rank(seen.status):
            return []
        seen.status, seen.attempt = status, attempt
        return [frame("state", {"run_id": str(run_id), "status": status, "attempt": attempt})]

    def _step(
        self, run_id: uuid.UUID, seen: _Seen, index: int, record: Mapping[str, Any]
    ) -> list[str]:
        rank = _step_rank(record)
        if seen.steps.get(index, -1) >= rank:
            return []
        seen.steps[index] = rank
        return [frame("step", {"run_id": str(run_id), "index": index, "step": record})]

    def _log_frames(self, run_id: uuid.UUID, seen: _Seen, lines: list[RunLogPublic]) -> list[str]:
        out = []
        for line in lines:
            if line.id > seen.last_log:
                seen.last_log = line.id
                out.append(frame("log", {"run_id": str(run_id), **line.model_dump(mode="json")}))
        return out

    async def handle(self, events: list[dict[str, Any]]) -> list[str]:
        """Frames for a batch of notifications, in order; what needs the database (runs
        first seen, final states, log lines, catching up) is read in one go for the batch."""
        need: dict[uuid.UUID, None] = {}
        for event in events:
            run_id = uuid.UUID(event["run"])
            seen = self.seen.get(run_id)
            kind, status = event["e"], event.get("status")
            if seen is not None and kind == "state" and status == _QUEUED and not seen.ended:
                # Handed back at a worker's shutdown: the run starts over, maybe elsewhere
                # (its log lines so far stay, and are not sent again).
                self._restarted[run_id] = seen.last_log
                del self.seen[run_id]
                seen = None
            if seen is None or (
                not seen.ended and (kind in ("sync", "log", "snapshot") or status in streams.FINAL)
            ):
                need[run_id] = None
        fetched = await self.read(list(need))
        out: list[str] = []
        for event in events:
            run_id = uuid.UUID(event["run"])
            if run_id in fetched:
                out += self.absorb(*fetched.pop(run_id))
            seen = self.seen.get(run_id)
            if seen is None or seen.ended:
                continue
            kind = event["e"]
            if kind == "state" and event.get("status") not in streams.FINAL:
                out += self._state(run_id, seen, str(event["status"]), int(event.get("a", 0)))
            elif kind == "step" and isinstance(event.get("step"), dict):
                out += self._step(run_id, seen, int(event["i"]), event["step"])
            elif kind == "cost":
                out.append(
                    frame(
                        "cost",
                        {
                            "run_id": str(run_id),
                            "step_id": event.get("step"),
                            "cost": event.get("cost"),
                            "run_cost": event.get("total"),
                        },
                    )
                )
            elif kind == "snapshot":  # the worker's steps may be ahead of the database's
                out += self._state(run_id, seen, _RUNNING, int(event.get("a", 0)))
                for index, record in enumerate(event.get("steps") or []):
                    out += self._step(run_id, seen, index, record)
        return out

    def forget_ended(self) -> None:
        """A task stream lives long: drop what it remembers of runs that ended long ago."""
        if len(self.seen) > KEEP_ENDED:
            for run_id in [r for r, s in self.seen.items() if s.ended][: len(self.seen) // 2]:
                del self.seen[run_id]

    async def next_events(self, wait: float | None = None) -> list[dict[str, Any]] | None:
        """The events waiting (at least one), or None when a heartbeat is due first (or
        `wait` seconds have passed)."""
        try:
            async with asyncio.timeout(self.heartbeat if wait is None else wait):
                first = await self.sub.queue.get()
        except TimeoutError:
            return None
        events = [first]
        while not self.sub.queue.empty():
            events.append(self.sub.queue.get_nowait())
        return events


@dataclass(frozen=True)
class _Close:
    """The stream ends here, after `frame` (why, for the client) when there is one."""

    frame: str | None


async def _next_events(relay: Relay, guard: StreamGuard) -> list[dict[str, Any]] | _Close | None:
    """The next events (None: a heartbeat is due), or why the stream ends now: the server
    stops, its lifetime is over, or its agent may no longer watch (or lost its slot)."""
    events = await relay.next_events(guard.wait())
    if relay.sub.stopped:
        return _Close(None)
    if guard.expired():
        return _Close(LIFETIME_ENDED)
    if not await guard.still_allowed(now=events is None):
        return _Close(SLOT_LOST if guard.lapsed else None)
    return events


async def guarded(
    hub: StreamHub, guard: StreamGuard, frames: AsyncGenerator[str, None]
) -> AsyncIterator[str]:
    """`frames` (`run_stream`, `task_stream`), closed with the stream (so they unsubscribe),
    the stream's slot given back at the end, whatever ends it."""
    try:
        if hub.stopping:
            return
        async with contextlib.aclosing(frames):
            async for text in frames:
                yield text
    finally:
        guard.release()


async def run_stream(
    hub: StreamHub,
    pool: AsyncConnectionPool[db.Conn],
    *,
    owner: uuid.UUID | None,
    task_id: uuid.UUID,
    run_id: uuid.UUID,
    heartbeat: float,
    guard: StreamGuard,
) -> AsyncGenerator[str, None]:
    """One run's frames until it has ended (or its agent may no longer see it, or its
    lifetime is over); served through `guarded`."""
    logs.task_id.set(str(task_id))  # every line logged while streaming carries the ids
    logs.run_id.set(str(run_id))
    sub = await hub.subscribe(task_id, run_id)
    relay = Relay(pool, owner, sub, heartbeat)
    try:
        for text in await relay.sync([run_id]):  # read after subscribing: nothing falls between
            yield text
        if run_id not in relay.seen:
            return  # gone since the request was checked (pruned history)
        while not _ended(relay, run_id):
            events = await _next_events(relay, guard)
            if isinstance(events, _Close):
                if events.frame:
                    yield events.frame
                return
            if events is None:
                yield ": heartbeat\n\n"
                events = [{"e": "sync", "run": str(run_id)}]
            elif sub.overflowed or any("run" not in event for event in events):
                sub.overflowed = False  # missed something: read it all again
                events = [{"e": "sync", "run": str(run_id)}]
            for text in await relay.handle(events):
                yield text
    finally:
        hub.unsubscribe(sub)


async def task_stream(
    hub: StreamHub,
    pool: AsyncConnectionPool[db.Conn],
    *,
    owner: uuid.UUID | None,
    task_id: uuid.UUID,
    heartbeat: float,
    guard: StreamGuard,
) -> AsyncGenerator[str, None]:
    """Every run of the task, as it happens, until the client leaves (or its agent may no
    longer see the task, or its lifetime is over); served through `guarded`."""
    logs.task_id.set(str(task_id))
    sub = await hub.subscribe(task_id)
    relay = Relay(pool, owner, sub, heartbeat)
    try:
        yield ": connected\n\n"
        for text in await _recent(relay, task_id, first=True):
            yield text
        while True:
            events = await _next_events(relay, guard)
            if isinstance(events, _Close):
                if events.frame:
                    yield events.frame
                return
            if events is None or sub.overflowed:
                if events is None:
                    yield ": heartbeat\n\n"
                sub.overflowed = False
                for text in await _recent(relay, task_id, first=False):
                    yield text
                continue
            if any("run" not in event for event in events):  # the listener reconnected
                events = [event for event in events if "run" in event]
                for text in await _recent(relay, task_id, first=False):
                    yield text
            for text in await relay.handle(events):
                yield text
            relay.forget_ended()
    finally:
        hub.unsubscribe(sub)


async def _recent(relay: Relay, task_id: uuid.UUID, *, first: bool) -> list[str]:
    """The task's recent runs: those not ended (and, later, news of those being followed)."""
    async with db.connection(relay.pool) as conn:
        runs = await run_store.list_runs(
            conn, owner=relay.owner, limit=TASK_RECENT_RUNS, after=None, task_id=task_id
        )
    wanted: list[uuid.UUID] = []
    for run in reversed(runs):  # oldest first
        followed = run.id in relay.seen
        if (first or not followed) and run.status in streams.FINAL:
            continue
        if followed and relay.seen[run.id].ended:
            continue
        wanted.append(run.id)
    return await relay.sync(wanted)


def _ended(relay: Relay, run_id: uuid.UUID) -> bool:
    seen = relay.seen.get(run_id)
    return seen is not None and seen.ended


def _step_rank(record: Mapping[str, Any]) -> int:
    return 0 if record.get("status") == _STEP_RUNNING else 1


def _status_rank(status: str) -> int:
    return _STATUS_RANK.get(status, 2)
