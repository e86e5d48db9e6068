"""A WooCommerce store end to end: the emulated store → a real worker on Redis → the catalog emulator; then edits,
trashes and a restore reach the catalog on incremental runs, and nothing else does (catalog calls counted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from emulators import woocommerce as woo_emulator
from emulators.server import BackgroundServer, running
from tests.sync_helpers import SyncWorld, ext
from tests.worker_helpers import broker_world, sync_through_worker, worker_running

SOURCE = "woo"
PRODUCTS = 1_000


@pytest.fixture
def store() -> Iterator[BackgroundServer]:
    with running(woo_emulator.create_app(products=PRODUCTS, seed=7)) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, store: BackgroundServer, redis_url: str) -> Iterator[SyncWorld]:
    key, secret = woo_emulator.DEFAULT_CONSUMER_KEY, woo_emulator.DEFAULT_CONSUMER_SECRET
    sources = (
        f'[[sources]]\nname = "{SOURCE}"\nkind = "woocommerce"\nurl = "{store.url}"\n'
        f'consumer_key = "{key}"\nconsumer_secret = "{secret}"\ncheck_images = false\n'
    )
    with broker_world(tmp_path, redis_url, sources=sources) as w:
        yield w


def test_a_store_syncs_and_its_edits_trashes_and_restores_reach_the_catalog(
    world: SyncWorld, store: BackgroundServer, tmp_path: Path
) -> None:
    woo = store.app.state.store
    listed = [
        p for p in woo.products.values() if p.status == "publish" and (p.images or any(v.image for v in p.variations))
    ]
    admin = httpx.Client(base_url=store.url)
    with worker_running(world, tmp_path):
        first = sync_through_worker(world, SOURCE, "full")

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

        second = sync_through_worker(world, SOURCE, "incremental", after_run=first)

        stats = world.stats()
        assert (stats["upserts"], stats["deletes"]) == (20, 3)
        catalog = world.catalog_products()
        assert catalog[ext(str(edited[0]), SOURCE)]["title"] == f"Edited {edited[0]}"
        assert not {ext(str(t), SOURCE) for t in trashed} & set(catalog)

        admin.post(f"/_emulator/products/{trashed[0]}/restore").raise_for_status()
        world.reset_stats()
        sync_through_worker(world, SOURCE, "incremental", after_run=second)

        assert (world.stats()["upserts"], world.stats()["deletes"]) == (1, 0)
        assert ext(str(trashed[0]), SOURCE) in world.catalog_products()
    admin.close()
