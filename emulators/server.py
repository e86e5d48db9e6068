"""Serving an app under uvicorn, for the emulators, tests and benchmarks: the helpers live in `ground.serving`, which
production uses too (the webhook server of `run --embedded`). `answers_when_up` waits for an emulator started as a
process of its own."""

from __future__ import annotations

import subprocess
import time

import httpx

from ground.serving import STARTUP_TIMEOUT, BackgroundServer, free_port, running, serve_forever

__all__ = ["STARTUP_TIMEOUT", "BackgroundServer", "answers_when_up", "free_port", "running", "serve_forever"]


def answers_when_up(url: str, process: subprocess.Popen[bytes], *, timeout: float = STARTUP_TIMEOUT) -> bool:
    """Whether the emulator process at `url` answers its stats route before it exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/_emulator/stats", timeout=2.0).raise_for_status()
            return True
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
