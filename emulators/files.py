"""A static file server for feeds: what a merchant's feed URL looks like to a connector (GET, Last-Modified,
ETag, 404), for the demo and feed tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route


def create_app(files: Mapping[str, Path]) -> Starlette:
    """Serve each `files[name]` at `/<name>`; anything else is 404."""
    served = {name.strip("/"): Path(path) for name, path in files.items()}

    async def serve_file(request: Request) -> Response:
        path = served.get(request.path_params["name"])
        if path is None or not path.is_file():
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(path)

    return Starlette(routes=[Route("/{name:path}", serve_file, methods=["GET", "HEAD"])])
