"""The bare FastAPI endpoints bench/api_throughput.py compares pao's API with.

    .venv/bin/python -m bench.bare_app PORT

Served exactly as `pao api` serves its app (api/main.py's uvicorn.run
arguments): what is left is FastAPI, uvicorn and the machine.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
TASK = {"id": str(uuid.uuid4()), "title": "bare", "schedule_kind": "event", "status": "active"}


class Body(BaseModel):
    title: str
    schedule_kind: str
    schedule_expr: str
    payload: dict[str, Any]


@app.get("/tasks/{task_id}")
async def get_task(task_id: uuid.UUID) -> dict[str, Any]:
    return {**TASK, "id": str(task_id)}


@app.post("/tasks", status_code=201)
async def post_task(body: Body) -> dict[str, Any]:
    return {**TASK, **body.model_dump(), "id": str(uuid.uuid4())}


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
