"""The embedded default as a newcomer meets it: `catalog-sync demo` and `catalog-sync run --embedded`, as real
processes (in-process broker, SQLite, the catalog emulator over sockets)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emulators.server import free_port
from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, process_env, sync_world, write_feed

# A guard against a hung process, not a performance assertion.
TIMEOUT = 90.0
COMMAND = [sys.executable, "-c", "from worker.cli import main; main()"]


def test_the_demo_syncs_the_sample_feed_and_its_resync_makes_no_catalog_call(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_SYNC_")}

    result = subprocess.run(
        [*COMMAND, "demo"], env={**env, "COLUMNS": "200"}, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "31 synced" in result.stdout
    # The draft was never in the catalog: counted inactive, as `status` does, not deleted
    assert "1 inactive" in result.stdout
    assert "deleted" not in result.stdout
    assert "no_images" in result.stdout
    assert "catalog calls: 0" in result.stdout


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path, toml_extra="incremental_interval = 1\nfull_interval = 3600\n") as w:
        yield w


def test_run_embedded_syncs_on_schedule_and_serves_webhook_health(world: SyncWorld, tmp_path: Path) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(12)])
    port = free_port()
    env = process_env(
        world,
        {
            "CATALOG_SYNC_CATALOG_RATE_LIMIT": "500",
            # No broker runs for the embedded mode: point the Redis settings nowhere to prove it needs none.
            "CATALOG_SYNC_BROKER_URL": "redis://127.0.0.1:1/0",
        },
    )
    log = (tmp_path / "embedded.log").open("wb")
    process = subprocess.Popen(
        [*COMMAND, "run", "--embedded", "--webhook-port", str(port)], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(world.catalog_products()) < 12 and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "embedded.log").read_text()
            time.sleep(0.2)
        health = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        # A push is counted just after its result is recorded: scrape until the last one is in
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        while 'outcome="upserted",source="feed"} 12.0' not in metrics.text and time.monotonic() < deadline:
            time.sleep(0.2)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert sorted(world.catalog_products()) == sorted(ext(str(n)) for n in range(12))
    assert world.runtime.store.status_counts(SOURCE)[SOURCE] == {"synced": 12}
    assert health.status_code == 200
    assert health.json()["database"] == "ok"
    # The embedded worker's metrics are served with the webhook server's: one scrape sees the whole process
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
    }
    assert samples[("catalog_sync_pushes_total", (("outcome", "upserted"), ("source", SOURCE)))] == 12
    posts = ("catalog_sync_catalog_calls_total", (("code", "201"), ("endpoint", "products"), ("method", "POST")))
    assert samples[posts] == world.stats()["upserts"] == 12
    assert samples[("catalog_sync_products", (("source", SOURCE), ("status", "synced")))] == 12
