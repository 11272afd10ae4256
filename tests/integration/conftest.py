from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from pao.settings import Settings
from tests.helpers import new_agent


@pytest.fixture
def settings() -> Settings:
    return Settings(pool_min_size=1, pool_max_size=4)


@pytest.fixture
def app(db_url: str, settings: Settings) -> FastAPI:
    return create_app(settings, database_url=db_url)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def make_token(db_url: str) -> Callable[..., str]:
    def make(*scopes: str, name: str = "agent") -> str:
        return new_agent(db_url, list(scopes), name=name)

    return make


@pytest.fixture
def admin_token(make_token: Callable[..., str]) -> str:
    return make_token("admin", name="root")


@pytest.fixture
def writer_token(make_token: Callable[..., str]) -> str:
    return make_token("tasks:read", "tasks:write", "runs:read", "events:publish", name="writer")
