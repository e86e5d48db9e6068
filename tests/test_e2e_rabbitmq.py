"""End to end on RabbitMQ: a feed, a real `catalog-sync worker` consuming from RabbitMQ, the catalog emulator over
sockets. Each test gets a virtual host of its own (created with rabbitmqctl, deleted afterwards), so parallel runs
never consume each other's messages. RabbitMQ must answer at CATALOG_SYNC_TEST_RABBITMQ_URL (default
amqp://guest:guest@127.0.0.1:5672); the test fails, never skips, when it does not."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, sync_world, write_feed
from tests.worker_helpers import broker_url_for, flush_broker, sync_through_worker, worker_running
from worker.celery_app import app as celery
from worker.celery_app import configure

RABBITMQ_URL = os.environ.get("CATALOG_SYNC_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQ_USER = "guest"


def rabbitmqctl(*args: str) -> None:
    try:
        result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        pytest.fail("rabbitmqctl is required to give each RabbitMQ test a virtual host of its own", pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}", pytrace=False)


@pytest.fixture
def rabbitmq_url(unique: str) -> Iterator[str]:
    with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
        try:
            conn.ensure_connection(max_retries=1)
        except Exception as exc:  # kombu's connection errors have no common base worth naming
            pytest.fail(f"RabbitMQ is required at {RABBITMQ_URL} and did not answer: {exc}", pytrace=False)
    vhost = f"catalog-sync-test-{unique}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, RABBITMQ_USER, ".*", ".*", ".*")
        yield f"{RABBITMQ_URL}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def world(tmp_path: Path, redis_url: str, rabbitmq_url: str) -> Iterator[SyncWorld]:
    # Redis still holds the global rate limiter; RabbitMQ carries the messages.
    limiter = broker_url_for(redis_url)
    flush_broker(limiter)
    try:
        with sync_world(tmp_path, broker_url=rabbitmq_url, redis_url=limiter) as w:
            configure(celery, w.runtime.settings, w.runtime.sources)
            yield w
    finally:
        flush_broker(limiter)


def test_a_feed_reaches_the_catalog_through_a_real_worker_on_rabbitmq(world: SyncWorld, tmp_path: Path) -> None:
    items = [feed_item(str(n), images=(n % 3) + 1) for n in range(40)]
    write_feed(world.feed, [*items, feed_item("d", status="draft")])

    with worker_running(world, tmp_path):
        first = sync_through_worker(world, SOURCE, "full")
        # A product dropped from the feed is deleted by the next full run, through the same broker
        write_feed(world.feed, items[:39])
        sync_through_worker(world, SOURCE, "full", after_run=first)

    catalog = world.catalog_products()
    assert sorted(catalog) == sorted(ext(str(n)) for n in range(39))
    assert len(catalog[ext("5")]["images"]) == 3
    assert world.stats()["upserts"] == 40
    assert world.stats()["deletes"] == 1
