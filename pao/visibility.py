"""Who may see what: an agent sees what it owns, an admin sees everything.

The one place that rule is written. Reads filter by `owner_filter` (None: no
filter); a row read without a filter is checked with `may_see`.
"""

from __future__ import annotations

import uuid

from pao.models import Agent


def owner_filter(agent: Agent) -> uuid.UUID | None:
    """Whose tasks, runs and events `agent` may see: None (everyone's) for an admin, else
    its own id."""
    return None if agent.is_admin else agent.id


def may_see(agent: Agent, owner: uuid.UUID) -> bool:
    """Whether `agent` may see what `owner` owns: a task, its runs and their logs."""
    seen = owner_filter(agent)
    return seen is None or seen == owner
