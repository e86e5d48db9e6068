"""Serving an app under uvicorn, for the emulators, tests and benchmarks: the helpers live in `ground.serving`, which
production uses too (the webhook server of `run --embedded`)."""

from __future__ import annotations

from ground.serving import STARTUP_TIMEOUT, BackgroundServer, free_port, running, serve_forever

__all__ = ["STARTUP_TIMEOUT", "BackgroundServer", "free_port", "running", "serve_forever"]
