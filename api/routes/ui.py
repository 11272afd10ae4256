"""The dashboard: static files under /ui, no token needed to fetch them.

The page itself holds no data and no secret; it calls the same public API as
any client, with a token the user pastes into it. A fixed list of files is
served (never a path taken from the request), each with a strict
Content-Security-Policy: the page may talk only to this origin and run only
its own scripts and styles.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from pao.errors import NotFound

router = APIRouter(prefix="/ui", tags=["dashboard"], include_in_schema=False)

UI_DIR = Path(str(resources.files("api") / "ui"))

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

HEADERS = {
    "Content-Security-Policy": (
        # blob: images are the asset previews the page makes from bytes it fetched itself
        # (raster types only; nothing else of an asset is ever rendered here).
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files that change with each release: always revalidate (ETag makes it cheap).
    "Cache-Control": "no-cache",
}


def shipped_files() -> dict[str, Path]:
    """The dashboard's files by name: only these are ever served."""
    return {
        path.name: path
        for path in sorted(UI_DIR.iterdir())
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


def _file(name: str) -> FileResponse:
    path = shipped_files().get(name)
    if path is None:
        raise NotFound(f"the dashboard has no file named {name!r}; open /ui/")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("")
async def ui_root(request: Request) -> Response:
    """The dashboard lives at /ui/ (so its relative links resolve under any prefix)."""
    return RedirectResponse(request.url.path + "/", status_code=308)


@router.get("/")
async def ui_index() -> FileResponse:
    """The dashboard's page."""
    return _file("index.html")


@router.get("/{name}")
async def ui_file(name: str) -> FileResponse:
    """One of the dashboard's scripts or styles."""
    return _file(name)
