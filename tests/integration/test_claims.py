"""The claim protocol over real PostgreSQL: claim, heartbeat, progress, complete, fail."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.db import connect
from pao.domain import claims
from pao.store import remote_steps
from tests.helpers import auth, claims_waiting, snapshot, until
from tests.integration.test_task_types import TRANSCODE, create_type, transcode_task

PARAMS = {"url": "https://example.com/a.mp4", "width": 640}


def leases_ran_out(db: psycopg.Connection[Any]) -> None:
    """Wait until every claimed step's lease has run out by the database's clock."""
    until(
        lambda: (
            db.execute(
                "SELECT coalesce(bool_and(lease_expires_at < now()), true) FROM remote_steps"
            ).fetchone()
            == (True,)
        ),
        "the claimed steps' leases to run out",
    )


def offer(db_url: str, run_id: str, *step_ids: str, params: dict[str, Any] = PARAMS) -> list[int]:
    """Offer steps of a run as the worker will, each in a committed transaction."""

    async def go() -> list[int]:
        conn = await connect(db_url)
        try:
            ids = []
            for index, step_id in enumerate(step_ids or ("encode",)):
                async with conn.transaction():
                    found = await claims.offer_step(
                        conn,
                        run_id=uuid.UUID(run_id),
                        step_index=index,
                        step_id=step_id,
                        task_type="media.transcode",
                        parameters=params,
                    )
                assert found is not None
                ids.append(found)
            return ids
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def run_id(client: TestClient, admin_token: str, writer_token: str) -> str:
    """A queued run of a task whose step uses media.transcode (lease 1 s)."""
    return queued_run(client, admin_token, writer_token, lease_seconds=1)


def queued_run(
    client: TestClient, admin_token: str, writer_token: str, *, lease_seconds: int
) -> str:
    """A queued run of a task whose step uses media.transcode, declared with this lease."""
    create_type(client, admin_token, lease_seconds=lease_seconds)
    task = client.post("/tasks", json=transcode_task(), headers=auth(writer_token))
    assert task.status_code == 201, task.text
    run = client.post(f"/tasks/{task.json()['id']}/run_now", headers=auth(writer_token))
    assert run.status_code == 202, run.text
    return str(run.json()["id"])


@pytest.fixture
def worker_token(make_token: Callable[..., str]) -> str:
    return make_token("work:claim", name="encoder")


def claim(client: TestClient, token: str, limit: int = 1, wait: float = 0) -> list[dict[str, Any]]:
    resp = client.post(
        "/task-types/media.transcode/claim",
        json={"limit": limit, "wait_seconds": wait},
        headers=auth(token),
    )
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def step_row(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT state, output, cost, error, retryable, deliveries FROM remote_steps"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_claim_heartbeat_progress_complete(
    client: TestClient, db_url: str, db: psycopg.Connection[Any], run_id: str, worker_token: str
) -> None:
    assert claim(client, worker_token) == []
    offer(db_url, run_id)
    [item] = claim(client, worker_token, limit=5)
    assert item["run_id"] == run_id
    assert item["step_id"] == "encode"
    assert item["attempt"] == 1
    assert item["parameters"] == PARAMS
    assert item["idempotency_key"] == f"{run_id}:encode"
    assert set(item) == {
        "claim_id",
        "run_id",
        "task_id",
        "step_id",
        "attempt",
        "parameters",
        "idempotency_key",
        "lease_expires_at",
    }
    assert claim(client, worker_token) == []  # held
    cid = item["claim_id"]
    assert db.execute("SELECT claim_token_hash FROM remote_steps").fetchone() != (cid.encode(),)

    # The database's clock has moved on since the claim, so a renewed lease ends later.
    until(
        lambda: (
            db.execute(
                "SELECT now() > lease_expires_at - make_interval(secs => t.lease_seconds) "
                "FROM remote_steps s JOIN task_types t ON t.name = s.task_type"
            ).fetchone()
            == (True,)
        ),
        "the database's clock to pass the claim's start",
    )
    beat = client.post(f"/claims/{cid}/heartbeat", headers=auth(worker_token))
    assert beat.status_code == 200, beat.text
    assert beat.json()["lease_expires_at"] > item["lease_expires_at"]

    prog = client.post(
        f"/claims/{cid}/progress",
        json={"message": "encoding", "percent": 40},
        headers=auth(worker_token),
    )
    assert prog.status_code == 200, prog.text
    logs = db.execute("SELECT step_id, message FROM run_logs WHERE run_id = %s", (run_id,))
    assert logs.fetchall() == [("encode", "40% encoding")]

    done = client.post(
        f"/claims/{cid}/complete",
        json={"output": {"url": "https://cdn/a.webm"}, "cost": 0.1},
        headers=auth(worker_token),
    )
    assert done.status_code == 200, done.text
    assert step_row(db) == (
        "succeeded",
        {"url": "https://cdn/a.webm"},
        Decimal("0.1"),
        None,
        None,
        1,
    )
    before = snapshot(db)
    for action, body in (
        ("complete", {"output": {"url": "x"}}),
        ("fail", {"error": "late"}),
        ("heartbeat", None),
        ("progress", {"message": "late"}),
    ):
        again = client.post(f"/claims/{cid}/{action}", json=body, headers=auth(worker_token))
        assert again.status_code == 409, (action, again.text)
        assert again.json()["type"] == "urn:pao:problem:claim-lost"
    assert snapshot(db) == before


def test_fail_is_recorded(
    client: TestClient, db_url: str, db: psycopg.Connection[Any], run_id: str, worker_token: str
) -> None:
    offer(db_url, run_id)
    [item] = claim(client, worker_token)
    resp = client.post(
        f"/claims/{item['claim_id']}/fail",
        json={"error": "codec missing", "retryable": True},
        headers=auth(worker_token),
    )
    assert resp.status_code == 200, resp.text
    assert step_row(db) == ("failed", None, None, "codec missing", True, 1)


def test_long_poll_wakes_on_offer_and_ends_empty(
    client: TestClient, db_url: str, run_id: str, worker_token: str
) -> None:
    started = time.monotonic()
    assert claim(client, worker_token, wait=0.5) == []
    assert time.monotonic() - started >= 0.5

    got: list[Any] = []
    answered: list[float] = []

    def poll() -> None:
        got.extend(claim(client, worker_token, wait=20))
        answered.append(time.monotonic())

    waiter = threading.Thread(target=poll)
    waiter.start()
    claims_waiting(lambda: client.get("/metrics").text)
    offered = time.monotonic()
    offer(db_url, run_id)
    waiter.join(10)
    assert len(got) == 1
    latency = answered[0] - offered
    print(f"long poll answered {latency * 1000:.0f} ms after the offer")
    assert latency < 1.0


def test_concurrent_claimers_never_share_a_step(
    client: TestClient, db_url: str, run_id: str, worker_token: str, app: Any
) -> None:
    offer(db_url, run_id, *[f"s{i}" for i in range(30)])
    seen: list[list[str]] = [[], []]

    def drain(slot: int) -> None:
        while items := claim(client, worker_token, limit=2):
            seen[slot].extend(i["step_id"] for i in items)

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"s{i}" for i in range(30))


def test_two_open_transactions_claim_different_steps(db_url: str, run_id: str) -> None:
    offer(db_url, run_id, "a", "b")

    async def go() -> tuple[list[str], list[str]]:
        one, two = await connect(db_url), await connect(db_url)
        try:
            agent = uuid.uuid4()
            async with one.transaction(), two.transaction():
                first, _ = await remote_steps.claim(
                    one, task_type="media.transcode", agent_id=agent, token_hashes=[b"1" * 32]
                )
                second, _ = await remote_steps.claim(
                    two, task_type="media.transcode", agent_id=agent, token_hashes=[b"2" * 32]
                )
                third, _ = await remote_steps.claim(
                    two, task_type="media.transcode", agent_id=agent, token_hashes=[b"3" * 32]
                )
            return [c.step_id for c in first], [c.step_id for c in second + third]
        finally:
            await one.close()
            await two.close()

    first, second = asyncio.run(go())
    assert first == ["a"]
    assert second == ["b"]


def test_expired_lease_is_offered_again_and_fences_the_old_claim(
    client: TestClient, db_url: str, db: psycopg.Connection[Any], run_id: str, worker_token: str
) -> None:
    offer(db_url, run_id)
    [old] = claim(client, worker_token)
    leases_ran_out(db)  # lease_seconds is 1
    before = snapshot(db)
    lost = client.post(f"/claims/{old['claim_id']}/heartbeat", headers=auth(worker_token))
    assert lost.status_code == 409
    assert "lease ran out" in lost.json()["detail"]
    assert snapshot(db) == before

    # Re-offered to the next claim, with a new claim id; a waiting claim takes it too.
    [new] = claim(client, worker_token, wait=5)
    assert new["claim_id"] != old["claim_id"]
    assert new["step_id"] == old["step_id"]
    assert new["idempotency_key"] == old["idempotency_key"]
    before = snapshot(db)
    for action, body in (
        ("heartbeat", None),
        ("complete", {"output": {"url": "x"}}),
        ("fail", {"error": "x"}),
        ("progress", {"message": "x"}),
    ):
        resp = client.post(
            f"/claims/{old['claim_id']}/{action}", json=body, headers=auth(worker_token)
        )
        assert resp.status_code == 409, (action, resp.text)
        assert "taken over" in resp.json()["detail"]
    assert snapshot(db) == before
    ok = client.post(
        f"/claims/{new['claim_id']}/complete",
        json={"output": {"url": "y"}},
        headers=auth(worker_token),
    )
    assert ok.status_code == 200
    assert step_row(db)[0] == "succeeded"
    assert step_row(db)[5] == 2


def test_a_long_poll_takes_a_step_whose_lease_runs_out(
    client: TestClient, db_url: str, run_id: str, worker_token: str
) -> None:
    offer(db_url, run_id)
    [old] = claim(client, worker_token)
    started = time.monotonic()
    [new] = claim(client, worker_token, wait=10)
    assert new["step_id"] == old["step_id"]
    assert time.monotonic() - started < 3


def test_output_breaking_its_schema_changes_nothing(
    client: TestClient, db_url: str, db: psycopg.Connection[Any], run_id: str, worker_token: str
) -> None:
    offer(db_url, run_id)
    [item] = claim(client, worker_token)
    before = snapshot(db)
    resp = client.post(
        f"/claims/{item['claim_id']}/complete",
        json={"output": {"url": 5}},
        headers=auth(worker_token),
    )
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json()["errors"]] == ["output.url"]
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "cost", ["-1", "NaN", "Infinity", "1e12", '"5"', "true", "1e400", "[1]", "{}"]
)
def test_bad_costs_change_nothing(
    client: TestClient,
    db_url: str,
    db: psycopg.Connection[Any],
    run_id: str,
    worker_token: str,
    cost: str,
) -> None:
    offer(db_url, run_id)
    [item] = claim(client, worker_token)
    before = snapshot(db)
    resp = client.post(
        f"/claims/{item['claim_id']}/complete",
        content='{"output": {"url": "u"}, "cost": ' + cost + "}",
        headers={**auth(worker_token), "Content-Type": "application/json"},
    )
    assert resp.status_code in (400, 422), resp.text
    assert snapshot(db) == before


def test_who_may_claim(
    client: TestClient,
    admin_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    run_id: str,
    worker_token: str,
    writer_token: str,
    make_token: Callable[..., str],
) -> None:
    offer(db_url, run_id)
    # No work:claim scope.
    resp = client.post("/task-types/media.transcode/claim", json={}, headers=auth(writer_token))
    assert resp.status_code == 403
    # An agent limited to other task types.
    limited = make_token("work:claim", name="limited")
    agents = client.get("/agents", headers=auth(admin_token)).json()["items"]
    limited_id = next(a["id"] for a in agents if a["name"] == "limited")
    put = client.put(
        f"/agents/{limited_id}", json={"task_types": ["gpu.render"]}, headers=auth(admin_token)
    )
    assert put.status_code == 200
    before = snapshot(db)
    resp = client.post("/task-types/media.transcode/claim", json={}, headers=auth(limited))
    assert resp.status_code == 403
    assert "gpu.render" in resp.json()["detail"]
    assert snapshot(db) == before
    # An unknown or inactive type.
    assert (
        client.post("/task-types/nope/claim", json={}, headers=auth(worker_token)).status_code
        == 404
    )

    # Another agent's claim id.
    [item] = claim(client, worker_token)
    other = make_token("work:claim", name="other")
    before = snapshot(db)
    for action, body in (("heartbeat", None), ("complete", {"output": {"url": "u"}})):
        resp = client.post(f"/claims/{item['claim_id']}/{action}", json=body, headers=auth(other))
        assert resp.status_code == 403
    assert snapshot(db) == before


def test_forged_claim_ids_change_nothing(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    run_id: str,
    worker_token: str,
) -> None:
    [step] = offer(db_url, run_id)
    [item] = claim(client, worker_token)
    cid = item["claim_id"]
    _prefix, sid, delivery, secret = cid.split("_")
    # A second run's step, claimed: its id must not open the first.
    task = client.post("/tasks", json=transcode_task(), headers=auth(writer_token)).json()["id"]
    other_run = client.post(f"/tasks/{task}/run_now", headers=auth(writer_token)).json()["id"]
    offer(db_url, other_run)
    [other] = claim(client, worker_token)
    _, other_sid, _, other_secret = other["claim_id"].split("_")
    forged = [
        cid[:-1],  # truncated
        cid[:-1] + ("0" if cid[-1] != "0" else "1"),  # one character off
        f"rc_{sid}_{delivery}_{'0' * 32}",  # wrong secret
        f"rc_{sid}_{int(delivery) + 1}_{secret}",  # a delivery that never was
        f"rc_{sid}_{delivery}_{other_secret}",  # another run's secret on this step
        f"rc_{other_sid}_{delivery}_{secret}",  # this secret on another run's step
        f"rc_{10**30}_{delivery}_{secret}",  # past bigint
        "rc_0_1_" + secret,
        "x" * 200,
        "rc_1_1_" + "g" * 32,
    ]
    before = snapshot(db)
    for fake in forged:
        for action, body in (
            ("heartbeat", None),
            ("complete", {"output": {"url": "u"}}),
            ("fail", {"error": "x"}),
            ("progress", {"message": "x"}),
        ):
            resp = client.post(f"/claims/{fake}/{action}", json=body, headers=auth(worker_token))
            assert resp.status_code in (404, 409), (fake, action, resp.status_code)
    assert snapshot(db) == before
    assert step == int(sid)


def test_a_cancelled_run_ends_the_claim(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    run_id: str,
    worker_token: str,
) -> None:
    offer(db_url, run_id)
    [item] = claim(client, worker_token)
    cancel = client.post(f"/runs/{run_id}/cancel", headers=auth(writer_token))
    assert cancel.status_code in (200, 202), cancel.text
    before = snapshot(db)
    for action, body in (
        ("heartbeat", None),
        ("complete", {"output": {"url": "u"}}),
        ("fail", {"error": "x"}),
    ):
        resp = client.post(
            f"/claims/{item['claim_id']}/{action}", json=body, headers=auth(worker_token)
        )
        assert resp.status_code == 409, (action, resp.text)
        assert "cancelled" in resp.json()["detail"]
    assert snapshot(db) == before
    # A step of a cancelled run is not handed out again once its lease ends: it is dropped.
    leases_ran_out(db)
    assert claim(client, worker_token) == []
    assert step_row(db)[0] == "cancelled"


def test_offer_checks_rendered_parameters_and_the_type(
    client: TestClient, admin_token: str, db_url: str, db: psycopg.Connection[Any], run_id: str
) -> None:
    from pao.errors import InvalidInput, TaskTypeUnavailable

    with pytest.raises(InvalidInput) as bad:
        offer(db_url, run_id, params={"url": "https://x", "width": 1})
    assert bad.value.errors[0].loc == ("steps", "encode", "with", "width")
    assert (
        client.delete("/task-types/media.transcode", headers=auth(admin_token)).status_code == 204
    )
    with pytest.raises(TaskTypeUnavailable, match="inactive"):
        offer(db_url, run_id)
    assert db.execute("SELECT count(*) FROM remote_steps").fetchone() == (0,)
    assert TRANSCODE["name"] == "media.transcode"


# Completing many claims at once ---------------------------------------------------------


@pytest.fixture
def held_run_id(client: TestClient, admin_token: str, writer_token: str) -> str:
    """A queued run of a task whose step uses media.transcode (a lease no test outlives)."""
    create_type(client, admin_token, lease_seconds=300)
    task = client.post("/tasks", json=transcode_task(), headers=auth(writer_token))
    assert task.status_code == 201, task.text
    run = client.post(f"/tasks/{task.json()['id']}/run_now", headers=auth(writer_token))
    assert run.status_code == 202, run.text
    return str(run.json()["id"])


def complete_many(client: TestClient, token: str, body: Any) -> Any:
    return client.post("/claims/complete", json=body, headers=auth(token))


def steps(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in db.execute(
            "SELECT step_id, state, output, cost FROM remote_steps ORDER BY step_id"
        ).fetchall()
    ]


def test_complete_many(
    client: TestClient,
    db_url: str,
    db: psycopg.Connection[Any],
    held_run_id: str,
    worker_token: str,
) -> None:
    offer(db_url, held_run_id, "a", "b", "c")
    items = claim(client, worker_token, limit=3)
    body = {
        "items": [
            {"claim_id": it["claim_id"], "output": {"url": f"u-{it['step_id']}"}, "cost": n}
            for n, it in enumerate(items)
        ]
    }
    resp = complete_many(client, worker_token, body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "items": [{"claim_id": it["claim_id"], "status": 200, "state": "succeeded"} for it in items]
    }
    assert steps(db) == [
        (it["step_id"], "succeeded", {"url": f"u-{it['step_id']}"}, Decimal(n))
        for n, it in enumerate(items)
    ]
    # Sent again: each claim is lost now (409 per item), and nothing changes.
    before = snapshot(db)
    again = complete_many(client, worker_token, body)
    assert again.status_code == 200, again.text
    assert [(i["status"], i["type"]) for i in again.json()["items"]] == [
        (409, "urn:pao:problem:claim-lost")
    ] * 3
    assert snapshot(db) == before


def test_complete_many_reports_lost_claims_per_item(
    client: TestClient,
    db_url: str,
    db: psycopg.Connection[Any],
    held_run_id: str,
    worker_token: str,
) -> None:
    offer(db_url, held_run_id, "a", "b", "c")
    a, b, c = claim(client, worker_token, limit=3)
    failed = client.post(
        f"/claims/{b['claim_id']}/fail", json={"error": "x"}, headers=auth(worker_token)
    )
    assert failed.status_code == 200, failed.text
    unknown = a["claim_id"][:-1] + ("0" if a["claim_id"][-1] != "0" else "1")
    resp = complete_many(
        client,
        worker_token,
        {
            "items": [
                {"claim_id": it, "output": {"url": "done"}}
                for it in (a["claim_id"], b["claim_id"], "rc_nonsense", unknown, c["claim_id"])
            ]
        },
    )
    assert resp.status_code == 200, resp.text
    got = resp.json()["items"]
    assert [i["status"] for i in got] == [200, 409, 404, 404, 200]
    assert got[1]["type"] == "urn:pao:problem:claim-lost"
    assert "failed already" in got[1]["detail"]
    assert got[2]["type"] == "urn:pao:problem:not-found"
    assert [s[:2] for s in steps(db)] == [("a", "succeeded"), ("b", "failed"), ("c", "succeeded")]


def _item(claim_id: str, **extra: Any) -> dict[str, Any]:
    return {"claim_id": claim_id, "output": {"url": "ok"}, **extra}


_BAD_BODIES: list[Callable[[str, str], Any]] = [
    lambda a, b: {"items": []},
    lambda a, b: {"items": [_item(a), _item(b), _item(a)]},  # the same claim twice
    lambda a, b: {"items": [_item(a)] + [_item(f"rc_{n}_1_" + "0" * 32) for n in range(1, 101)]},
    lambda a, b: {"items": [_item(a), _item(b, cost=-1)]},
    lambda a, b: {"items": [_item(a), _item(b, cost="5")]},
    lambda a, b: {"items": [_item(a), _item(b, cost=1e12)]},
    lambda a, b: {"items": [_item(a), _item(b, extra=1)]},
    lambda a, b: {"items": [_item(a), {"claim_id": b}]},
    lambda a, b: {"items": [_item(a), _item("")]},
    lambda a, b: {"items": [_item(a), {"claim_id": b, "output": []}]},
    lambda a, b: {"items": _item(a)},
    lambda a, b: [_item(a)],
    lambda a, b: {},
]


@pytest.mark.parametrize("make_body", _BAD_BODIES)
def test_complete_many_refuses_bad_bodies_whole(
    client: TestClient,
    db_url: str,
    db: psycopg.Connection[Any],
    held_run_id: str,
    worker_token: str,
    make_body: Callable[[str, str], Any],
) -> None:
    offer(db_url, held_run_id, "a", "b")
    a, b = claim(client, worker_token, limit=2)
    before = snapshot(db)
    resp = complete_many(client, worker_token, make_body(a["claim_id"], b["claim_id"]))
    assert resp.status_code == 422, resp.text
    assert snapshot(db) == before


def test_complete_many_output_schema_breaks_refuse_the_whole_batch(
    client: TestClient,
    db_url: str,
    db: psycopg.Connection[Any],
    held_run_id: str,
    worker_token: str,
) -> None:
    offer(db_url, held_run_id, "a", "b", "c")
    a, b, c = claim(client, worker_token, limit=3)
    before = snapshot(db)
    resp = complete_many(
        client,
        worker_token,
        {
            "items": [
                {"claim_id": a["claim_id"], "output": {"url": "fine"}},
                {"claim_id": b["claim_id"], "output": {"url": 5}},
                {"claim_id": c["claim_id"], "output": {}},
            ]
        },
    )
    assert resp.status_code == 422, resp.text
    fields = [e["field"] for e in resp.json()["errors"]]
    assert "items[1].output.url" in fields
    assert any(f.startswith("items[2].output") for f in fields)
    assert not any(f.startswith("items[0]") for f in fields)
    assert snapshot(db) == before


def test_complete_many_with_another_agents_claim_is_refused_whole(
    client: TestClient,
    db_url: str,
    db: psycopg.Connection[Any],
    held_run_id: str,
    worker_token: str,
    make_token: Callable[..., str],
) -> None:
    offer(db_url, held_run_id, "a", "b")
    other = make_token("work:claim", name="other")
    [mine] = claim(client, worker_token)
    [theirs] = claim(client, other)
    before = snapshot(db)
    resp = complete_many(
        client,
        worker_token,
        {
            "items": [
                {"claim_id": mine["claim_id"], "output": {"url": "u"}},
                {"claim_id": theirs["claim_id"], "output": {"url": "u"}},
            ]
        },
    )
    assert resp.status_code == 403, resp.text
    assert "another agent" in resp.json()["detail"]
    assert snapshot(db) == before
    # No work:claim scope at all.
    reader = make_token("tasks:read", name="reader")
    before = snapshot(db)
    body = {"items": [{"claim_id": mine["claim_id"], "output": {"url": "u"}}]}
    assert complete_many(client, reader, body).status_code == 403
    assert snapshot(db) == before
