"""What live run streams say, shared by the processes that publish and the API that relays.

Workers know a run's steps and log lines before anyone else, but publishing
every one at thousands of runs a second would cost the queue dearly. So the
API processes announce, on `pao_streams`, the tasks their clients watch (at
once when a stream opens, then every few seconds), and workers publish events
only for those tasks. Events travel on `pao_run_events` as small JSON
objects; anything bulky (outputs, log text) stays in the database and the
API reads it from there, so a lost or late notification costs only latency:
the API also re-reads the run at every heartbeat.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pao.vocabulary import FINAL_RUN_STATUSES

EVENTS_CHANNEL = "pao_run_events"
WATCH_CHANNEL = "pao_streams"
ASK = "?"
ANNOUNCE_SECONDS = 5.0
"""API processes repeat what they watch this often; workers forget what is not repeated."""
WATCH_TTL_SECONDS = 3 * ANNOUNCE_SECONDS
MAX_PAYLOAD = 7000  # one event; PostgreSQL refuses notifications of 8000 bytes or more
PACK_LIMIT = 7900
MAX_OUTPUT = 2000
FINAL: frozenset[str] = frozenset(FINAL_RUN_STATUSES)  # a member hashes as its text
_STEP_FIELDS = ("id", "uses", "status", "started_at", "duration_ms", "detail")


def _dump(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


def state(run_id: uuid.UUID, task_id: uuid.UUID, status: str, attempt: int) -> str:
    # Formatted, not dumped: sent for every run of a watched task, and nothing here needs
    # escaping (ids are UUIDs, statuses are fixed words, the attempt a number).
    return (
        f'{{"e":"state","run":"{run_id}","task":"{task_id}","status":"{status}","a":{attempt:d}}}'
    )


def compact_step(record: Mapping[str, Any]) -> dict[str, Any]:
    """A step record without its input; its output and error only when small."""
    step = {k: record[k] for k in _STEP_FIELDS if k in record}
    for name, limit in (("error", MAX_OUTPUT), ("output", MAX_OUTPUT)):
        if name in record:
            text = _dump({name: record[name]})
            if len(text) <= limit:
                step[name] = record[name]
            else:
                step[f"{name}_truncated"] = True
    return step


def step(run_id: uuid.UUID, task_id: uuid.UUID, index: int, record: Mapping[str, Any]) -> str:
    event = {"e": "step", "run": str(run_id), "task": str(task_id), "i": index}
    text = _dump({**event, "step": compact_step(record)})
    if len(text) > MAX_PAYLOAD:
        return sync(run_id, task_id)
    return text


def log(run_id: uuid.UUID, task_id: uuid.UUID, log_id: int) -> str:
    """A log line was stored: the API reads it (and any before it) from `run_logs`."""
    return f'{{"e":"log","run":"{run_id}","task":"{task_id}","id":{log_id:d}}}'


def cost(run_id: uuid.UUID, task_id: uuid.UUID, step_id: str, cost: Decimal, total: Decimal) -> str:
    """A step was charged `cost` (negative: a remote step cost less than declared); the run
    has been charged `total` in all. Amounts as decimal text, as the API shows them."""
    return _dump(
        {
            "e": "cost",
            "run": str(run_id),
            "task": str(task_id),
            "step": step_id,
            "cost": format(cost.normalize(), "f"),
            "total": format(total.normalize(), "f"),
        }
    )


def snapshot(
    run_id: uuid.UUID,
    task_id: uuid.UUID,
    status: str,
    attempt: int,
    steps: Sequence[Mapping[str, Any]],
) -> str:
    """Everything a worker knows of a held run, sent when a watch of its task begins."""
    event = {
        "e": "snapshot",
        "run": str(run_id),
        "task": str(task_id),
        "status": status,
        "a": attempt,
        "steps": [{k: s[k] for k in _STEP_FIELDS if k in s} for s in steps],
    }
    text = _dump(event)
    return text if len(text) <= MAX_PAYLOAD else sync(run_id, task_id)


def sync(run_id: uuid.UUID, task_id: uuid.UUID) -> str:
    """ "Read this run from the database": what a notification too big to send becomes."""
    return _dump({"e": "sync", "run": str(run_id), "task": str(task_id)})


def pack(events: list[str]) -> list[str]:
    """Events as few notifications as fit: one notification costs far more than its bytes."""
    payloads: list[str] = []
    current: list[str] = []
    size = 2
    for event in events:
        if current and size + len(event) + 1 > PACK_LIMIT:
            payloads.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(event)
        size += len(event) + 1
    if current:
        payloads.append("[" + ",".join(current) + "]")
    return payloads


def parse(payload: str) -> list[dict[str, Any]]:
    """The events of one notification (one event, or a packed list); malformed ones dropped."""
    try:
        value = json.loads(payload)
    except ValueError:
        return []
    found = []
    for event in value if isinstance(value, list) else [value]:
        try:
            uuid.UUID(event["run"])
            uuid.UUID(event["task"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(event.get("e"), str):
            found.append(event)
    return found


def announcements(task_ids: Iterable[uuid.UUID], per_message: int = 150) -> Iterator[str]:
    """Watched task ids as space-separated notification payloads small enough to send."""
    ids = sorted(str(t) for t in task_ids)
    for start in range(0, len(ids), per_message):
        yield " ".join(ids[start : start + per_message])


class Watched:
    """A worker's view of which tasks some stream watches, kept fresh by announcements."""

    def __init__(
        self, ttl: float = WATCH_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._until: dict[uuid.UUID, float] = {}

    def heard(self, payload: str) -> list[uuid.UUID]:
        """Note an announcement; returns the task ids that were not watched before."""
        now = self.clock()
        fresh: list[uuid.UUID] = []
        for part in payload.split():
            try:
                task_id = uuid.UUID(part)
            except ValueError:
                continue
            if task_id not in self._until or self._until[task_id] < now:
                fresh.append(task_id)
            self._until[task_id] = now + self.ttl
        return fresh

    def __contains__(self, task_id: object) -> bool:
        until = self._until.get(task_id)  # type: ignore[call-overload]
        if until is None:
            return False
        if until < self.clock():
            del self._until[task_id]  # type: ignore[arg-type]
            return False
        return True

    def __bool__(self) -> bool:
        return bool(self._until)
