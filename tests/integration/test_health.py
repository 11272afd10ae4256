"""Health endpoints, and the API riding out a database restart."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from pao.migrate import migrate
from pao.settings import Settings
from tests.helpers import SEED_TASK, auth, new_agent
from tests.pgcluster import Cluster


def test_live_ready_and_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    assert client.get("/health/ready").status_code == 200
    health = client.get("/health")
    body = health.json()
    assert body["database"] == {"status": "ok"}
    assert body["queue"] == {"queued": 0, "due": 0}
    # No scheduler or worker is running in this test: the system is not healthy.
    assert body["scheduler"]["status"] == "missing"
    assert health.status_code == 503


def test_health_is_ok_with_fresh_heartbeats(client: TestClient, db_url: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        for kind in ("scheduler", "worker"):
            conn.execute(
                "INSERT INTO process_heartbeats (process_id, kind, hostname, pid) "
                "VALUES (%s, %s, 'h', 1)",
                (f"{kind}-1", kind),
            )
    resp = client.get("/health")
    assert resp.status_code == 200, resp.text
    assert resp.json()["worker"]["processes"] == 1


def test_api_answers_503_while_the_database_is_down_and_recovers(cluster: Cluster) -> None:
    asyncio.run(migrate(cluster.url))
    token = new_agent(cluster.url, ["tasks:read", "tasks:write"])
    app = create_app(Settings(pool_min_size=1, pool_max_size=2), database_url=cluster.url)
    with TestClient(app) as client:
        assert client.post("/tasks", json=SEED_TASK, headers=auth(token)).status_code == 201
        cluster.stop("fast")
        for path in ("/tasks", "/health", "/health/ready"):
            resp = client.get(path, headers=auth(token))
            assert resp.status_code == 503, (path, resp.text)
        down = client.post("/tasks", json=SEED_TASK, headers=auth(token))
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert down.headers["Retry-After"]
        assert client.get("/health/live").status_code == 200
        cluster.start()
        for _ in range(50):
            resp = client.get("/tasks", headers=auth(token))
            if resp.status_code == 200:
                break
        assert resp.status_code == 200
        assert len(resp.json()["items"]) == 1
        assert client.get("/health/ready").status_code == 200


def test_api_refuses_to_start_on_an_unmigrated_database(cluster: Cluster) -> None:
    from pao.errors import NotMigrated

    app = create_app(Settings(), database_url=cluster.url)
    with pytest.raises(NotMigrated, match="pao migrate"), TestClient(app):
        pass
