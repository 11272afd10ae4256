"""Failed sign-ins never lock out a valid token, even when every client shares one address."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fastapi.testclient import TestClient

from api.app import create_app
from pao import tokens
from pao.settings import Settings
from tests.helpers import auth

INGRESS = ("10.0.0.5", 40000)  # the only peer the API sees behind a proxy


def test_valid_tokens_are_served_while_bad_ones_from_the_same_address_are_slowed(
    db_url: str, settings: Settings, make_token: Callable[..., str]
) -> None:
    good = make_token("tasks:read", name="good")
    other = make_token("tasks:read", name="other")
    app = create_app(replace(settings, auth_failures_per_minute=3), database_url=db_url)
    with TestClient(app, client=INGRESS) as guesser, TestClient(app, client=INGRESS) as agent:
        for _ in range(3):
            assert guesser.get("/tasks", headers=auth(tokens.new_token())).status_code == 401
        # Over the limit: an unknown, a malformed or a missing token is 429 ...
        for headers in (auth(tokens.new_token()), {"Authorization": "Bearer nonsense"}, {}):
            slowed = guesser.get("/tasks", headers=headers)
            assert slowed.status_code == 429, slowed.text
            assert "failed sign-ins" in slowed.json()["detail"]
            assert 1 <= int(slowed.headers["Retry-After"]) <= 60
        # ... while every valid token behind the same address is served, again and again,
        # and a token seen for the first time too.
        for _ in range(5):
            assert agent.get("/tasks", headers=auth(good)).status_code == 200
        assert guesser.get("/tasks", headers=auth(other)).status_code == 200
        # Being served does not clear the address's failures.
        assert guesser.get("/tasks", headers=auth(tokens.new_token())).status_code == 429
