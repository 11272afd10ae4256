"""A test-only MCP server: reports its pid, sleeps, fails, can die on request, and trades
files with pao (reads the assets it is given, returns an image, audio and a resource).

Run over stdio, or with ``--http PORT`` as a streamable-HTTP server on
127.0.0.1:PORT/mcp.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import sys
from typing import Annotated, Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.types import (
    AudioContent,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
)
from pydantic import Field

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


# A PNG's signature and header: what pao sniffs as image/png.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))

AssetId = Annotated[str, Field(json_schema_extra={"format": "asset", "contentMediaType": "text/*"})]


@server.tool()
def describe(file: AssetId, ctx: Context[Any, Any, Any]) -> dict[str, Any]:
    """What pao sent of the asset `file`: its id, and the content's size and SHA-256 as they
    arrived in the call's `_meta` (None when pao sent none)."""
    meta = ctx.request_context.meta
    sent = (meta.model_dump() if meta else {}).get("pao/assets", {}).get(file)
    if sent is None:
        return {"file": file, "received": None}
    data = base64.b64decode(sent["data"])
    return {
        "file": file,
        "received": {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "media_type": sent["media_type"],
            "first_line": data.split(b"\n", 1)[0].decode(errors="replace"),
        },
    }


@server.tool(structured_output=False)
def draw(caption: str) -> list[Any]:
    """A caption, a PNG image, a bit of audio and a text resource."""
    return [
        TextContent(type="text", text=caption),
        ImageContent(type="image", data=base64.b64encode(PNG).decode(), mimeType="image/png"),
        AudioContent(
            type="audio", data=base64.b64encode(b"ID3" + bytes(40)).decode(), mimeType="audio/mpeg"
        ),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="file:///work/notes.txt", mimeType="text/plain", text=f"notes: {caption}"
            ),
        ),
    ]


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
