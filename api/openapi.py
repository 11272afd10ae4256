"""The OpenAPI document: every error a route can answer, declared as a problem.

FastAPI declares only the success response and its own 422 shape, which our
routes never send. Here each operation gets the problem responses its shape
implies (a token: 401, 403, 429; a path id: 404; input: 422; a body: 400,
413), plus those its decorator names (`conflicts(409, 412)`), all as
`application/problem+json`.

The pages that show it, /docs (Swagger UI) and /redoc, are served here too,
not FastAPI's: theirs load scripts from a CDN and run an inline one, on the
origin where the dashboard keeps its token. Ours load only files of this
server (Swagger UI and ReDoc as the `fastapi-offline` package ships them, and
a small start-up script), under a Content-Security-Policy that allows nothing
else to run.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.routing import APIRoute

from api.deps import RequireScope
from api.models import Problem
from api.problems import PROBLEM_JSON
from pao.errors import NotFound

_REF = "#/components/schemas/Problem"

_DESCRIPTIONS = {
    400: "The body is not valid JSON text",
    401: "Missing, unknown, revoked or expired bearer token",
    403: "The token lacks the scope this endpoint needs",
    404: "No such object, or it belongs to another agent",
    408: "The upload stalled: nothing arrived for a minute",
    409: "The object is not in a state that allows this, or the request is in flight",
    412: "If-Match names an older version",
    413: "The body is larger than 256 KiB",
    415: "The body is not multipart/form-data",
    416: "The range starts beyond the end; Content-Range says the size",
    422: "Invalid input; `errors` names each field",
    429: "Too many requests or failed sign-ins; retry after `Retry-After` seconds",
    503: "The database or a tool server cannot be reached; retry shortly",
}


_RATE_HEADERS = {
    "X-RateLimit-Limit": "Requests this agent may make per minute",
    "X-RateLimit-Remaining": "Requests left in the current minute",
    "X-RateLimit-Reset": "Seconds until the current minute's count starts again",
}


def conflicts(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Extra problem statuses a route answers, for its decorator's `responses=`."""
    return {status: {"description": _DESCRIPTIONS[status]} for status in statuses}


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, including those inside included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += api_routes(list(inner.routes))
    return found


def _needs_token(route: APIRoute) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, RequireScope):
            return True
        stack.extend(dep.dependencies)
    return False


def _implied(route: APIRoute) -> set[int]:
    statuses: set[int] = set()
    dependant = route.dependant
    flat = [dependant, *dependant.dependencies]
    if _needs_token(route):
        statuses |= {401, 403, 429, 503}
    if any(d.path_params for d in flat):
        statuses |= {404, 422}
    if any(d.query_params or d.header_params for d in flat):
        statuses.add(422)
    methods = route.methods or set()
    if route.body_field is not None or methods & {"POST", "PUT"}:
        statuses |= {400, 413, 422}
    return statuses


def _problem_response(status: int, existing: dict[str, Any] | None) -> dict[str, Any]:
    description = _DESCRIPTIONS.get(status) or (existing or {}).get("description") or "Error"
    out: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF}}},
    }
    if status in (429, 503):
        out["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "schema": {"type": "integer"},
            }
        }
    return out


def _rate_headers() -> dict[str, Any]:
    return {
        name: {"description": text, "schema": {"type": "integer"}}
        for name, text in _RATE_HEADERS.items()
    }


def document(app: FastAPI) -> None:
    """Make `app.openapi()` declare every problem response (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem_schema.pop("$defs", {}))
        components["Problem"] = problem_schema
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for route in api_routes(list(app.routes)):
            if not route.include_in_schema:
                continue
            implied = _implied(route)
            for method in route.methods or ():
                operation = schema["paths"][route.path_format][method.lower()]
                responses: dict[str, Any] = operation["responses"]
                declared = {int(code) for code in responses if code.isdigit()}
                for status in sorted(implied | {s for s in declared if s >= 400}):
                    existing = responses.get(str(status))
                    if (
                        existing
                        and "content" in existing
                        and PROBLEM_JSON not in existing["content"]
                        and status != 422
                    ):
                        # A route's own error body (health); FastAPI's 422 shape is replaced.
                        continue
                    responses[str(status)] = _problem_response(status, existing)
                if _needs_token(route):
                    for code, response in responses.items():
                        if int(code) < 400 or code == "429":
                            response.setdefault("headers", {}).update(_rate_headers())
                operation["responses"] = dict(sorted(responses.items()))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# -------------------------------------------------------------------------- the pages

DOCS_ASSETS = "/docs/assets"
"""Where the pages' scripts, styles and icon are served from; only the files below."""

_VENDORED = Path(str(resources.files("fastapi_offline") / "static"))

_SWAGGER_INIT = """\
// Starts Swagger UI on the API description named by the page (no inline script: the
// page's Content-Security-Policy forbids one).
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapi,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""

_ASSETS: dict[str, tuple[Path | str, str]] = {
    "swagger-ui-bundle.js": (_VENDORED / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": (_VENDORED / "swagger-ui.css", "text/css; charset=utf-8"),
    "redoc.standalone.js": (_VENDORED / "redoc.standalone.js", "text/javascript; charset=utf-8"),
    "favicon.png": (_VENDORED / "favicon.png", "image/png"),
    "swagger-init.js": (_SWAGGER_INIT, "text/javascript; charset=utf-8"),
}

_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src {style}; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src {worker}; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

SWAGGER_HEADERS = {
    "Content-Security-Policy": _PAGE_POLICY.format(style="'self'", worker="'none'"),
    **_COMMON_HEADERS,
}
# ReDoc's styled-components writes <style> elements, and its search runs in a worker it makes
# from a blob: both break without these. Styles run no code, and a blob can only be made by a
# script that already runs; scripts stay 'self'. (The logo ReDoc fetches from its CDN is
# refused by img-src.)
REDOC_HEADERS = {
    "Content-Security-Policy": _PAGE_POLICY.format(style="'self' 'unsafe-inline'", worker="blob:"),
    **_COMMON_HEADERS,
}


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _swagger_page(title: str, root: str, openapi_url: str) -> str:
    assets = root + DOCS_ASSETS
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_escape(title)} - Swagger UI</title>
<link rel="icon" href="{assets}/favicon.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi="{_escape(root + openapi_url)}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""


def _redoc_page(title: str, root: str, openapi_url: str) -> str:
    assets = root + DOCS_ASSETS
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_escape(title)} - ReDoc</title>
<link rel="icon" href="{assets}/favicon.png">
</head>
<body>
<redoc spec-url="{_escape(root + openapi_url)}"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc from this server's own files (create the app with
    `docs_url=None, redoc_url=None` so FastAPI's CDN pages are not there as well)."""
    openapi_url = app.openapi_url or "/openapi.json"

    def root(request: Request) -> str:
        return str(request.scope.get("root_path") or "").rstrip("/")

    async def swagger_ui(request: Request) -> Response:
        return HTMLResponse(
            _swagger_page(app.title, root(request), openapi_url), headers=SWAGGER_HEADERS
        )

    async def redoc(request: Request) -> Response:
        return HTMLResponse(
            _redoc_page(app.title, root(request), openapi_url), headers=REDOC_HEADERS
        )

    async def docs_asset(request: Request) -> Response:
        """One of a fixed list of files: never a path taken from the request."""
        name = str(request.path_params["name"])
        found = _ASSETS.get(name)
        if found is None:
            raise NotFound(f"the documentation pages have no file named {name!r}")
        source, media_type = found
        if isinstance(source, str):
            return Response(source, media_type=media_type, headers=_COMMON_HEADERS)
        return FileResponse(source, media_type=media_type, headers=_COMMON_HEADERS)

    # Plain routes, as FastAPI's own pages are: public, outside the API and its document.
    app.add_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    app.add_route(DOCS_ASSETS + "/{name}", docs_asset, methods=["GET"], include_in_schema=False)
