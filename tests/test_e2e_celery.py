"""End to end through real processes: a feed, a real `catalog-sync worker` on the Redis broker, the catalog
emulator over sockets. Uses its own Redis database so no other test's messages are consumed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, write_feed
from tests.worker_helpers import (
    broker_world,
    catalog_sync,
    flush_broker,
    sync_through_worker,
    wait_for_run_and_convergence,
    worker_running,
)
from worker.operations import reconcile, run_sync


@pytest.fixture
def world(tmp_path: Path, redis_url: str) -> Iterator[SyncWorld]:
    with broker_world(tmp_path, redis_url, requeue_after=0.0) as w:
        yield w


def test_a_feed_reaches_the_catalog_through_a_real_worker(world: SyncWorld, tmp_path: Path) -> None:
    items = [feed_item(str(n), images=(n % 4) + 1) for n in range(60)] + [feed_item("d", status="draft")]
    write_feed(world.feed, items)
    with worker_running(world, tmp_path):
        sync_through_worker(world, SOURCE, "full")

    catalog = world.catalog_products()
    assert sorted(catalog) == sorted(ext(str(n)) for n in range(60))
    assert catalog[ext("7")]["title"] == "Product 7"
    assert len(catalog[ext("7")]["images"]) == 4
    assert world.stats()["upserts"] == 60


def test_messages_lost_with_redis_still_converge_through_reconcile(world: SyncWorld, tmp_path: Path) -> None:
    from worker.tasks import dispatcher

    write_feed(world.feed, [feed_item(str(n)) for n in range(25)])
    run_sync(world.runtime, SOURCE, "full", dispatcher)  # 25 push messages now wait in Redis
    broker = world.runtime.settings.broker_url
    assert redis.Redis.from_url(broker).llen("push") == 25
    flush_broker(broker)  # ... and are lost

    with worker_running(world, tmp_path):
        assert reconcile(world.runtime, dispatcher) == 25
        wait_for_run_and_convergence(world, SOURCE)

    assert len(world.catalog_products()) == 25


def test_resync_wait_follows_the_workers_and_reports_what_they_did(world: SyncWorld, tmp_path: Path) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(30)] + [feed_item("bare", images=0)])
    with worker_running(world, tmp_path):
        result = catalog_sync(world, "resync", SOURCE, "--full", "--wait", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["synced"], summary["skipped"], summary["pending"]) == ("completed", 30, 1, 0)
    assert len(world.catalog_products()) == 30
