"""Every runtime SQL statement, by name, loaded once from the `.sql` files here.

Each file holds the statements about one table. A statement starts with a
`-- name: <entity>_<action>` line, then one comment line saying what it does,
then the SQL up to the next name line. Parameters are `%(name)s` placeholders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from typing import LiteralString, cast

_NAME = re.compile(r"^-- name: ([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


class _Queries(Mapping[str, LiteralString]):
    def __init__(self) -> None:
        self._queries: dict[str, LiteralString] = {}
        for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".sql"):
                self._load(entry.name, entry.read_text(encoding="utf-8"))

    def _load(self, filename: str, text: str) -> None:
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in self._queries:
                raise RuntimeError(f"query {name!r} is defined twice (again in {filename})")
            sql = body.strip()
            if not sql:
                raise RuntimeError(f"query {name!r} in {filename} is empty")
            # Loaded from our own package files, never from input: safe as a literal.
            self._queries[name] = cast(LiteralString, sql)

    def __getitem__(self, name: str) -> LiteralString:
        return self._queries[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


QUERIES: Mapping[str, LiteralString] = _Queries()
