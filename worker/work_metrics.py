"""Metrics of the work itself, counted where it happens, in whichever process does it: catalog calls by endpoint
and outcome code and their latency, 429 answers and the cool-down they asked for, time spent waiting for the rate
budget, and pushes by outcome.

A Celery worker does its work in prefork child processes, each with its own memory. prometheus_client's
multiprocess mode adds them up: every process writes its values to memory-mapped files in one directory
(`PROMETHEUS_MULTIPROC_DIR`) and the worker's main process serves their sum. `catalog-sync worker --metrics-port
P` sets that up (choosing the directory before anything imports prometheus_client, which reads it once) and
serves `http://<host>:P/metrics`; without it the metrics are counted in the process's default registry and not
served.
"""

from __future__ import annotations

import os
import re

from prometheus_client import Counter, Histogram

# Catalog calls answer in tens of milliseconds; the tail shows a slow API or a cool-down.
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Waits for the budget run from nothing to the longest wait a call accepts (`catalog_max_retry_after`).
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A product's externalId in a path would make one series per product: it becomes a placeholder.
_PRODUCT_PATH = re.compile(r"^products/.+$")

catalog_calls = Counter(
    "catalog_sync_catalog_calls",
    "Catalog API calls by method, endpoint and HTTP status (`error` when no answer came).",
    ["method", "endpoint", "code"],
)
catalog_call_seconds = Histogram(
    "catalog_sync_catalog_call_seconds",
    "Time one catalog API call took, by method and endpoint.",
    ["method", "endpoint"],
    buckets=CALL_BUCKETS,
)
catalog_rate_limited = Counter("catalog_sync_catalog_rate_limited", "Catalog answers 429 (RATE_LIMITED).")
catalog_cool_down_seconds = Counter(
    "catalog_sync_catalog_cool_down_seconds", "Seconds of cool-down that the catalog's 429 answers started."
)
budget_wait_seconds = Histogram(
    "catalog_sync_budget_wait_seconds",
    "Time a catalog call waited for the shared rate budget, by priority.",
    ["priority"],
    buckets=WAIT_BUCKETS,
)
pushes = Counter("catalog_sync_pushes", "Pushes of one product by source and outcome.", ["source", "outcome"])


def endpoint(path: str) -> str:
    """The endpoint label of a catalog path (`products`, `products/{externalId}`)."""
    path = path.strip("/")
    return "products/{externalId}" if _PRODUCT_PATH.match(path) else path


def serve_multiprocess(port: int, host: str = "0.0.0.0") -> None:
    """Serve the sum of every process's metrics on `host:port` from a background thread of this process."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported")
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


def process_exited(pid: int) -> None:
    """Forget the live-gauge files of a child that exited (counters and histograms keep counting)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


__all__ = [
    "budget_wait_seconds",
    "catalog_call_seconds",
    "catalog_calls",
    "catalog_cool_down_seconds",
    "catalog_rate_limited",
    "endpoint",
    "process_exited",
    "pushes",
    "serve_multiprocess",
]
