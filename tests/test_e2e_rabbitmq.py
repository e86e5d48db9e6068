"""End to end on RabbitMQ: a feed, a real `catalog-sync worker` consuming from RabbitMQ, the catalog emulator over
sockets. Each test gets a virtual host of its own (created with rabbitmqctl, deleted afterwards), so parallel runs
never consume each other's messages. RabbitMQ must answer at CATALOG_SYNC_TEST_RABBITMQ_URL (default
amqp://guest:guest@127.0.0.1:5672); the test fails, never skips, when it does not."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kombu.connection import Connection

from emulators.server import running
from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, sources_toml, sync_world, write_feed
from tests.webhooks_support import SHOPIFY_SECRET, shopify_headers, shopify_product
from tests.worker_helpers import (
    CONVERGE_TIMEOUT,
    broker_url_for,
    flush_broker,
    sync_through_worker,
    wait_for_run_and_convergence,
    worker_running,
)
from worker.celery_app import app as celery
from worker.celery_app import configure
from worker.webhooks import create_app

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
    with Connection(RABBITMQ_URL, connect_timeout=5) as conn:  # type: ignore[no-untyped-call]  # kombu is untyped
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


SHOP = "shop"
# A Shopify source beside the feed, for webhooks only: a full-payload delivery needs no call to the shop.
SHOP_SOURCE = f"""
[[sources]]
name = "{SHOP}"
kind = "shopify"
url = "https://shop.example"
access_token = "shpat_token"
webhook_secret = "{SHOPIFY_SECRET}"
check_images = false
"""


@pytest.fixture
def world(tmp_path: Path, redis_url: str, rabbitmq_url: str) -> Iterator[SyncWorld]:
    # Redis still holds the global rate limiter; RabbitMQ carries the messages.
    limiter = broker_url_for(redis_url)
    flush_broker(limiter)
    sources = sources_toml(tmp_path / "feed.json") + SHOP_SOURCE
    try:
        # A budget of 20 writes a second keeps the full sync going while the webhook arrives.
        with sync_world(
            tmp_path,
            sources=sources,
            broker_url=rabbitmq_url,
            redis_url=limiter,
            catalog_rate_limit=20.0,
            catalog_burst=2,
        ) as w:
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


def test_a_webhook_arriving_mid_sync_reaches_the_catalog_ahead_of_the_bulk_work_on_rabbitmq(
    world: SyncWorld, tmp_path: Path
) -> None:
    # Given a full sync of 200 products under way on RabbitMQ at 20 writes a second (about 10 s of bulk work)
    write_feed(world.feed, [feed_item(str(n)) for n in range(200)])
    with worker_running(world, tmp_path), running(create_app(world.runtime)) as intake:
        celery.send_task("catalog_sync.sync_source", (SOURCE, "full"), queue="sync")
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while world.stats()["upserts"] < 20:
            assert time.monotonic() < deadline, "the full sync never started writing"
            time.sleep(0.1)

        # When a signed product update arrives mid-way
        body = json.dumps(shopify_product(7, title="Linen shirt", updated_at="2026-01-01T00:00:00Z")).encode()
        answer = httpx.post(f"{intake.url}/webhooks/{SHOP}", content=body, headers=shopify_headers(body, event_id="e1"))
        assert answer.status_code == 200, answer.text

        # Then it reaches the catalog while bulk work still waits, and everything converges
        while ext("7", SHOP) not in world.catalog_products():
            assert time.monotonic() < deadline, "the webhook's product never reached the catalog"
            time.sleep(0.05)
        feed_written = sum(1 for key in world.catalog_products() if key.startswith(f"{SOURCE}-"))
        assert feed_written < 200
        wait_for_run_and_convergence(world, SOURCE)

    catalog = world.catalog_products()
    assert catalog[ext("7", SHOP)]["title"] == "Linen shirt"
    assert sorted(key for key in catalog if key.startswith(f"{SOURCE}-")) == sorted(ext(str(n)) for n in range(200))
