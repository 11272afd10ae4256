"""/docs and /redoc: their scripts come from this server, under a strict Content-Security-Policy.

The dashboard keeps its token in this origin's localStorage, so no page on the origin may
run a script from elsewhere or an inline one.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

PAGES = ("/docs", "/redoc")


def _csp(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


@pytest.mark.parametrize("path", PAGES)
def test_docs_pages_run_only_their_own_scripts(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    csp = _csp(resp.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]  # no host, no 'unsafe-inline', no 'unsafe-eval'
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    html = resp.text
    assert "http://" not in html, html  # nothing from elsewhere
    assert "https://" not in html, html
    # Every script is a file of this server; none is inline.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts
    for attributes, body in scripts:
        assert body.strip() == "", f"inline script on {path}: {body[:80]}"
        [src] = re.findall(r'src="([^"]+)"', attributes)
        assert src.startswith("/"), src


@pytest.mark.parametrize("path", PAGES)
def test_the_docs_assets_are_served_from_this_server(client: TestClient, path: str) -> None:
    html = client.get(path).text
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    kinds = {a.rsplit(".", 1)[-1] for a in assets}
    assert "js" in kinds
    for asset in assets:
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        assert resp.headers["x-content-type-options"] == "nosniff", asset
        expected = {
            "js": "text/javascript",
            "css": "text/css",
            "png": "image/png",
        }[asset.rsplit(".", 1)[-1]]
        assert resp.headers["content-type"].startswith(expected), asset
        assert len(resp.content) > 100, asset
    # The page finds the API's description where this server serves it.
    assert client.get("/openapi.json").status_code == 200


def test_no_other_file_is_served_from_the_docs_assets(client: TestClient) -> None:
    html = client.get("/docs").text
    [bundle] = re.findall(r'src="(/[^"]+swagger-ui-bundle\.js)"', html)
    base = bundle.rsplit("/", 1)[0]
    for name in ("../../pao/settings.py", "core.py", "__init__.py", "%2e%2e%2fcore.py"):
        assert client.get(f"{base}/{name}").status_code == 404, name
