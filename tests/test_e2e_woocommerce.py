"""A WooCommerce store end to end: the emulated store → a real worker on Redis → the catalog emulator; then edits,
trashes and a restore reach the catalog on incremental runs, and nothing else does (catalog calls counted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from emulators import woocommerce as woo_emulator
from emulators.server import BackgroundServer, running
from tests.sync_helpers import SyncWorld, sync_world
from tests.worker_helpers import broker_url_for, flush_broker, wait_for_run_and_convergence, worker_running
from worker.celery_app import app as celery
from worker.celery_app import configure

SOURCE = "woo"
PRODUCTS = 1_000


@pytest.fixture
def store() -> Iterator[BackgroundServer]:
    with running(woo_emulator.create_app(products=PRODUCTS, seed=7)) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, store: BackgroundServer, redis_url: str) -> Iterator[SyncWorld]:
    broker = broker_url_for(redis_url)
    flush_broker(broker)
    key, secret = woo_emulator.DEFAULT_CONSUMER_KEY, woo_emulator.DEFAULT_CONSUMER_SECRET
    sources = (
        f'[[sources]]\nname = "{SOURCE}"\nkind = "woocommerce"\nurl = "{store.url}"\n'
        f'consumer_key = "{key}"\nconsumer_secret = "{secret}"\n'
    )
    with sync_world(tmp_path, sources=sources, broker_url=broker, redis_url=broker) as w:
        configure(celery, w.runtime.settings, w.runtime.sources)
        yield w
    flush_broker(broker)


def sync(world: SyncWorld, mode: str, after_run: int = 0) -> int:
    celery.send_task("catalog_sync.sync_source", (SOURCE, mode), queue="sync")
    return wait_for_run_and_convergence(world, SOURCE, after_run=after_run)


def test_a_store_syncs_and_its_edits_trashes_and_restores_reach_the_catalog(
    world: SyncWorld, store: BackgroundServer, tmp_path: Path
) -> None:
    woo = store.app.state.store  # type: ignore[attr-defined]
    listed = [
        p for p in woo.products.values() if p.status == "publish" and (p.images or any(v.image for v in p.variations))
    ]
    admin = httpx.Client(base_url=store.url)
    with worker_running(world, tmp_path):
        first = sync(world, "full")

        synced = {r.external_id for r in world.runtime.store.products(SOURCE, statuses=["synced"])}
        assert len(synced) == len(listed)
        assert set(world.catalog_products()) == synced

        ids = sorted(p.id for p in listed)
        edited, trashed = ids[:20], ids[20:23]
        for product_id in edited:
            admin.patch(f"/_emulator/products/{product_id}", json={"name": f"Edited {product_id}"}).raise_for_status()
        for product_id in trashed:
            admin.post(f"/_emulator/products/{product_id}/trash").raise_for_status()
        world.reset_stats()

        second = sync(world, "incremental", after_run=first)

        stats = world.stats()
        assert (stats["upserts"], stats["deletes"]) == (20, 3)
        catalog = world.catalog_products()
        assert catalog[str(edited[0])]["title"] == f"Edited {edited[0]}"
        assert not set(map(str, trashed)) & set(catalog)

        admin.post(f"/_emulator/products/{trashed[0]}/restore").raise_for_status()
        world.reset_stats()
        sync(world, "incremental", after_run=second)

        assert (world.stats()["upserts"], world.stats()["deletes"]) == (1, 0)
        assert str(trashed[0]) in world.catalog_products()
    admin.close()
