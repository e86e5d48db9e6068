"""A Shopify shop end to end: the emulated shop (Admin GraphQL) → a real worker on Redis → the catalog emulator.
Then 20 edits, 3 archivals and 5 deletions (read from the shop's destroy events) reach the catalog on an incremental
run, and the next full run (a bulk export) finds nothing left to do, with the catalog calls counted: exactly those
changes, nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from emulators import shopify as shopify_emulator
from emulators.server import BackgroundServer, running
from tests.sync_helpers import SyncWorld
from tests.worker_helpers import broker_world, sync_through_worker, worker_running

SOURCE = "shop"
# Enough for several pages of every kind of read; more only makes the test slow on a busy machine.
PRODUCTS = 1_000


@pytest.fixture
def shop() -> Iterator[BackgroundServer]:
    # A fast-restoring cost bucket: pacing is tested elsewhere; here it would only make the test slow.
    with running(shopify_emulator.create_app(products=PRODUCTS, seed=11, restore_rate=5_000)) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, shop: BackgroundServer, redis_url: str) -> Iterator[SyncWorld]:
    sources = (
        f'[[sources]]\nname = "{SOURCE}"\nkind = "shopify"\nurl = "{shop.url}"\n'
        f'access_token = "{shopify_emulator.DEFAULT_ACCESS_TOKEN}"\nexternal_id = "shopify-{{id}}"\n'
        "check_images = false\n"
    )
    with broker_world(tmp_path, redis_url, sources=sources) as w:
        yield w


def test_a_shop_syncs_and_exactly_its_changes_reach_the_catalog(
    world: SyncWorld, shop: BackgroundServer, tmp_path: Path
) -> None:
    store = shop.app.state.shop.store
    listed = [
        p for p in store.iter_products("ID", reverse=False, product_filter=None) if p.status == "ACTIVE" and p.images
    ]
    admin = httpx.Client(base_url=shop.url)
    with worker_running(world, tmp_path):
        first = sync_through_worker(world, SOURCE, "full")

        catalog = world.catalog_products()
        assert set(catalog) == {f"shopify-{p.id}" for p in listed}
        sample = listed[0]
        assert catalog[f"shopify-{sample.id}"]["title"] == sample.title
        assert [i["sourceUrl"] for i in catalog[f"shopify-{sample.id}"]["images"]][:1] == [sample.images[0].url]

        ids = [p.id for p in listed]
        edited, archived, deleted = ids[:20], ids[20:23], ids[23:28]
        for product_id in edited:
            admin.patch(f"/_emulator/products/{product_id}", json={"title": f"Edited {product_id}"}).raise_for_status()
        for product_id in archived:
            admin.patch(f"/_emulator/products/{product_id}", json={"status": "ARCHIVED"}).raise_for_status()
        for product_id in deleted:
            admin.delete(f"/_emulator/products/{product_id}").raise_for_status()
        world.reset_stats()

        second = sync_through_worker(world, SOURCE, "incremental", after_run=first)

        stats = world.stats()
        assert (stats["upserts"], stats["deletes"], stats["total_requests"]) == (20, 8, 28)
        catalog = world.catalog_products()
        assert catalog[f"shopify-{edited[0]}"]["title"] == f"Edited {edited[0]}"
        assert not {f"shopify-{i}" for i in archived + deleted} & set(catalog)

        world.reset_stats()
        sync_through_worker(world, SOURCE, "full", after_run=second)

        stats = world.stats()
        assert (stats["upserts"], stats["deletes"], stats["total_requests"]) == (0, 0, 0)
        assert len(world.catalog_products()) == len(listed) - 8
    admin.close()


@pytest.mark.parametrize("kind", ["shopify-rest", "shopify-storefront"])
def test_the_legacy_rest_and_storefront_kinds_sync_a_shop_through_a_worker(
    kind: str, tmp_path: Path, redis_url: str
) -> None:
    with running(shopify_emulator.create_app(products=300, seed=5)) as small:
        store = small.app.state.shop.store
        everything = store.iter_products("ID", reverse=False, product_filter=None)
        expected = {f"{kind}-{p.id}" for p in everything if p.status == "ACTIVE" and p.images}
        token = "" if kind == "shopify-storefront" else f'access_token = "{shopify_emulator.DEFAULT_ACCESS_TOKEN}"\n'
        sources = (
            f'[[sources]]\nname = "{kind}"\nkind = "{kind}"\nurl = "{small.url}"\n{token}'
            f'external_id = "{{source}}-{{id}}"\ncheck_images = false\n'
        )
        with broker_world(tmp_path, redis_url, sources=sources) as world, worker_running(world, tmp_path):
            sync_through_worker(world, kind, "full")

            assert set(world.catalog_products()) == expected
