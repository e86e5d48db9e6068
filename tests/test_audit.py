"""The audit: list the catalog emulator over HTTP, compare with the state (SQLite and PostgreSQL), repair."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.sync_helpers import API_KEY, SyncWorld, ext, feed_item, invoke_cli, sync_world, write_feed
from worker.celery_app import beat_schedule
from worker.embedded import embedded_worker
from worker.inline import InlineDispatcher
from worker.operations import run_audit, run_sync
from worker.runtime import Runtime

HEADERS = {"x-api-key": API_KEY}


def feeds_toml(tmp_path: Path, names: tuple[str, ...] = ("a", "b"), extra: str = "") -> str:
    return "".join(
        f'[[sources]]\nname = "{n}"\nkind = "feed"\nurl = "{tmp_path / f"{n}.json"}"\nformat = "json"\n'
        f"check_images = false\n{extra}\n"
        for n in names
    )


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[SyncWorld]:
    write_feed(tmp_path / "a.json", [feed_item(str(n)) for n in range(10)])
    write_feed(tmp_path / "b.json", [feed_item(str(n)) for n in range(2)])
    with sync_world(tmp_path, sources=feeds_toml(tmp_path), database_url=database_url) as w:
        for name in ("a", "b"):
            full(w.runtime, name)
        yield w


def full(runtime: Runtime, source: str) -> None:
    dispatcher = InlineDispatcher(runtime)
    run_sync(runtime, source, "full", dispatcher)
    dispatcher.drain(source, timeout=10)


def repair(runtime: Runtime, **kwargs: Any) -> Any:
    dispatcher = InlineDispatcher(runtime)
    report = run_audit(runtime, dispatcher, repair=True, **kwargs)
    for name in runtime.sources:
        dispatcher.drain(name, timeout=10)
    return report


def edit_in_catalog(world: SyncWorld, external_id: str, **fields: Any) -> None:
    world.admin.post(
        "/tryon/v1/products", json={"externalId": external_id, **fields}, headers=HEADERS
    ).raise_for_status()


def test_an_audit_of_a_catalog_in_step_finds_nothing_and_lists_200_per_page(world: SyncWorld) -> None:
    world.reset_stats()

    report = run_audit(world.runtime, InlineDispatcher(world.runtime))

    assert report.listed == 12 and report.pages == 1
    assert report.counts["ok"] == 12 and report.drift == 0
    stats = world.stats()
    assert stats["lists"] == 1 and stats["gets"] == 0 and stats["upserts"] == 0


def test_a_product_deleted_and_one_edited_in_the_dashboard_are_found_and_repaired(world: SyncWorld) -> None:
    world.admin.delete(f"/tryon/v1/products/{ext('3', 'a')}", headers=HEADERS).raise_for_status()
    edit_in_catalog(
        world, ext("4", "a"), title="Edited in the dashboard", images=[{"source": {"url": "https://x.example/1.jpg"}}]
    )

    found = run_audit(world.runtime, InlineDispatcher(world.runtime))

    assert (found.counts["missing"], found.counts["differs"], found.counts["ok"]) == (1, 1, 10)
    assert found.examples["missing"][0].external_id == ext("3", "a")
    assert found.examples["differs"][0].detail == "title, images"

    world.reset_stats()
    repaired = repair(world.runtime)

    assert repaired.repaired["resent"] == 2
    assert world.stats()["upserts"] == 2
    catalog = world.catalog_products()
    assert ext("3", "a") in catalog
    assert catalog[ext("4", "a")]["title"] == "Product 4"
    assert run_audit(world.runtime, InlineDispatcher(world.runtime)).drift == 0


def test_orphans_of_a_removed_source_are_deleted_and_strangers_left_alone(
    world: SyncWorld, tmp_path: Path, database_url: str
) -> None:
    edit_in_catalog(world, "vendor-own", title="Not ours", images=[{"source": {"url": "https://x.example/1.jpg"}}])
    (tmp_path / "catalog-sync.toml").write_text(feeds_toml(tmp_path, ("a",)), encoding="utf-8")
    runtime = Runtime.build(world.runtime.settings, embedded=True)
    try:
        found = run_audit(runtime, InlineDispatcher(runtime))
        assert (found.counts["orphaned"], found.counts["unknown"], found.counts["ok"]) == (2, 1, 10)
        assert "no longer configured" in found.examples["orphaned"][0].detail

        repaired = repair(runtime)

        assert repaired.repaired["orphans_deleted"] == 2
        assert sorted(world.catalog_products()) == sorted([ext(str(n), "a") for n in range(10)] + ["vendor-own"])
        assert runtime.store.get("b", "0").status == "deleted"  # type: ignore[union-attr]
        assert run_audit(runtime, InlineDispatcher(runtime)).drift == 0
    finally:
        runtime.close()


def test_a_product_with_our_metadata_unknown_to_the_state_is_an_orphan(world: SyncWorld) -> None:
    edit_in_catalog(
        world,
        "left-behind",
        title="Old template",
        images=[{"source": {"url": "https://x.example/1.jpg"}}],
        metadata={"source": "a", "productId": "1"},
    )

    found = run_audit(world.runtime, InlineDispatcher(world.runtime), source="a")

    assert found.counts["orphaned"] == 1 and found.examples["orphaned"][0].detail == "unknown to the state"
    assert found.counts["ok"] == 10  # source b's products are out of this audit's scope


def test_a_repair_that_would_delete_too_much_is_held_until_confirmed(world: SyncWorld, tmp_path: Path) -> None:
    (tmp_path / "catalog-sync.toml").write_text(feeds_toml(tmp_path, ("b",)), encoding="utf-8")
    runtime = Runtime.build(world.runtime.settings, embedded=True)
    try:
        held = repair(runtime)

        assert held.deletion_blocked == (10, 12)
        assert held.repaired["orphans_deleted"] == 0
        assert len(world.catalog_products()) == 12

        confirmed = repair(runtime, allow_mass_delete=True)

        assert confirmed.repaired["orphans_deleted"] == 10
        assert sorted(world.catalog_products()) == [ext("0", "b"), ext("1", "b")]
    finally:
        runtime.close()


@pytest.mark.parametrize("restore", [True, False])
def test_an_expired_product_is_restored_or_recorded_as_the_source_chooses(
    tmp_path: Path, database_url: str, restore: bool
) -> None:
    shift = {"by": timedelta(days=-3)}

    def clock() -> datetime:
        return datetime.now(UTC) + shift["by"]

    write_feed(tmp_path / "a.json", [feed_item("1"), feed_item("2")])
    sources = feeds_toml(tmp_path, ("a",), extra=f"valid_for_days = 1\nrestore_expired = {str(restore).lower()}\n")
    with sync_world(tmp_path, sources=sources, database_url=database_url, catalog_clock=clock) as world:
        full(world.runtime, "a")
        shift["by"] = timedelta(0)  # three days later, unused: both products expired two days ago
        assert world.runtime.store.get("a", "1").catalog_expires_at is not None  # type: ignore[union-attr]

        found = run_audit(world.runtime, InlineDispatcher(world.runtime))
        assert (found.counts["expired"], found.counts["missing"]) == (2, 0)

        repair(world.runtime)

        row = world.runtime.store.get("a", "1")
        assert row is not None
        if restore:
            assert ext("1", "a") in world.catalog_products() and row.status == "synced"
        else:
            assert ext("1", "a") not in world.catalog_products() and row.status == "expired"
        assert run_audit(world.runtime, InlineDispatcher(world.runtime)).drift == 0


def test_the_audit_command_prints_counts_as_json_and_exits_1_on_unrepaired_drift(world: SyncWorld) -> None:
    world.admin.delete(f"/tryon/v1/products/{ext('0', 'b')}", headers=HEADERS).raise_for_status()

    checked = invoke_cli(world, "audit", "--json")
    repaired = invoke_cli(world, "audit", "--repair", "--inline", "--json")
    again = invoke_cli(world, "audit", "b")

    assert checked.exit_code == 1, checked.output
    body = json.loads(checked.stdout)
    assert body["counts"]["missing"] == 1 and body["examples"]["missing"][0]["external_id"] == ext("0", "b")
    assert repaired.exit_code == 0 and json.loads(repaired.stdout)["repaired"] == {"resent": 1}
    assert again.exit_code == 0 and "audit of source b" in again.stdout
    assert ext("0", "b") in world.catalog_products()


def test_a_scheduled_audit_is_off_by_default_and_repairs_on_its_own(tmp_path: Path, database_url: str) -> None:
    write_feed(tmp_path / "a.json", [feed_item("1"), feed_item("2")])
    with sync_world(tmp_path, sources=feeds_toml(tmp_path, ("a",)), database_url=database_url) as world:
        assert not any(
            name.startswith("audit:") for name in beat_schedule(world.runtime.settings, world.runtime.sources)
        )
        full(world.runtime, "a")
    with sync_world(
        tmp_path, sources=feeds_toml(tmp_path, ("a",)), database_url=database_url, audit_interval=0.5
    ) as world:
        schedule = beat_schedule(world.runtime.settings, world.runtime.sources)
        assert schedule["audit:default"]["kwargs"] == {"repair": True}
        # The new emulator starts empty: both products are missing, and nothing but the audit will notice.

        with embedded_worker(world.runtime, beat=True):
            deadline = time.monotonic() + 60
            while len(world.catalog_products()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)

        assert sorted(world.catalog_products()) == [ext("1", "a"), ext("2", "a")]
