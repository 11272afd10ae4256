"""Health endpoints for probes and people; no token needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import State
from pao.errors import PaoError
from pao.migrate import ensure_migrated
from pao.store import heartbeats, runs
from pao.vocabulary import ProcessKind

router = APIRouter(prefix="/health", tags=["health"])

# A heartbeat older than this means the process is gone (they beat every few seconds).
STALE_AFTER_SECONDS = 30.0


@router.get("/live")
async def live() -> dict[str, str]:
    """The process answers. Never touches the database."""
    return {"status": "ok"}


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The database is unreachable or not migrated",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"status": {"type": "string"}, "detail": {"type": "string"}},
                    "required": ["status"],
                }
            }
        },
    }
}
_UNHEALTHY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The database is down, or a scheduler or worker has no fresh heartbeat",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"status": {"type": "string"}},
                    "required": ["status"],
                }
            }
        },
    }
}


@router.get("/ready", responses=_NOT_READY)
async def ready(state: State) -> JSONResponse:
    """200 when the database is reachable and migrated, else 503."""
    try:
        async with state.tx() as conn:
            await ensure_migrated(conn)
    except PaoError as exc:
        return JSONResponse({"status": "unavailable", "detail": exc.message}, status_code=503)
    return JSONResponse({"status": "ready"})


def _component(beats: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    mine = [b for b in beats if b["kind"] == kind]
    fresh = [b for b in mine if b["age_seconds"] <= STALE_AFTER_SECONDS]
    status = "ok" if fresh else ("stale" if mine else "missing")
    return {
        "status": status,
        "processes": len(fresh),
        "last_seen_seconds_ago": round(min(b["age_seconds"] for b in mine), 3) if mine else None,
    }


@router.get("", responses=_UNHEALTHY)
async def health(state: State) -> JSONResponse:
    """Database, scheduler and worker heartbeats and queue depth; 503 unless all are well."""
    try:
        async with state.tx() as conn:
            await ensure_migrated(conn)
            beats = await heartbeats.list_heartbeats(conn)
            queued, due = await runs.queue_depth(conn)
    except PaoError as exc:
        body = {"status": "unavailable", "database": {"status": "down", "detail": exc.message}}
        return JSONResponse(body, status_code=503)
    scheduler = _component(beats, ProcessKind.SCHEDULER)
    worker = _component(beats, ProcessKind.WORKER)
    healthy = scheduler["status"] == "ok" and worker["status"] == "ok"
    body = {
        "status": "ok" if healthy else "degraded",
        "database": {"status": "ok"},
        "scheduler": scheduler,
        "worker": worker,
        "queue": {"queued": queued, "due": due},
    }
    return JSONResponse(body, status_code=200 if healthy else 503)
