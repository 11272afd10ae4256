"""Agents and their tokens; admin only."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response

from api.deps import Admin, PageQuery, RunsRead, State, request_id
from api.models import AgentCreated, AgentPublic, Page, UsagePublic
from api.openapi import conflicts
from pao.domain import agents as logic
from pao.domain import budgets
from pao.schemas import AgentCreate, AgentUpdate

router = APIRouter(prefix="/agents", tags=["agents"])


@router.post("", status_code=201, response_model=AgentCreated)
async def create_agent(
    request: Request, state: State, admin: Admin, body: AgentCreate
) -> AgentCreated:
    """Create an agent. Its token is in this response only: store it now."""
    async with state.tx() as conn:
        new = await logic.create_agent(
            conn,
            actor=admin,
            name=body.name,
            scopes=list(body.scopes),
            expires_at=body.expires_at,
            request_id=request_id(request),
        )
    return AgentCreated(**AgentPublic.of(new.agent).model_dump(), token=new.token)


@router.get("", response_model=Page[AgentPublic])
async def list_agents(
    state: State,
    admin: Admin,
    page: PageQuery,
) -> Page[AgentPublic]:
    """Agents, newest first."""
    async with state.tx() as conn:
        items, next_cursor = await logic.list_agents(conn, limit=page.limit, cursor=page.cursor)
    return Page(items=[AgentPublic.of(a) for a in items], next_cursor=next_cursor)


@router.get("/{agent_id}", response_model=AgentPublic)
async def get_agent(state: State, admin: Admin, agent_id: uuid.UUID) -> AgentPublic:
    """One agent (never its token)."""
    async with state.tx() as conn:
        return AgentPublic.of(await logic.get_agent(conn, agent_id))


@router.put("/{agent_id}", response_model=AgentPublic, responses=conflicts(409))
async def update_agent(
    request: Request, state: State, admin: Admin, agent_id: uuid.UUID, body: AgentUpdate
) -> AgentPublic:
    """Change an agent's name, scopes, expiry, claimable task types, budgets
    (`budget_per_day`, `budget_per_month`: what its runs may be charged per day and month of
    its `timezone`; null removes one), `max_runs_per_hour`, or disable it. A raised budget
    lets work flow again at once."""
    fields = body.changes()
    async with state.tx() as conn:
        agent = await logic.update_agent(
            conn, actor=admin, agent_id=agent_id, fields=fields, request_id=request_id(request)
        )
    return AgentPublic.of(agent)


@router.delete("/{agent_id}", status_code=204, responses=conflicts(409))
async def delete_agent(
    request: Request, state: State, admin: Admin, agent_id: uuid.UUID
) -> Response:
    """Revoke an agent for good: its token stops working at once."""
    async with state.tx() as conn:
        await logic.delete_agent(
            conn, actor=admin, agent_id=agent_id, request_id=request_id(request)
        )
    return Response(status_code=204)


@router.get("/me/usage", response_model=UsagePublic)
async def my_usage(state: State, agent: RunsRead) -> UsagePublic:
    """The calling agent's own usage: `GET /agents/{id}/usage` with its own id."""
    return await usage(state, agent, agent.id)


@router.get("/{agent_id}/usage", response_model=UsagePublic)
async def usage(state: State, agent: RunsRead, agent_id: uuid.UUID) -> UsagePublic:
    """An agent's runs and cost today and this month (in its zone), its budgets and what
    remains of them, its runs this hour against max_runs_per_hour, and the asset bytes it
    keeps (`asset_bytes`, against `asset_quota_bytes`; each window's `asset_bytes_added`
    counts those of its kept assets created in the window). For the agent itself
    (scope runs:read) or an admin; another agent's answers 404."""
    zone, quota = state.settings.default_timezone, state.settings.asset_quota_bytes
    async with state.tx() as conn:
        now = await state.clock.now(conn)
        found = await budgets.usage(conn, agent, agent_id, now=now, default_timezone=zone)
    return UsagePublic.of(found, asset_quota_bytes=quota)
