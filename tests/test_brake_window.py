"""The deletion brake counts every removal a full run would cause, and adds them up over a window (issue 15,
finding 3): a feed that lists every product but none usable is held, and three runs that each drop 20 % do not
remove half the catalog. The catalog emulator over HTTP, a JSON feed, both state databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, process_env, run_cli, sync_world, write_feed
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.plan import RunReport
from worker.preview import Preview, preview_source


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[SyncWorld]:
    with sync_world(tmp_path, database_url=database_url) as w:
        yield w


def full(world: SyncWorld, **kwargs: Any) -> RunReport:
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, "full", dispatcher, **kwargs)
    dispatcher.drain(SOURCE, timeout=30)
    return report


def listing(ids: range | list[int]) -> list[dict[str, Any]]:
    return [feed_item(str(n)) for n in ids]


def dry_run(world: SyncWorld) -> Preview:
    connector = world.runtime.connector(SOURCE)
    try:
        settings = world.runtime.settings
        return preview_source(
            world.runtime.store,
            connector,
            world.runtime.source(SOURCE),
            mode="full",
            mass_delete_share=settings.mass_delete_share,
            mass_delete_window=settings.mass_delete_window,
        )
    finally:
        connector.close()


def in_catalog(world: SyncWorld) -> int:
    return len(world.catalog_products())


def held_in_status(world: SyncWorld) -> Any:
    result = run_cli(process_env(world), "status", SOURCE, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[SOURCE]["deletion_held"]


def test_three_runs_each_dropping_a_fifth_are_held_at_the_second(world: SyncWorld) -> None:
    write_feed(world.feed, listing(range(100)))
    full(world)

    write_feed(world.feed, listing(range(20, 100)))  # 20 of 100: at the brake's share, allowed
    assert full(world).outcome == "completed"
    write_feed(world.feed, listing(range(36, 100)))  # 16 of 80 alone, but 36 of 100 within the window
    assert dry_run(world).deletion_blocked == (16, 80)
    second = full(world)
    write_feed(world.feed, listing(range(49, 100)))
    third = full(world)

    assert (second.outcome, third.outcome) == ("deletion_blocked", "deletion_blocked")
    assert third.counts["removed_in_window"] == 20
    assert in_catalog(world) == 80
    held = held_in_status(world)
    assert held["products"] == 29
    assert held["confirm"] == f"catalog-sync resync {SOURCE} --full --allow-mass-delete"

    confirmed = full(world, allow_mass_delete=True)

    assert confirmed.outcome == "completed" and confirmed.counts["removed"] == 29
    assert sorted(world.catalog_products()) == sorted(ext(str(n)) for n in range(49, 100))
    assert held_in_status(world) is None
    write_feed(world.feed, listing(range(50, 100)))  # after a confirmation the window starts afresh
    assert full(world).outcome == "completed"
    assert in_catalog(world) == 50


def test_a_window_of_zero_brakes_each_run_on_its_own(tmp_path: Path, database_url: str) -> None:
    with sync_world(tmp_path, database_url=database_url, mass_delete_window=0) as world:
        write_feed(world.feed, listing(range(100)))
        full(world)
        outcomes = []
        for first in (20, 36, 48):  # 20 of 100, 16 of 80, 12 of 64
            write_feed(world.feed, listing(range(first, 100)))
            outcomes.append(full(world).outcome)

        assert outcomes == ["completed"] * 3
        assert in_catalog(world) == 52


def test_a_listing_of_only_unusable_products_is_held_by_the_brake(world: SyncWorld) -> None:
    write_feed(world.feed, listing(range(20)))
    full(world)

    # Every product still listed, none usable: archived, drafts, without images, without a title.
    unusable = (
        [feed_item(str(n), status="archived") for n in range(0, 5)]
        + [feed_item(str(n), status="draft") for n in range(5, 10)]
        + [feed_item(str(n), images=0) for n in range(10, 15)]
        + [feed_item(str(n), title="") for n in range(15, 20)]
    )
    write_feed(world.feed, unusable)
    assert dry_run(world).deletion_blocked == (20, 20)
    report = full(world)

    assert report.outcome == "deletion_blocked"
    assert report.counts["deletion_blocked"] == 20
    assert in_catalog(world) == 20
    assert held_in_status(world)["products"] == 20

    assert full(world, allow_mass_delete=True).outcome == "completed"
    assert in_catalog(world) == 0


def test_an_archived_product_among_many_is_removed_without_confirmation(world: SyncWorld) -> None:
    write_feed(world.feed, listing(range(20)))
    full(world)

    write_feed(world.feed, [feed_item("0", status="archived"), *listing(range(1, 20))])
    report = full(world)

    assert report.outcome == "completed" and report.counts["removed"] == 1
    assert ext("0") not in world.catalog_products() and in_catalog(world) == 19
