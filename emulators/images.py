"""An image host for tests and benchmarks of the image check: real HTTP, with the ways images fail in shops.

Paths (any file name after the prefix):
- `/ok/…`: a small JPEG, HEAD and GET;
- `/missing/…`: 404; `/flaky/…`: 503;
- `/html/…`: a `text/html` page (a shop's "not found" page served with 200);
- `/huge/…`: `image/jpeg` of 11 MB (announced by Content-Length; GET streams it);
- `/nohead/…`: HEAD answers 405; GET honours `Range` (206 with `Content-Range`);
- `/signed/…`: HEAD answers 403, as a URL signed for GET does; GET honours `Range`;
- `/norange/…`: HEAD answers 405; GET ignores `Range` and streams `?size=` bytes (default 11 MB) without a length;
- `/redirect/…`: 302 to the same name under `/ok/`.
`GET /_emulator/stats` gives `{"requests": n, "by_method": {...}}`; `POST /_emulator/reset` clears it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

# The start of a JPEG file: enough for a client that sniffs the bytes.
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
# Larger than the catalog's 10 MB image limit.
HUGE_BYTES = 11 * 1024 * 1024
_CHUNK = 256 * 1024


def _stream(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        chunk = min(_CHUNK, size - sent)
        sent += chunk
        yield b"\0" * chunk


def _ranged(request: Request, body: bytes, media_type: str) -> Response:
    if request.headers.get("range", "").startswith("bytes=0-0"):
        headers = {"Content-Range": f"bytes 0-0/{len(body)}"}
        return Response(body[:1], status_code=206, media_type=media_type, headers=headers)
    return Response(body, media_type=media_type)


def create_app() -> Starlette:
    stats: Counter[str] = Counter()

    async def image(request: Request) -> Response:
        kind = request.path_params["kind"]
        name = request.path_params["name"]
        head = request.method == "HEAD"
        stats["requests"] += 1
        stats[request.method] += 1
        if kind == "ok":
            return Response(JPEG_BYTES, media_type="image/jpeg")
        if kind == "missing":
            return Response("not found", status_code=404, media_type="text/plain")
        if kind == "flaky":
            return Response("try later", status_code=503, media_type="text/plain")
        if kind == "html":
            return Response("<html><body>Product not found</body></html>", media_type="text/html")
        if kind == "huge":
            if head:
                return Response(b"", media_type="image/jpeg", headers={"Content-Length": str(HUGE_BYTES)})
            return StreamingResponse(
                _stream(HUGE_BYTES), media_type="image/jpeg", headers={"Content-Length": str(HUGE_BYTES)}
            )
        if kind in ("nohead", "signed"):
            if head:
                return Response(b"", status_code=405 if kind == "nohead" else 403)
            return _ranged(request, JPEG_BYTES * 40, "image/png")
        if kind == "norange":
            if head:
                return Response(b"", status_code=405)
            size = int(request.query_params.get("size", HUGE_BYTES))
            return StreamingResponse(_stream(size), media_type="image/jpeg")
        if kind == "redirect":
            return RedirectResponse(f"/ok/{name}", status_code=302)
        return Response("unknown kind", status_code=404)

    async def get_stats(_: Request) -> JSONResponse:
        by_method = {key: value for key, value in stats.items() if key != "requests"}
        return JSONResponse({"requests": stats["requests"], "by_method": by_method})

    async def reset(_: Request) -> JSONResponse:
        stats.clear()
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/_emulator/stats", get_stats, methods=["GET"]),
            Route("/_emulator/reset", reset, methods=["POST"]),
            Route("/{kind}/{name:path}", image, methods=["GET", "HEAD"]),
        ]
    )
