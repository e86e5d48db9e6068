"""Shopify reads through the sync core, in one process: the Shopify emulator and the catalog emulator over real
sockets, a real SQLite state database, pushes run inline. A product deleted in the shop leaves the catalog on the
next incremental run (from the shop's destroy events), behind the deletion brake; a full run whose bulk export the
shop will not run reads page by page and says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import shopify as shopify_emulator
from emulators.server import BackgroundServer, running
from tests.sync_helpers import SyncWorld, invoke_cli, sync_world
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.plan import RunReport
from worker.state import RunMode

SOURCE = "shop"
PRODUCTS = 60
TOKEN = shopify_emulator.DEFAULT_ACCESS_TOKEN


@pytest.fixture
def shop() -> Iterator[BackgroundServer]:
    # A fast-restoring bucket and a short bulk timeline: pacing is tested against the connector elsewhere.
    app = shopify_emulator.create_app(products=PRODUCTS, seed=21, restore_rate=5_000, bulk_duration=0.0)
    with running(app) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, shop: BackgroundServer) -> Iterator[SyncWorld]:
    sources = (
        f'[[sources]]\nname = "{SOURCE}"\nkind = "shopify"\nurl = "{shop.url}"\naccess_token = "{TOKEN}"\n'
        'external_id = "shopify-{id}"\ncheck_images = false\n'
    )
    with sync_world(tmp_path, sources=sources) as w:
        yield w


def sync(world: SyncWorld, mode: RunMode, **options: Any) -> RunReport:
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, mode, dispatcher, **options)
    dispatcher.drain(SOURCE, timeout=30)
    return report


def in_catalog(shop: BackgroundServer) -> list[int]:
    """The ids of the shop's products that belong in the catalog (active, with an image), in id order."""
    store = shop.app.state.shop.store
    products = store.iter_products("ID", reverse=False, product_filter=None)
    return [p.id for p in products if p.status == "ACTIVE" and p.images]


def delete_in_shop(shop: BackgroundServer, product_ids: list[int]) -> None:
    """As a merchant's other app would: the Admin REST delete, which the shop records as a destroy event."""
    with httpx.Client(base_url=shop.url, headers={"X-Shopify-Access-Token": TOKEN}) as admin:
        for product_id in product_ids:
            admin.delete(
                f"/admin/api/{shopify_emulator.DEFAULT_API_VERSION}/products/{product_id}.json"
            ).raise_for_status()


def test_a_product_deleted_in_the_shop_leaves_the_catalog_on_the_next_incremental_run(
    world: SyncWorld, shop: BackgroundServer
) -> None:
    listed = in_catalog(shop)
    sync(world, "full")
    assert set(world.catalog_products()) == {f"shopify-{i}" for i in listed}
    gone = listed[:2]
    delete_in_shop(shop, gone)
    world.reset_stats()

    report = sync(world, "incremental")

    assert report.outcome == "completed"
    assert (report.counts["deleted_in_source"], report.counts["removed"]) == (2, 2)
    assert world.stats()["deletes"] == 2
    catalog = world.catalog_products()
    assert not {f"shopify-{i}" for i in gone} & set(catalog)
    assert len(catalog) == len(listed) - 2
    row = world.runtime.store.get(SOURCE, str(gone[0]))
    assert row is not None and row.status == "deleted"

    world.reset_stats()
    again = sync(world, "incremental")

    assert again.counts["removed"] == 0
    assert world.stats()["total_requests"] == 0


def test_deletions_an_incremental_run_finds_are_held_by_the_brake_and_status_says_how_to_confirm(
    world: SyncWorld, shop: BackgroundServer
) -> None:
    listed = in_catalog(shop)
    sync(world, "full")
    gone = listed[: len(listed) // 2]
    delete_in_shop(shop, gone)

    report = sync(world, "incremental")

    assert report.outcome == "deletion_blocked"
    assert report.deletion_blocked == (len(gone), len(listed))
    assert len(world.catalog_products()) == len(listed)
    status = invoke_cli(world, "status", SOURCE, "--json")
    assert status.exit_code == 0, status.output
    held = json.loads(status.output[status.output.index("{") :])[SOURCE]["deletion_held"]
    assert held == {
        "run_id": report.run_id,
        "mode": "incremental",
        "products": len(gone),
        "confirm": f"catalog-sync resync {SOURCE} --allow-mass-delete",
    }

    # The held run did not move the watermark: the confirming run sees the same events.
    confirmed = sync(world, "incremental", allow_mass_delete=True)

    assert confirmed.outcome == "completed"
    assert confirmed.counts["removed"] == len(gone)
    assert len(world.catalog_products()) == len(listed) - len(gone)
    status = invoke_cli(world, "status", SOURCE, "--json")
    assert json.loads(status.output[status.output.index("{") :])[SOURCE]["deletion_held"] is None


def test_a_full_run_whose_bulk_export_fails_reads_page_by_page_and_the_summary_says_so(
    world: SyncWorld, shop: BackgroundServer
) -> None:
    listed = in_catalog(shop)
    httpx.post(
        f"{shop.url}/_emulator/config", json={"bulk_fault": {"status": "FAILED", "error_code": "ACCESS_DENIED"}}
    ).raise_for_status()

    result = invoke_cli(world, "resync", SOURCE, "--full", "--inline", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["bulk_fallback"] == ["access_denied"]
    assert summary["outcome"] == "converged"
    assert set(world.catalog_products()) == {f"shopify-{i}" for i in listed}
    run = world.runtime.store.get_run(summary["run_id"])
    assert run is not None and dict(run.counts)["bulk_fallback"] == 1
    status = invoke_cli(world, "status", SOURCE)
    assert "bulk export unavailable (access_denied)" in " ".join(status.output.split())


def test_resync_bulk_exports_an_incremental_run_in_bulk(world: SyncWorld, shop: BackgroundServer) -> None:
    sync(world, "full")
    operations_before = len(shop.app.state.shop.bulk.summary())

    result = invoke_cli(world, "resync", SOURCE, "--inline", "--bulk", "--json")

    assert result.exit_code == 0, result.output
    assert len(shop.app.state.shop.bulk.summary()) == operations_before + 1


def test_a_dry_run_of_an_incremental_sync_lists_the_products_deleted_in_the_shop(
    world: SyncWorld, shop: BackgroundServer
) -> None:
    listed = in_catalog(shop)
    sync(world, "full")
    delete_in_shop(shop, listed[:1])
    world.reset_stats()

    result = invoke_cli(world, "resync", SOURCE, "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    body = json.loads(result.output[result.output.index("{") :])
    assert body["counts"]["delete"] == 1
    assert body["changes"]["delete"] == [
        {"product_id": str(listed[0]), "external_id": f"shopify-{listed[0]}", "detail": "deleted_in_source"}
    ]
    assert world.stats()["total_requests"] == 0
    assert len(world.catalog_products()) == len(listed)
