"""A test-only MCP server: reports its pid, sleeps, fails, and can die on request.

Run over stdio, or with ``--http PORT`` as a streamable-HTTP server on
127.0.0.1:PORT/mcp.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from mcp.server.fastmcp import FastMCP

server = FastMCP("probe", log_level="WARNING")


@server.tool()
def whoami() -> dict[str, int | str | None]:
    """The server's pid (to tell a reused session from a new one), Python, cwd and PROBE_VALUE."""
    return {
        "pid": os.getpid(),
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "value": os.environ.get("PROBE_VALUE"),
    }


@server.tool()
def environment() -> dict[str, str]:
    """The server's whole environment, to check what pao hands a stdio server."""
    return dict(os.environ)


@server.tool()
async def slow(seconds: float) -> dict[str, float]:
    """Answer after `seconds`."""
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@server.tool()
def fail(message: str) -> str:
    """Always fails with `message`."""
    raise ValueError(message)


@server.tool()
def crash() -> str:
    """Exit the server process at once, mid-call."""
    print("probe: crashing on request", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool(structured_output=False)
def plain(text: str) -> str:
    """Return `text` as unstructured text content."""
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
    else:
        server.settings.port = args.http
        server.run("streamable-http")


if __name__ == "__main__":
    main()
