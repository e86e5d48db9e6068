"""Process logging: plain text for a terminal, or one JSON object per line (`CATALOG_SYNC_LOG_FORMAT=json`) for a
log pipeline, carrying the source, product, run and account a line is about wherever they are known.

The context travels in a context variable: Celery's task signals bind the source and product of the task a
worker process is running, so every line logged below a task (connectors, push, the catalog client) carries them
without each call site passing them; a call site may add its own with `extra={"source": ...}`, which wins.
`log_context()` binds them around any other block of work.

JSON lines are written by python-json-logger rather than a hand-written formatter: it serialises any value safely
(exceptions, datetimes, odd objects) and includes every `extra` field.

`Throttle` keeps a warning that an outsider can provoke at will (a refused webhook signature) from filling a disk:
a few lines a second per key at most, and the next line that passes says how many were left out.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

# The fields a line may carry about what it concerns; each is a top-level key of a JSON line.
CONTEXT_FIELDS = ("source", "product", "run", "account")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"
# `asctime` is ISO 8601 with milliseconds in UTC: log pipelines parse it without a pattern.
JSON_FORMAT = "{asctime}{levelname}{name}{message}"
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Libraries whose INFO lines are noise, or worse: httpx logs every request URL, and some shops' URLs carry
# credentials (WooCommerce OAuth over plain HTTP).
QUIET_LOGGERS = ("httpx", "httpcore")
# Tasks whose first argument is a source name, and those whose second is one product id.
_SOURCE_TASKS = frozenset(
    {"catalog_sync.push", "catalog_sync.push_many", "catalog_sync.sync_source", "catalog_sync.sync_product"}
)
_PRODUCT_TASKS = frozenset({"catalog_sync.push", "catalog_sync.sync_product"})
# Tasks whose first argument is a catalog account's name.
_ACCOUNT_TASKS = frozenset({"catalog_sync.audit"})

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("catalog_sync_log_context", default=_EMPTY)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Bind context fields (`source`, `product`, `run`, `account`) for every line logged inside the block."""
    bound = {key: str(value) for key, value in fields.items() if value is not None}
    token = _context.set({**_context.get(), **bound})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, str]:
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (fields given with `extra=` win) and renders it for text lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        present = [f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if getattr(record, key, None) is not None]
        record.context = f" [{' '.join(present)}]" if present else ""
        return True


class _UtcJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{time.strftime(DATE_FORMAT, time.gmtime(record.created))}.{int(record.msecs):03d}Z"

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        # The rendered text context is for text lines; JSON has the fields themselves.
        log_data.pop("context", None)


def formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        return _UtcJsonFormatter(JSON_FORMAT, style="{", rename_fields=JSON_RENAMES)
    return logging.Formatter(TEXT_FORMAT)


# The handler this module installed on the root logger, replaced (not stacked) when logging is set up again.
_installed: logging.Handler | None = None
_install_lock = threading.Lock()


def configure_logging(level: str | int, fmt: LogFormat = "text", *, stream: IO[str] | None = None) -> None:
    """Send every logger's records to `stream` (stderr) as text or JSON lines, at `level` and above."""
    global _installed
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    with _install_lock:
        if _installed is not None:
            root.removeHandler(_installed)
        root.addHandler(handler)
        _installed = handler
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    root.setLevel(numeric)
    # Library warnings (Celery's superuser warning, deprecations) become log lines too, not raw stderr text.
    logging.captureWarnings(True)
    # At DEBUG every request is wanted (its URL is redacted by the clients' own logging).
    quiet = not isinstance(numeric, int) or numeric > logging.DEBUG
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


def configure_from_settings(level: str | int | None = None) -> LogFormat:
    """Logging for a `catalog-sync` process from `CATALOG_SYNC_LOG_LEVEL` / `CATALOG_SYNC_LOG_FORMAT`; returns the
    format in force.

    Invalid settings fall back to text at WARNING: the command that needs the settings reports the mistake itself.
    """
    from config.settings import get_settings
    from ground.errors import ConfigError

    try:
        settings = get_settings()
    except ConfigError:
        configure_logging(level or logging.WARNING)
        return "text"
    configure_logging(level or settings.log_level, settings.log_format)
    return settings.log_format


class Throttle:
    """At most `burst` events at once and `rate` a second after that, per key (a token bucket), counting what it
    refuses so the next event allowed can report them. Thread-safe; `clock` is injectable for tests."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, last refill, refused since the last allowed event)
        self._buckets: dict[str, tuple[float, float, int]] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(whether to log this event, how many events of `key` were refused since the last one logged)."""
        now = self._clock()
        with self._lock:
            tokens, last, refused = self._buckets.get(key, (self._burst, now, 0))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now, refused + 1)
                return False, refused + 1
            self._buckets[key] = (tokens - 1.0, now, 0)
            return True, refused


# ------------------------------------------------------------------------------------------------ Celery hooks


def install_celery_hooks() -> None:
    """Connect the Celery signals: logging set up from the settings (instead of Celery's own), and the task's
    source and product bound for the lines it logs. Called by `catalog-sync worker` and `beat`."""
    from celery.signals import setup_logging, task_postrun, task_prerun

    setup_logging.connect(_celery_setup_logging, weak=False)
    task_prerun.connect(_bind_task_context, weak=False)
    task_postrun.connect(_unbind_task_context, weak=False)


def _celery_setup_logging(loglevel: str | int | None = None, **_: Any) -> None:
    if configure_from_settings(loglevel) == "json":
        _route_celery_notices_as_json()


def _route_celery_notices_as_json() -> None:
    """Celery's worker writes its shutdown notices ("worker: Warm shutdown") straight to a file descriptor from its
    signal handlers, bypassing logging; in JSON mode they are written as JSON lines instead, with the same raw
    `os.write` (no logging lock taken inside a signal handler)."""
    import celery.apps.worker as celery_worker

    def say(msg: str, f: IO[str] = sys.__stderr__) -> None:  # type: ignore[assignment]
        now = time.time()
        stamp = f"{time.strftime(DATE_FORMAT, time.gmtime(now))}.{int(now % 1 * 1000):03d}Z"
        line = {"time": stamp, "level": "WARNING", "logger": "celery.apps.worker", "message": msg.strip()}
        with contextlib.suppress(OSError, ValueError):
            os.write(f.fileno(), (json.dumps(line) + "\n").encode())

    celery_worker.safe_say = say


_task_tokens: dict[str, contextvars.Token[Mapping[str, str]]] = {}
log = logging.getLogger(__name__)


def _bind_task_context(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: Any) -> None:
    fields: dict[str, str] = {}
    name = getattr(task, "name", "")
    if name in _SOURCE_TASKS and args:
        fields["source"] = str(args[0])
    if name in _PRODUCT_TASKS and len(args) > 1:
        fields["product"] = str(args[1])
    if name in _ACCOUNT_TASKS and args:
        fields["account"] = str(args[0])
    elif "source" in fields:
        account = _account_of(fields["source"])
        if account is not None:
            fields["account"] = account
    _task_tokens[task_id] = _context.set({**_context.get(), **fields})


def _account_of(source: str) -> str | None:
    """The catalog account `source` writes to, from the process's runtime; None when the source is unknown (the
    task itself reports that)."""
    from ground.errors import ConfigError
    from worker.runtime import get_runtime

    try:
        return get_runtime().source(source).account
    except ConfigError:
        return None


def _unbind_task_context(task_id: str, task: Any, retval: Any = None, **_: Any) -> None:
    if getattr(task, "name", "") == "catalog_sync.sync_source" and isinstance(retval, dict) and "run_id" in retval:
        log.info("sync finished: %s", retval.get("outcome"), extra={"run": retval["run_id"]})
    token = _task_tokens.pop(task_id, None)
    if token is None:
        return
    try:
        _context.reset(token)
    except ValueError:  # bound in another thread's context (a pool that moved the task): start clean instead
        _context.set({})


__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "LogFormat",
    "Throttle",
    "configure_from_settings",
    "configure_logging",
    "current_context",
    "formatter",
    "install_celery_hooks",
    "log_context",
]
