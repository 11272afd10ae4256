"""Handing a claimed step back unfinished, without spending an attempt.

A claimer that stops (SIGTERM, a deploy) while it holds steps releases them rather than
letting their leases run out: the step is queued again at once for the next claimer, who
gets a new claim id, and the run waits no longer than that. The step's `deliveries` count
is left as it is by the release; the next claim counts one more, as every claim does, so
the released claim id answers 409 (claim lost) from then on, and before then too (its
lease is gone). The run's attempt is untouched: a release is not a failure.

It lives beside `pao.claims` (which holds the checks every claim call makes) and uses
those same checks, so a stale, foreign or forged claim id is refused exactly as a
heartbeat would refuse it: 409, 403, 404, and nothing changes.
"""

from __future__ import annotations

from pao.claims import _held
from pao.db import Conn
from pao.errors import ClaimLost
from pao.models import Agent
from pao.store import remote_steps as store


async def release(conn: Conn, agent: Agent, claim_id: str) -> None:
    """Queue the claim's step again for the next claimer; ClaimLost if the claim no
    longer holds it (nothing to hand back)."""
    held, parsed = await _held(conn, agent, claim_id)
    if not await store.release(conn, held.id, parsed.token_hash):
        raise ClaimLost("this claim no longer holds its step; nothing to hand back")
