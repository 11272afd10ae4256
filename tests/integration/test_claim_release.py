"""Handing a claim back: POST /claims/{id}/release queues the step again at once, spends no
attempt, and fences the released claim id; a stale, foreign or forged id changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.helpers import auth, snapshot
from tests.integration.test_claims import claim, offer, queued_run


@pytest.fixture
def run_id(client: TestClient, admin_token: str, writer_token: str) -> str:
    """A queued run of a task whose step uses media.transcode (a lease no test outlives)."""
    return queued_run(client, admin_token, writer_token, lease_seconds=300)


@pytest.fixture
def worker_token(make_token: Callable[..., str]) -> str:
    return make_token("work:claim", name="encoder")


def _state(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT s.state, s.deliveries, s.lease_expires_at IS NULL, r.attempt, r.status "
        "FROM remote_steps s JOIN runs r ON r.id = s.run_id"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_release_then_claim_again(
    client: TestClient, db_url: str, db: psycopg.Connection[Any], run_id: str, worker_token: str
) -> None:
    offer(db_url, run_id)
    [first] = claim(client, worker_token)
    _, _, _, attempt, status = _state(db)

    resp = client.post(f"/claims/{first['claim_id']}/release", headers=auth(worker_token))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"claim_id": first["claim_id"], "state": "queued"}
    # Queued again, its delivery count as it was, no attempt spent.
    assert _state(db) == ("queued", 1, True, attempt, status)

    # The released id is lost at once, before anyone claims the step again.
    lost = client.post(f"/claims/{first['claim_id']}/heartbeat", headers=auth(worker_token))
    assert lost.status_code == 409, lost.text

    [second] = claim(client, worker_token)  # no lease to wait out
    assert second["step_id"] == first["step_id"]
    assert second["idempotency_key"] == first["idempotency_key"]
    assert second["claim_id"] != first["claim_id"]
    assert second["claim_id"].split("_")[2] == "2"
    assert _state(db)[:2] == ("claimed", 2)

    for action in ("heartbeat", "release", "complete"):
        body = {"output": {"ok": True}} if action == "complete" else None
        stale = client.post(
            f"/claims/{first['claim_id']}/{action}", json=body, headers=auth(worker_token)
        )
        assert stale.status_code == 409, stale.text
    done = client.post(
        f"/claims/{second['claim_id']}/complete",
        json={"output": {"url": "https://example.com/a.webm"}},
        headers=auth(worker_token),
    )
    assert done.status_code == 200, done.text


def test_release_wakes_a_waiting_claimer(
    client: TestClient, db_url: str, db: psycopg.Connection[Any], run_id: str, worker_token: str
) -> None:
    offer(db_url, run_id)
    [first] = claim(client, worker_token)
    assert client.post(f"/claims/{first['claim_id']}/release", headers=auth(worker_token))
    [again] = claim(client, worker_token, wait=5)
    assert again["step_id"] == first["step_id"]


def test_bad_releases_change_nothing(
    client: TestClient,
    db_url: str,
    db: psycopg.Connection[Any],
    run_id: str,
    worker_token: str,
    make_token: Callable[..., str],
) -> None:
    offer(db_url, run_id)
    [item] = claim(client, worker_token)
    cid = item["claim_id"]
    _, sid, delivery, secret = cid.split("_")
    other = make_token("work:claim", name="other")
    reader = make_token("tasks:read", name="reader")
    before = snapshot(db)
    cases = [
        (f"rc_{sid}_{delivery}_{'0' * 32}", worker_token, 404),  # forged secret
        (f"rc_{sid}_{int(delivery) + 1}_{secret}", worker_token, 404),  # a future delivery
        (f"rc_{int(sid) + 1000}_{delivery}_{secret}", worker_token, 404),  # no such step
        ("rc_1_1_nothex", worker_token, 404),
        ("x" * 201, worker_token, 422),
        (cid, other, 403),  # another agent's claim
        (cid, reader, 403),  # no work:claim scope
    ]
    for claim_id, token, status in cases:
        resp = client.post(f"/claims/{claim_id}/release", headers=auth(token))
        assert resp.status_code == status, (claim_id, resp.text)
    assert client.post(f"/claims/{cid}/release").status_code == 401
    assert snapshot(db) == before

    # A claim that ended cannot be handed back either.
    done = client.post(
        f"/claims/{cid}/fail", json={"error": "broken input"}, headers=auth(worker_token)
    )
    assert done.status_code == 200, done.text
    before = snapshot(db)
    resp = client.post(f"/claims/{cid}/release", headers=auth(worker_token))
    assert resp.status_code == 409, resp.text
    assert snapshot(db) == before
