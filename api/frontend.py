"""The web UI: the files built from ``frontend/`` (``npm ci && npm run build``), served at ``/``.

A single-page app: a path that names a built file gets that file; any other path outside the API
gets ``index.html`` and the browser-side router draws the page. Paths under ``/api/`` never fall
back to the page, so an unknown API path stays a JSON 404. Where the UI has not been built, every
page answers a short note saying how to build it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from api.errors import ApiError

# Every method, so that an unknown API path is a 404 whatever the method.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
DEFAULT_DIST = Path(__file__).resolve().parents[1] / "frontend" / "dist"

# The built UI loads nothing from elsewhere and runs no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

_NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Web UI not built</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The web UI has not been built</h1>
<p>This server found no <code>frontend/dist/index.html</code>. Build it with
<code>make setup</code>, or <code>cd frontend &amp;&amp; npm ci &amp;&amp; npm run build</code>,
then reload this page.</p>
<p>The REST API works without it: <a href="/docs">/docs</a>.</p>
</body></html>
"""


def _file_in(dist: Path, path: str) -> Path | None:
    """The built file that ``path`` names, or None (never a file outside ``dist``)."""
    if not path:
        return None
    candidate = (dist / path).resolve()
    if not candidate.is_relative_to(dist) or not candidate.is_file():
        return None
    return candidate


def mount_frontend(app: FastAPI, dist: Path = DEFAULT_DIST) -> None:
    """Serve the built UI from ``dist``; call after every API router is included."""
    root = dist.resolve()

    @app.api_route("/{path:path}", methods=_METHODS, include_in_schema=False)
    def frontend(path: str, request: Request) -> Response:
        if path == "api" or path.startswith("api/"):
            raise ApiError(404, "not_found", f"no API endpoint at /{path}")
        if request.method not in ("GET", "HEAD"):
            raise ApiError(405, "method_not_allowed", f"/{path} is a page: only GET reads it")
        built = _file_in(root, path)
        if built is not None:
            immutable = path.startswith("assets/")  # Vite puts a content hash in these names
            cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
            headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
            if built.suffix == ".html":
                headers = _PAGE_HEADERS
            return FileResponse(built, headers=headers)
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(_NOT_BUILT, status_code=503, headers={"Cache-Control": "no-cache"})
        return FileResponse(index, media_type="text/html", headers=_PAGE_HEADERS)
