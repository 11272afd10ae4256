"""The ceiling bench/assets.py compares pao's assets with: no database, no checks.

    .venv/bin/python -m bench.bare_files PORT

POST /upload reads the request body as it streams and drops it; GET /download/{name}
streams a file of the bench's directory from disk. Served as `pao api` serves its app
(api/main.py's uvicorn arguments): what is left is Starlette, uvicorn and the machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse

app = FastAPI()
FILES = Path(os.environ.get("BENCH_FILES", "/tmp"))


@app.post("/upload", status_code=201)
async def upload(request: Request) -> dict[str, int]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return {"size": size}


@app.get("/download/{name}")
async def download(name: str) -> FileResponse:
    return FileResponse(FILES / Path(name).name, media_type="application/octet-stream")


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
