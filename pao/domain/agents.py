"""Agent administration and the admin-token bootstrap."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

from pao import pagination, tokens
from pao.db import Conn
from pao.errors import Conflict, InvalidInput, MissingScope, NotFound
from pao.models import SCOPES, Agent
from pao.store import agents, audit
from pao.store.agents import NewAgent
from pao.tools import ToolSpec
from pao.zones import get_zone


async def list_agents(
    conn: Conn, *, limit: int, cursor: str | None
) -> tuple[list[Agent], str | None]:
    """A page of agents, newest first, and the cursor of the next page; for admins."""
    rows = await agents.list_agents(conn, limit=limit + 1, after=pagination.decode_cursor(cursor))
    return pagination.page(rows, limit, lambda a: pagination.encode_cursor(a.created_at, a.id))


def check_scopes(scopes: list[str], loc: tuple[str | int, ...] = ("scopes",)) -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidInput.one(loc, f"unknown scopes {unknown}; choose from {list(SCOPES)}")
    return sorted(set(scopes))


def check_step_scopes(
    owner: Agent, step_id: str, spec: ToolSpec, args: Mapping[str, object], *, whose: str
) -> None:
    """Refuse a step its task's owner may not run: a step acts for its owner, so it may do
    only what the owner's own token could. `whose` names the owner in the message."""
    for scope, argument in spec.scopes_needed(args):
        if owner.has_scope(scope):
            continue
        what = spec.name if argument is None else f"'{argument}' of {spec.name}"
        raise MissingScope(
            f"step '{step_id}' uses {what}, which needs the '{scope}' scope, and {whose} "
            f"does not have it; ask an admin to grant '{scope}', or remove the step",
            scope=scope,
        )


async def create_agent(
    conn: Conn,
    *,
    actor: Agent | None,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    request_id: str | None = None,
) -> NewAgent:
    new = await agents.create_agent(
        conn, name=name, scopes=check_scopes(scopes), expires_at=expires_at
    )
    await audit.record(
        conn,
        actor_id=actor.id if actor else None,
        action="agent.create",
        target_type="agent",
        target_id=new.agent.id,
        request_id=request_id,
        detail={"scopes": new.agent.scopes},
    )
    return new


def _task_types(value: object) -> list[str] | None:
    """The task types an agent may claim, each a well-formed name, sorted; None: any."""
    if not isinstance(value, list):
        return None
    from pao.domain.task_types import check_name

    for index, name in enumerate(value):
        check_name(str(name), ("task_types", index))
    return sorted({str(name) for name in value})


async def ensure_admin_token(conn: Conn, token: str) -> bool:
    """Make sure an admin agent holds `token` (Kubernetes bootstrap); True if one was created."""
    if not tokens.is_well_formed(token):
        raise InvalidInput.one(
            ("PAO_ADMIN_TOKEN",),
            "is not a pao token; create one with `pao agents token` (pao_ + 38 characters)",
        )
    if await agents.token_exists(conn, token):
        return False
    new = await agents.create_agent(conn, name="admin", scopes=["admin"], token=token)
    await audit.record(
        conn,
        actor_id=None,
        action="agent.bootstrap",
        target_type="agent",
        target_id=new.agent.id,
        request_id=None,
    )
    return True


async def _keep_an_admin(conn: Conn) -> None:
    """Refuse (and so roll back) a change that leaves nobody able to administer."""
    if await agents.count_usable_admins(conn) == 0:
        raise Conflict("this would leave no usable admin agent; create another admin first")


async def get_agent(conn: Conn, agent_id: uuid.UUID) -> Agent:
    agent = await agents.get_agent(conn, agent_id)
    if agent is None:
        raise NotFound(f"no agent {agent_id}")
    return agent


async def update_agent(
    conn: Conn,
    *,
    actor: Agent,
    agent_id: uuid.UUID,
    fields: dict[str, object],
    request_id: str | None,
) -> Agent:
    scopes = fields.get("scopes")
    limits = {name: fields[name] for name in agents.LIMIT_FIELDS if name in fields}
    if isinstance(limits.get("timezone"), str):
        get_zone(str(limits["timezone"]))  # InvalidInput naming `timezone` if unknown
    updated = await agents.update_agent(
        conn,
        agent_id,
        name=fields.get("name"),  # type: ignore[arg-type]
        scopes=check_scopes(scopes) if isinstance(scopes, list) else None,
        disabled=fields.get("disabled"),  # type: ignore[arg-type]
        set_expires="expires_at" in fields,
        expires_at=fields.get("expires_at"),  # type: ignore[arg-type]
        set_task_types="task_types" in fields,
        task_types=_task_types(fields.get("task_types")),
        limits=limits,
    )
    if updated is None:
        raise NotFound(f"no agent {agent_id}")
    await _keep_an_admin(conn)
    await audit.record(
        conn,
        actor_id=actor.id,
        action="agent.update",
        target_type="agent",
        target_id=agent_id,
        request_id=request_id,
        detail={"fields": sorted(fields)},
    )
    return updated


async def delete_agent(
    conn: Conn, *, actor: Agent, agent_id: uuid.UUID, request_id: str | None
) -> None:
    if not await agents.delete_agent(conn, agent_id):
        raise NotFound(f"no agent {agent_id}")
    await _keep_an_admin(conn)
    await audit.record(
        conn,
        actor_id=actor.id,
        action="agent.delete",
        target_type="agent",
        target_id=agent_id,
        request_id=request_id,
    )
