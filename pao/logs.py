"""Process logs: the human format for a terminal, or one JSON object per line for collectors.

The ids a line is about (`request_id`, `task_id`, `run_id`) live in context
variables: the API middleware sets the request's, the worker sets a run's
around it. asyncio copies the context into each task, so a value set in a
run's task never leaks into another run's lines.
"""

from __future__ import annotations

import json
import logging
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Ids as they come (a UUID is turned into text only if a line is written): the worker sets
# the task's and the run's for every run, and most runs log nothing.
Id = str | uuid.UUID | None
request_id: ContextVar[Id] = ContextVar("request_id", default=None)
task_id: ContextVar[Id] = ContextVar("task_id", default=None)
run_id: ContextVar[Id] = ContextVar("run_id", default=None)

_IDS: tuple[tuple[str, ContextVar[Id]], ...] = (
    ("request_id", request_id),
    ("task_id", task_id),
    ("run_id", run_id),
)

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, and the ids known."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in _IDS:
            # `extra={"run_id": ...}` on the call wins over the context.
            value = getattr(record, name, None) or var.get()
            if value:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, fmt: str) -> None:
    """Send every logger's records to stderr in `fmt` ("text" or "json") from `level` up."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if level.upper() in logging.getLevelNamesMapping() else "INFO")
