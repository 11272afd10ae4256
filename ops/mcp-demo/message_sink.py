"""A demo MCP server standing in for a chat service: `send_message` appends to a file.

Each message becomes one JSON line in the file named by ``PAO_DEMO_SINK``
(default ``message-sink.jsonl`` in the working directory), so a demo can show
what would have been sent. Run over stdio, or with ``--http PORT`` as a
streamable-HTTP server on 127.0.0.1:PORT/mcp.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
from datetime import UTC, datetime
from typing import TypedDict

from mcp.server.fastmcp import FastMCP

server = FastMCP("telegram-mcp", log_level="WARNING")


class Sent(TypedDict):
    message_id: int


@server.tool()
def send_message(chat_id: int, text: str) -> Sent:
    """Send `text` to the chat `chat_id`; returns the new message's id."""
    path = os.environ.get("PAO_DEMO_SINK") or "message-sink.jsonl"
    with open(path, "a+", encoding="utf-8") as sink:
        # Several processes may share the sink: number and append under one lock.
        fcntl.flock(sink, fcntl.LOCK_EX)
        sink.seek(0)
        message_id = sum(1 for _ in sink) + 1
        record = {
            "message_id": message_id,
            "chat_id": chat_id,
            "text": text,
            "sent_at": datetime.now(UTC).isoformat(),
        }
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Sent(message_id=message_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
    else:
        server.settings.port = args.http
        server.run("streamable-http")


if __name__ == "__main__":
    main()
