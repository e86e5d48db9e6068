"""`resync --force`, `resync --dry-run` and syncs that fall due while another runs: the catalog emulator over HTTP,
a JSON feed, both state databases."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from connectors.base import Connector
from tests.sync_helpers import API_KEY, SOURCE, SyncWorld, ext, feed_item, sync_world, write_feed
from tests.sync_helpers import invoke_cli as invoke
from worker.inline import InlineDispatcher
from worker.operations import SyncInProgress, run_sync, sync_product
from worker.preview import preview_source

HEADERS = {"x-api-key": API_KEY}


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[SyncWorld]:
    with sync_world(tmp_path, database_url=database_url) as w:
        write_feed(w.feed, [feed_item(str(n)) for n in range(6)])
        full(w)
        yield w


def full(world: SyncWorld, **kwargs: Any) -> Any:
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, "full", dispatcher, **kwargs)
    dispatcher.drain(SOURCE, timeout=10)
    return report


def delete_in_catalog(world: SyncWorld, product_id: str) -> None:
    world.admin.delete(f"/tryon/v1/products/{ext(product_id)}", headers=HEADERS).raise_for_status()


def state_snapshot(world: SyncWorld) -> list[Any]:
    with world.runtime.store.engine.connect() as conn:
        tables = ("products", "runs", "external_ids", "source_state")
        return [sorted(map(tuple, conn.execute(sqlalchemy.text(f"SELECT * FROM {t}")))) for t in tables]  # noqa: S608


# ----------------------------------------------------------------------------------------------------- force


def test_a_product_deleted_in_the_catalog_comes_back_only_when_forced(world: SyncWorld) -> None:
    delete_in_catalog(world, "2")
    dispatcher = InlineDispatcher(world.runtime)

    sync_product(world.runtime, SOURCE, "2", dispatcher, force=True)
    assert ext("2") not in world.catalog_products()  # the hashes say it is there

    sync_product(world.runtime, SOURCE, "2", dispatcher, force=True, resend=True)

    assert ext("2") in world.catalog_products()
    assert world.runtime.store.get(SOURCE, "2").status == "synced"  # type: ignore[union-attr]


def test_a_forced_full_resync_pushes_every_product(world: SyncWorld) -> None:
    delete_in_catalog(world, "0")
    delete_in_catalog(world, "5")
    world.reset_stats()

    full(world, force=True)

    assert world.stats()["upserts"] == 6
    assert sorted(world.catalog_products()) == sorted(ext(str(n)) for n in range(6))
    assert world.runtime.store.status_counts(SOURCE)[SOURCE] == {"synced": 6}


def test_resync_product_force_on_the_command_line(world: SyncWorld) -> None:
    delete_in_catalog(world, "3")

    result = invoke(world, "resync", SOURCE, "--product", "3", "--force", "--inline", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["synced"] == 1
    assert ext("3") in world.catalog_products()


# --------------------------------------------------------------------------------------------------- dry run


def test_a_dry_run_says_what_would_change_and_changes_nothing(world: SyncWorld) -> None:
    write_feed(
        world.feed,
        [
            feed_item("0"),
            feed_item("1", title="Renamed"),
            feed_item("2", status="draft"),
            feed_item("3", images=0),
            feed_item("4"),
            feed_item("new"),
        ],
    )  # 5 is gone from the feed
    before = state_snapshot(world)
    world.reset_stats()

    result = invoke(world, "resync", SOURCE, "--full", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    # A draft, a product without images and one gone from the feed: 3 of 6 removals, which the brake holds.
    assert body["deletion_blocked"] == {"deletions": 3, "wanted": 6}
    assert body["counts"] == {"create": 1, "update": 1, "delete": 1, "skip": 1, "unchanged": 2, "stale": 0}
    changes = {action: [(c["product_id"], c["detail"]) for c in listed] for action, listed in body["changes"].items()}
    assert changes["create"] == [("new", "")]
    assert changes["update"] == [("1", "title")]
    assert sorted(changes["delete"]) == [("2", "inactive")]
    assert changes["skip"] == [("3", "no_images; removed from the catalog")]
    assert world.stats()["total_requests"] == 0
    assert state_snapshot(world) == before


def test_a_dry_run_of_single_products_reads_each_from_the_source(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("0"), feed_item("1", title="New name"), feed_item("3")])
    before = state_snapshot(world)

    result = invoke(world, "resync", SOURCE, "--product", "1", "--product", "2", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["mode"] == "product"
    assert [(c["product_id"], c["detail"]) for c in body["changes"]["update"]] == [("1", "title")]
    assert [(c["product_id"], c["external_id"]) for c in body["changes"]["delete"]] == [("2", ext("2"))]
    assert state_snapshot(world) == before


def test_a_dry_run_of_a_template_change_shows_every_product_moving(tmp_path: Path, database_url: str) -> None:
    with sync_world(tmp_path, database_url=database_url) as world:
        write_feed(world.feed, [feed_item("1"), feed_item("2")])
        full(world)
    (tmp_path / "catalog-sync.toml").unlink()
    with sync_world(tmp_path, database_url=database_url, toml_extra='external_id = "acme-{id}"') as world:
        write_feed(world.feed, [feed_item("1"), feed_item("2")])
        source = world.runtime.source(SOURCE)
        connector = world.runtime.connector(SOURCE)
        try:
            preview = preview_source(world.runtime.store, connector, source, mode="full", mass_delete_share=0.2)
        finally:
            connector.close()

        assert preview.counts["update"] == 2
        first = preview.changes["update"][0]
        assert first.external_id == "acme-1"
        assert first.detail == f"externalId (from {ext('1')})"


def test_a_dry_run_warns_when_the_brake_would_hold_the_deletions(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("0")])

    result = invoke(world, "resync", SOURCE, "--full", "--dry-run")

    assert result.exit_code == 0, result.output
    assert "5 of 6 product(s) would be deleted" in result.stdout


# ------------------------------------------------------------------------------------------- deferred syncs


class _Gate:
    """Wraps the runtime's connector factory: the first run blocks after its first product until released."""

    def __init__(self, world: SyncWorld) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._factory = world.runtime.connector
        self._used = False
        world.runtime.connector = self.connector  # type: ignore[method-assign]

    def connector(self, name: str, *, bulk: bool | None = None) -> Connector:
        inner = self._factory(name, bulk=bulk)
        if self._used:
            return inner
        self._used = True
        gate = self

        class Held:
            def iter_products(self, since: Any) -> Iterator[Any]:
                for index, item in enumerate(inner.iter_products(since)):
                    if index == 1:
                        gate.entered.set()
                        assert gate.release.wait(30)
                    yield item

            def __getattr__(self, attr: str) -> Any:
                return getattr(inner, attr)

        return Held()  # type: ignore[return-value]


def run_in_thread(world: SyncWorld, mode: str, results: dict[str, Any]) -> threading.Thread:
    def target() -> None:
        dispatcher = InlineDispatcher(world.runtime)
        results["report"] = run_sync(world.runtime, SOURCE, mode, dispatcher)  # type: ignore[arg-type]

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_a_full_sync_due_while_an_incremental_runs_waits_and_then_runs(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(5)])  # 5 is gone: only a full run deletes it
    gate = _Gate(world)
    results: dict[str, Any] = {}
    thread = run_in_thread(world, "incremental", results)
    assert gate.entered.wait(30)

    with pytest.raises(SyncInProgress) as deferred:
        run_sync(world.runtime, SOURCE, "full", InlineDispatcher(world.runtime))
    waiting = world.runtime.store.sync_state(SOURCE)
    status = invoke(world, "status", SOURCE, "--json")
    gate.release.set()
    thread.join(30)

    assert deferred.value.waiting == "full"
    assert waiting["running"] and waiting["waiting"]["mode"] == "full"
    assert "a full sync was due" in waiting["waiting"]["reason"]
    assert json.loads(status.stdout)[SOURCE]["sync"]["waiting"]["mode"] == "full"
    modes = [(r.mode, r.outcome) for r in reversed(world.runtime.store.recent_runs(SOURCE, limit=3))]
    assert modes == [("full", "completed"), ("incremental", "completed"), ("full", "completed")]
    assert results["report"].mode == "full"
    assert world.runtime.store.get(SOURCE, "5").desired_hash == "deleted"  # type: ignore[union-attr]
    assert world.runtime.store.sync_state(SOURCE) == {"running": False, "lease_until": None, "waiting": None}


def test_an_incremental_sync_due_while_a_full_runs_is_covered_by_it(world: SyncWorld) -> None:
    gate = _Gate(world)
    results: dict[str, Any] = {}
    thread = run_in_thread(world, "full", results)
    assert gate.entered.wait(30)

    with pytest.raises(SyncInProgress) as deferred:
        run_sync(world.runtime, SOURCE, "incremental", InlineDispatcher(world.runtime))
    gate.release.set()
    thread.join(30)

    assert deferred.value.waiting == "incremental"
    modes = [r.mode for r in reversed(world.runtime.store.recent_runs(SOURCE, limit=3))]
    assert modes == ["full", "full"]  # the set-up run and the one that covered the incremental
    assert world.runtime.store.sync_state(SOURCE)["waiting"] is None


def test_a_waiting_full_sync_left_by_a_dead_holder_runs_with_the_next_sync(world: SyncWorld) -> None:
    store = world.runtime.store
    token = store.acquire_sync_lock(SOURCE, seconds=60)
    assert token is not None
    with pytest.raises(SyncInProgress):
        run_sync(world.runtime, SOURCE, "full", InlineDispatcher(world.runtime))
    with pytest.raises(SyncInProgress) as second:
        run_sync(world.runtime, SOURCE, "incremental", InlineDispatcher(world.runtime))
    assert second.value.waiting == "full"  # an incremental never replaces a waiting full
    store.release_sync_lock(SOURCE, token)  # the holder died without running it

    report = run_sync(world.runtime, SOURCE, "incremental", InlineDispatcher(world.runtime))

    assert report.mode == "full"
    assert store.sync_state(SOURCE)["waiting"] is None


def test_the_scheduled_sync_task_says_its_run_was_deferred_not_skipped(
    world: SyncWorld, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.runtime import set_runtime
    from worker.tasks import sync_source_task

    store = world.runtime.store
    token = store.acquire_sync_lock(SOURCE, seconds=60)
    assert token is not None
    set_runtime(world.runtime)
    try:
        with caplog.at_level("INFO", logger="worker.operations"):
            result = sync_source_task(SOURCE, "full")
    finally:
        set_runtime(None)
        store.release_sync_lock(SOURCE, token)

    assert result["outcome"] == "deferred" and result["waiting"] == "full"
    assert "full sync deferred" in caplog.text
    assert store.sync_state(SOURCE)["waiting"]["mode"] == "full"
