"""Running an ASGI app under uvicorn: in the foreground (`catalog-sync emulate`), or on a background thread, for the
webhook server of `run --embedded`, the demo, tests and benchmarks (real sockets, no mocks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

# How long a background server may take to bind before we give up.
STARTUP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class BackgroundServer:
    """A uvicorn server on its own thread. `url` is its base URL once started."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int | None = None, **options: Any) -> None:
        self.app = app
        self.host = host
        # Bind here and hand the socket to uvicorn: picking a free port and binding it later races other processes.
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it every
        # small response waits ~40 ms for a delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port or 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", lifespan="auto", access_log=False, **options
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"uvicorn:{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=STARTUP_TIMEOUT)
        self._socket.close()


@contextmanager
def running(app: Any, **kwargs: Any) -> Iterator[BackgroundServer]:
    """`with running(app) as server: httpx.get(server.url + ...)`"""
    server = BackgroundServer(app, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def serve_forever(app: Any, *, host: str, port: int) -> None:
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
