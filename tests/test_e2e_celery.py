"""End to end through real processes: a feed, a real `catalog-sync worker` on the Redis broker, the catalog
emulator over sockets. Uses its own Redis database so no other test's messages are consumed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.sync_helpers import API_KEY, SOURCE, SyncWorld, feed_item, sync_world, write_feed
from worker.celery_app import app as celery
from worker.celery_app import configure
from worker.operations import reconcile, run_sync

# A Redis database of its own: the test flushes it to lose messages on purpose.
BROKER_DB = 12
# Generous: a guard against a hung worker, not a performance assertion.
CONVERGE_TIMEOUT = 90.0


@pytest.fixture
def broker_url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def world(tmp_path: Path, broker_url: str) -> Iterator[SyncWorld]:
    with sync_world(tmp_path, broker_url=broker_url, redis_url=broker_url, requeue_after=0.0) as w:
        configure(celery, w.runtime.settings, w.runtime.sources)
        yield w


def start_worker(world: SyncWorld, tmp_path: Path) -> subprocess.Popen[bytes]:
    settings = world.runtime.settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CATALOG_SYNC_")},
        "CATALOG_SYNC_CONFIG": str(settings.config),
        "CATALOG_SYNC_DATABASE_URL": settings.database_url,
        "CATALOG_SYNC_BROKER_URL": settings.broker_url,
        "CATALOG_SYNC_REDIS_URL": settings.redis_url or settings.broker_url,
        "CATALOG_SYNC_CATALOG_URL": settings.catalog_url,
        "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
        "CATALOG_SYNC_CATALOG_RATE_LIMIT": "500",
    }
    log = (tmp_path / "worker.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-c", "from worker.cli import main; main()", "worker", "--concurrency", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_converged(world: SyncWorld, expected: int) -> None:
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    store = world.runtime.store
    while time.monotonic() < deadline:
        synced = store.status_counts(SOURCE).get(SOURCE, {}).get("synced", 0)
        if synced >= expected and store.unconverged_count(SOURCE) == 0:
            return
        time.sleep(0.2)
    pytest.fail(f"not converged after {CONVERGE_TIMEOUT}s: {store.status_counts(SOURCE)}")


def test_a_feed_reaches_the_catalog_through_a_real_worker(world: SyncWorld, tmp_path: Path) -> None:
    items = [feed_item(str(n), images=(n % 4) + 1) for n in range(60)] + [feed_item("d", status="draft")]
    write_feed(world.feed, items)
    worker = start_worker(world, tmp_path)
    try:
        celery.send_task("catalog_sync.sync_source", (SOURCE, "full"), queue="sync")
        wait_converged(world, 60)
    finally:
        stop_worker(worker)

    catalog = world.catalog_products()
    assert sorted(catalog) == sorted(str(n) for n in range(60))
    assert catalog["7"]["title"] == "Product 7"
    assert len(catalog["7"]["images"]) == 4
    assert world.stats()["upserts"] == 60


def test_messages_lost_with_redis_still_converge_through_reconcile(
    world: SyncWorld, tmp_path: Path, broker_url: str
) -> None:
    from worker.tasks import dispatcher

    write_feed(world.feed, [feed_item(str(n)) for n in range(25)])
    run_sync(world.runtime, SOURCE, "full", dispatcher)  # 25 push messages now wait in Redis
    assert redis.Redis.from_url(broker_url).llen("push") == 25
    redis.Redis.from_url(broker_url).flushdb()  # ... and are lost

    worker = start_worker(world, tmp_path)
    try:
        assert reconcile(world.runtime, dispatcher) == 25
        wait_converged(world, 25)
    finally:
        stop_worker(worker)

    assert len(world.catalog_products()) == 25
