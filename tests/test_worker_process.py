"""A real `catalog-sync worker` process as an orchestrator and a log pipeline see it: `worker --check` answers while
it runs and fails once it stopped; with CATALOG_SYNC_LOG_FORMAT=json every line it writes is one JSON object, and
the lines of a task carry the source and product they concern."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.sync_helpers import SOURCE, SyncWorld, feed_item, write_feed
from tests.worker_helpers import (
    CONVERGE_TIMEOUT,
    broker_world,
    catalog_sync,
    start_worker,
    stop_worker,
    sync_through_worker,
)


@pytest.fixture
def world(tmp_path: Path, redis_url: str) -> Iterator[SyncWorld]:
    with broker_world(tmp_path, redis_url) as w:
        yield w


def wait_for_check(world: SyncWorld, node: str) -> int:
    """`worker --check` until it succeeds (the worker is still starting) or the guard runs out; its last status."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while True:
        result = catalog_sync(world, "worker", "--check", "--hostname", node)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result.returncode
        time.sleep(0.5)


def test_worker_check_answers_while_the_worker_runs_and_fails_once_it_stopped(
    world: SyncWorld, tmp_path: Path, unique: str
) -> None:
    node = f"check-{unique}@%h"
    process = start_worker(world, tmp_path, args=["--hostname", node])
    try:
        running = wait_for_check(world, node)
        other = catalog_sync(world, "worker", "--check", "--hostname", f"nobody-{unique}@%h")
    finally:
        stop_worker(process)
    stopped = catalog_sync(world, "worker", "--check", "--hostname", node)

    assert running == 0
    assert other.returncode == 1
    assert f"nobody-{unique}@{socket.gethostname()} did not answer" in other.stderr
    assert stopped.returncode == 1


def test_json_logs_of_a_worker_are_one_object_per_line_with_source_product_and_run(
    world: SyncWorld, tmp_path: Path
) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(5)] + [feed_item("bare", images=0)])
    process = start_worker(world, tmp_path, env={"CATALOG_SYNC_LOG_FORMAT": "json"})
    try:
        run_id = sync_through_worker(world, SOURCE, "full")
    finally:
        stop_worker(process)

    lines = [line for line in (tmp_path / "worker.log").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # any line that is not JSON fails here
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    pushes = [r for r in records if r["logger"] == "celery.app.trace" and "catalog_sync.push[" in r["message"]]
    assert {r["product"] for r in pushes} >= {str(n) for n in range(5)}
    assert all(r["source"] == SOURCE for r in pushes)
    # The account the source writes to, resolved from the sources file (none named: the default one)
    assert all(r["account"] == "default" for r in pushes)
    finished = [r for r in records if r["message"].startswith("sync finished")]
    assert [(r["source"], r["run"]) for r in finished] == [(SOURCE, run_id)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_worker_serves_the_metrics_of_all_its_processes(world: SyncWorld, tmp_path: Path) -> None:
    # Given a catalog that answers 503 twice, and 429 when pushed faster than 20 a second
    world.admin.post("/_emulator/config", json={"fail_next": 2, "rate_limit": 20, "burst": 2}).raise_for_status()
    write_feed(world.feed, [feed_item(str(n)) for n in range(12)])
    port = free_port()
    process = start_worker(world, tmp_path, concurrency=3, args=["--metrics-port", str(port)])
    try:
        sync_through_worker(world, SOURCE, "full")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        stop_worker(process)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def calls(code: str) -> float:
        return samples.get(
            ("catalog_sync_catalog_calls_total", (("code", code), ("endpoint", "products"), ("method", "POST"))), 0
        )

    stats = world.stats()
    # Then the sum over the prefork children matches what the catalog saw
    assert calls("200") + calls("201") == stats["upserts"] == 12
    assert calls("503") == 2
    rate_limited = samples.get(("catalog_sync_catalog_rate_limited_total", ()), 0)
    assert rate_limited == calls("429")
    assert samples[("catalog_sync_pushes_total", (("outcome", "upserted"), ("source", SOURCE)))] == 12
    waits = samples[("catalog_sync_budget_wait_seconds_count", (("priority", "bulk"),))]
    assert waits >= 12 + 2 + rate_limited
    latency = samples[("catalog_sync_catalog_call_seconds_count", (("endpoint", "products"), ("method", "POST")))]
    assert latency == 12 + 2 + rate_limited
