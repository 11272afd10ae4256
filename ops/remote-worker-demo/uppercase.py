"""A demo remote worker: does the steps of task type `demo.uppercase` by upper-casing text.

It shows what a service outside pao needs to take part in pipelines: declare its task
type once (with an admin token, only if it is missing), then claim steps, report progress
and complete them with `pao.client.RemoteWorker`. SIGTERM or Ctrl-C stops it cleanly:
it claims nothing more and hands back the steps it holds, so another worker takes them at
once.

    PAO_API_URL=http://127.0.0.1:8080 PAO_TOKEN=<work:claim token> \\
    PAO_ADMIN_TOKEN=<admin token, to register the type> python uppercase.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from pao.client import (
    ApiProblem,
    ApiUnreachable,
    PaoClient,
    PermanentError,
    RemoteWorker,
    StepContext,
    api_url_from_env,
)

TASK_TYPE = "demo.uppercase"
DEFINITION: dict[str, Any] = {
    "name": TASK_TYPE,
    "description": "Upper-case `text` (done by ops/remote-worker-demo/uppercase.py).",
    "parameters_schema": {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 100_000}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "output_schema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
    "lease_seconds": 30,
}
# 60 s: longer than the 20 s long poll the worker waits for work.
REQUEST_TIMEOUT = 60.0

log = logging.getLogger("uppercase")


async def register(base_url: str, admin_token: str) -> None:
    """Declare demo.uppercase unless it exists (an inactive one is left to the admin)."""
    async with PaoClient.connect(base_url, admin_token) as admin:
        try:
            found = await admin.get_task_type(TASK_TYPE)
        except ApiProblem as problem:
            if problem.status != 404:
                raise
            await admin.create_task_type(DEFINITION)
            log.info("registered task type %s", TASK_TYPE)
            return
        state = "" if found["is_active"] else " but is inactive (PUT it with is_active true)"
        log.info("task type %s exists%s", TASK_TYPE, state)


def make_handler(delay: float) -> Any:
    async def uppercase(ctx: StepContext) -> dict[str, Any]:
        text = ctx.parameters.get("text")
        if not isinstance(text, str):
            raise PermanentError("parameters.text must be a string")  # retrying cannot help
        ctx.progress(f"upper-casing {len(text)} characters", 0)
        await asyncio.sleep(delay)  # stands in for real work; cancelled if the claim is lost
        ctx.progress("done", 100)
        log.info("completed step %s of run %s", ctx.step_id, ctx.run_id)
        return {"text": text.upper()}

    return uppercase


async def main(args: argparse.Namespace) -> int:
    base_url = args.api_url or api_url_from_env()
    token = os.environ.get("PAO_TOKEN")
    if not token:
        log.error("set PAO_TOKEN to a token with the work:claim scope")
        return 2
    admin_token = os.environ.get("PAO_ADMIN_TOKEN")
    if admin_token:
        await register(base_url, admin_token)
    else:
        log.info("no PAO_ADMIN_TOKEN: assuming task type %s exists", TASK_TYPE)
    async with PaoClient.connect(base_url, token, request_timeout=REQUEST_TIMEOUT) as client:
        worker = RemoteWorker(
            client,
            TASK_TYPE,
            make_handler(args.delay),
            concurrency=args.concurrency,
            wait_seconds=20,
            grace_seconds=args.grace,
        )
        log.info("claiming steps of %s at %s", TASK_TYPE, base_url)
        await worker.run(handle_signals=True)
        s = worker.stats
        log.info(
            "stopped: %d completed, %d failed, %d handed back, %d lost",
            s.completed,
            s.failed,
            s.released,
            s.lost,
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", help="default: PAO_API_URL or http://127.0.0.1:8080")
    parser.add_argument("--concurrency", type=int, default=4, help="steps at once (4)")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds of 'work' a step")
    parser.add_argument(
        "--grace", type=float, default=2.0, help="seconds to finish steps on SIGTERM (2)"
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        sys.exit(asyncio.run(main(parser.parse_args())))
    except (ApiProblem, ApiUnreachable) as exc:
        log.error("%s", exc)
        sys.exit(1)
