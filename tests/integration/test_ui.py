"""The dashboard's static files: served without a token, only those shipped, locked down."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.routes.ui import UI_DIR, shipped_files

ROOT = Path(__file__).resolve().parents[2]


def test_ui_redirects_to_its_folder_and_serves_the_page_without_a_token(
    client: TestClient,
) -> None:
    resp = client.get("/ui", follow_redirects=False)
    assert resp.status_code == 308
    assert resp.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>pao dashboard</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    # Asset previews are blob: images; nothing else may come from a blob: (a script, a frame).
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["img-src"] == "'self' data: blob:"
    assert [name for name, value in directives.items() if "blob:" in value] == ["img-src"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-request-id"]


def test_every_file_the_page_names_is_served_with_its_type(client: TestClient) -> None:
    """index.html and each module's imports resolve to files the route serves."""
    wanted = {"index.html"}
    for path in sorted(UI_DIR.iterdir()):
        text = path.read_text()
        wanted |= set(re.findall(r'(?:src|href)="([a-z]+\.(?:js|css|svg))"', text))
        wanted |= set(re.findall(r'from "\./([a-z]+\.js)"', text))
    assert {"app.js", "api.js", "style.css"} <= wanted
    types = {
        "js": "text/javascript",
        "css": "text/css",
        "svg": "image/svg+xml",
        "html": "text/html",
    }
    for name in sorted(wanted):
        resp = client.get(f"/ui/{name}")
        assert resp.status_code == 200, name
        assert resp.headers["content-type"].startswith(types[name.rsplit(".", 1)[1]]), name
        assert resp.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path", ["/ui/nope.js", "/ui/..%2fapp.py", "/ui/%2e%2e%2fmain.py", "/ui/__init__.py"]
)
def test_only_shipped_files_are_served(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"


def test_the_api_still_wants_a_token_beside_the_dashboard(client: TestClient) -> None:
    assert client.get("/tasks").status_code == 401


def test_package_data_ships_every_dashboard_file() -> None:
    """A wheel built from pyproject.toml carries the files the route serves."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["api"]
    shipped = {p.name for g in globs for p in (ROOT / "api").glob(g)}
    assert set(shipped_files()) == shipped
    assert "index.html" in shipped
