"""The sync core in one process: plan, push and reconcile against the catalog emulator over real sockets, with the
real feed connector and a real SQLite state database (PostgreSQL where marked)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.base import ImageRef, SourceProduct
from ground.errors import SourceError
from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, sync_world, write_feed
from worker.feeder import feed
from worker.inline import InlineDispatcher
from worker.operations import reconcile, run_sync, sync_product
from worker.plan import desired_row
from worker.push import Outcome, push
from worker.state import DELETED, utcnow


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path) as w:
        yield w


def full_sync(world: SyncWorld, **kwargs: object) -> InlineDispatcher:
    dispatcher = InlineDispatcher(world.runtime)
    run_sync(world.runtime, SOURCE, "full", dispatcher, **kwargs)  # type: ignore[arg-type]
    dispatcher.drain(SOURCE, timeout=10)
    return dispatcher


def test_a_full_sync_makes_the_catalog_equal_to_the_feeds_active_products(world: SyncWorld) -> None:
    items = [feed_item(str(n), images=(n % 12) + 1) for n in range(20)]
    items += [feed_item("draft-1", status="draft"), feed_item("bare", images=0)]
    write_feed(world.feed, items)

    full_sync(world)

    catalog = world.catalog_products()
    assert sorted(catalog) == sorted(ext(str(n)) for n in range(20))
    product = catalog[ext("11")]
    assert product["title"] == "Product 11"
    assert product["description"] == "About 11 & more"
    assert [image["sourceUrl"] for image in product["images"]] == [f"https://cdn.example/11/{n}.jpg" for n in range(10)]
    assert product["metadata"]["source"] == SOURCE
    bare = world.runtime.store.get(SOURCE, "bare")
    assert bare is not None and bare.status == "skipped" and bare.skip_reason == "no_images"


def test_an_unchanged_source_costs_no_catalog_call(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(10)])
    full_sync(world)
    world.reset_stats()

    full_sync(world)

    assert world.stats()["total_requests"] == 0


def test_only_the_changed_product_is_pushed_again(world: SyncWorld) -> None:
    items = [feed_item(str(n)) for n in range(10)]
    write_feed(world.feed, items)
    full_sync(world)
    world.reset_stats()

    items[3] = feed_item("3", title="Renamed")
    write_feed(world.feed, items)
    full_sync(world)

    assert world.stats()["upserts"] == 1
    assert world.catalog_products()[ext("3")]["title"] == "Renamed"


def test_products_gone_from_a_full_feed_and_deactivated_ones_are_deleted(world: SyncWorld) -> None:
    items = [feed_item(str(n)) for n in range(10)]
    write_feed(world.feed, items)
    full_sync(world)

    write_feed(world.feed, [*items[1:9], feed_item("0", status="archived")])
    full_sync(world)

    assert sorted(world.catalog_products()) == sorted(ext(str(n)) for n in range(1, 9))
    assert world.runtime.store.get(SOURCE, "9").status == "deleted"  # type: ignore[union-attr]
    assert world.runtime.store.get(SOURCE, "0").status == "deleted"  # type: ignore[union-attr]


def test_a_mass_deletion_is_held_until_confirmed(world: SyncWorld) -> None:
    items = [feed_item(str(n)) for n in range(10)]
    write_feed(world.feed, items)
    full_sync(world)

    write_feed(world.feed, items[:5])
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, "full", dispatcher)

    assert report.outcome == "deletion_blocked"
    assert report.deletion_blocked == (5, 10)
    assert len(world.catalog_products()) == 10

    full_sync(world, allow_mass_delete=True)
    assert len(world.catalog_products()) == 5


def test_an_empty_feed_deletes_nothing_without_confirmation(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(4)])
    full_sync(world)

    write_feed(world.feed, [])
    report = run_sync(world.runtime, SOURCE, "full", InlineDispatcher(world.runtime))

    assert report.outcome == "deletion_blocked"
    assert len(world.catalog_products()) == 4


def test_a_broken_document_fails_the_run_and_deletes_nothing(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(4)])
    full_sync(world)

    world.feed.write_text('[{"id": "1", "title": ', encoding="utf-8")
    with pytest.raises(SourceError):
        run_sync(world.runtime, SOURCE, "full", InlineDispatcher(world.runtime))

    assert len(world.catalog_products()) == 4
    run = world.runtime.store.latest_run(SOURCE)
    assert run is not None and run.outcome == "failed" and run.error


def test_malformed_items_are_skipped_with_a_reason_while_the_rest_sync(world: SyncWorld) -> None:
    write_feed(
        world.feed,
        [feed_item("ok-1"), {"title": "no id"}, feed_item("no-title", title=""), feed_item("ok-2")],
    )

    full_sync(world)

    assert sorted(world.catalog_products()) == [ext("ok-1"), ext("ok-2")]
    row = world.runtime.store.get(SOURCE, "no-title")
    assert row is not None and row.status == "skipped" and row.skip_reason == "missing_title"
    run = world.runtime.store.latest_run(SOURCE)
    assert run is not None and run.counts["skipped_without_id"] == 1


def test_a_slow_full_sync_page_never_undoes_a_newer_webhook_update(world: SyncWorld) -> None:
    old = datetime(2026, 1, 1, tzinfo=UTC)
    write_feed(world.feed, [feed_item("1", updated_at=old.isoformat())])
    source = world.runtime.source(SOURCE)
    newer = SourceProduct(
        SOURCE,
        "1",
        old + timedelta(hours=1),
        "active",
        "From the webhook",
        images=(ImageRef("https://cdn.example/w.jpg"),),
    )
    world.runtime.store.write_desired([desired_row(newer, source)])

    full_sync(world)

    assert world.catalog_products()[ext("1")]["title"] == "From the webhook"


def test_an_incremental_run_reads_from_the_last_watermark_with_an_overlap(world: SyncWorld) -> None:
    long_ago = (utcnow() - timedelta(days=30)).isoformat()
    write_feed(world.feed, [feed_item("old", updated_at=long_ago), feed_item("new", updated_at=utcnow().isoformat())])
    full_sync(world)
    world.reset_stats()
    write_feed(
        world.feed,
        [
            feed_item("old", title="silently changed", updated_at=long_ago),
            feed_item("new2", updated_at=utcnow().isoformat()),
        ],
    )

    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, "incremental", dispatcher)
    dispatcher.drain(SOURCE, timeout=10)

    assert report.counts["seen"] == 1  # only the product updated since the watermark
    assert ext("new2") in world.catalog_products()
    assert world.catalog_products()[ext("old")]["title"] == "Product old"


def test_a_retryable_failure_is_rescheduled_then_fails_after_max_attempts(tmp_path: Path) -> None:
    with sync_world(tmp_path, push_max_attempts=2) as world:
        write_feed(world.feed, [feed_item("1")])
        run_sync(world.runtime, SOURCE, "full", _NullDispatcher())
        world.faults(fail_next=10)
        settings = world.runtime.push_settings

        first = push(world.runtime.store, world.runtime.catalog(), SOURCE, "1", settings=settings)
        row = world.runtime.store.get(SOURCE, "1")
        assert first is Outcome.RETRY
        assert row is not None and row.status == "pending" and row.next_attempt_at is not None
        assert row.last_error_code == "HTTP_503"
        assert push(world.runtime.store, world.runtime.catalog(), SOURCE, "1", settings=settings) is Outcome.NOOP

        second = push(world.runtime.store, world.runtime.catalog(), SOURCE, "1", settings=settings, force=True)
        assert second is Outcome.FAILED
        assert world.runtime.store.get(SOURCE, "1").status == "failed"  # type: ignore[union-attr]


def test_a_rate_limited_push_waits_without_counting_an_attempt(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1")])
    run_sync(world.runtime, SOURCE, "full", _NullDispatcher())
    world.runtime.catalog().max_retry_after = 0.0  # any Retry-After reschedules instead of waiting in the call
    world.faults(rate_limit=0.01, burst=1)
    world.admin.post("/tryon/v1/products", json={}, headers={"x-api-key": "test-key"})  # spends the only token

    outcome = push(world.runtime.store, world.runtime.catalog(), SOURCE, "1", settings=world.runtime.push_settings)

    row = world.runtime.store.get(SOURCE, "1")
    assert outcome is Outcome.RATE_LIMITED
    assert row is not None and row.attempts == 0 and row.next_attempt_at is not None
    assert row.next_attempt_at > utcnow()


def test_a_webhook_row_keeps_its_priority_through_a_429_and_a_retry_until_it_converges(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1")])
    recorder = _RecordingDispatcher()
    catalog, store, settings = world.runtime.catalog(), world.runtime.store, world.runtime.push_settings
    sync_product(world.runtime, SOURCE, "1", recorder)  # the path of a webhook's fetch and an admin re-sync
    catalog.max_retry_after = 0.0
    world.faults(account_limit=1, account_window=3600)
    world.admin.post("/tryon/v1/products", json={}, headers={"x-api-key": "test-key"})  # spends the account's budget

    limited = push(store, catalog, SOURCE, "1", settings=settings)
    world.faults(account_limit=None, fail_next=10)
    catalog.max_retry_after = 5.0  # the next push waits out the 429's short cool-down inside the call
    resent_after_429 = feed(world.runtime, recorder, now=utcnow() + timedelta(seconds=200))
    retried = push(store, catalog, SOURCE, "1", settings=settings, force=True)
    world.faults(fail_next=0)
    resent_after_retry = feed(world.runtime, recorder, now=utcnow() + timedelta(hours=1))
    converged = push(store, catalog, SOURCE, "1", settings=settings, force=True)

    assert recorder.calls[0] == (SOURCE, ("1",), True)
    assert (limited, retried, converged) == (Outcome.RATE_LIMITED, Outcome.RETRY, Outcome.UPSERTED)
    # Reconcile sent it on the priority queue both times, never among bulk work.
    assert (resent_after_429.priority, resent_after_429.bulk) == (1, {})
    assert (resent_after_retry.priority, resent_after_retry.bulk) == (1, {})
    assert [call[2] for call in recorder.calls] == [True, True, True]
    assert store.get(SOURCE, "1").priority is False  # type: ignore[union-attr]


def test_a_refused_api_key_pauses_the_source_and_says_why(tmp_path: Path) -> None:
    from pydantic import SecretStr

    with sync_world(tmp_path, catalog_api_key=SecretStr("wrong-key")) as world:
        write_feed(world.feed, [feed_item("1"), feed_item("2")])
        run_sync(world.runtime, SOURCE, "full", _NullDispatcher())

        outcome = push(world.runtime.store, world.runtime.catalog(), SOURCE, "1", settings=world.runtime.push_settings)

        assert outcome is Outcome.PAUSED
        assert "API key" in (world.runtime.store.source_pause(SOURCE) or "")
        assert world.runtime.store.get(SOURCE, "1").status == "pending"  # type: ignore[union-attr]
        assert world.runtime.store.take_due(limit=10, requeue_after=0) == []


def test_duplicate_messages_and_concurrent_pushes_make_one_upsert(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1")])
    run_sync(world.runtime, SOURCE, "full", _NullDispatcher())
    world.faults(latency_ms=50)  # keep the first push in flight while the others arrive
    outcomes: list[Outcome] = []

    def one() -> None:
        outcomes.append(
            push(world.runtime.store, world.runtime.catalog(), SOURCE, "1", settings=world.runtime.push_settings)
        )

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    one()  # a late duplicate after convergence

    assert outcomes.count(Outcome.UPSERTED) == 1
    assert outcomes.count(Outcome.NOOP) == 8
    assert world.stats()["upserts"] == 1
    assert world.runtime.store.get(SOURCE, "1").status == "synced"  # type: ignore[union-attr]


def test_lost_messages_are_redelivered_by_reconcile(tmp_path: Path) -> None:
    # A lead of five slots lets one pass hand all five (a pass hands the account's next `push_lead_slots` pushes).
    with sync_world(tmp_path, requeue_after=0.0, push_lead_slots=5) as world:
        write_feed(world.feed, [feed_item(str(n)) for n in range(5)])
        run_sync(world.runtime, SOURCE, "full", _NullDispatcher())  # every message lost

        dispatcher = InlineDispatcher(world.runtime)
        dispatched = reconcile(world.runtime, dispatcher)

        assert dispatched == 5
        assert sorted(world.catalog_products()) == [ext(str(n)) for n in range(5)]


def test_pushes_a_dead_broker_refused_are_resent_by_the_next_reconcile(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(3)])
    run_sync(world.runtime, SOURCE, "full", _DeadBroker())

    due = world.runtime.store.take_due(limit=10, requeue_after=world.runtime.settings.requeue_after)

    assert sorted(product_id for _, product_id in due) == ["0", "1", "2"]


def test_a_single_product_resync_fetches_and_pushes_it(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1"), feed_item("2")])
    dispatcher = InlineDispatcher(world.runtime)

    sync_product(world.runtime, SOURCE, "2", dispatcher, force=True)

    assert sorted(world.catalog_products()) == [ext("2")]
    write_feed(world.feed, [feed_item("1")])
    sync_product(world.runtime, SOURCE, "2", dispatcher, force=True)
    assert sorted(world.catalog_products()) == []
    assert world.runtime.store.get(SOURCE, "2").desired_hash == DELETED  # type: ignore[union-attr]


class _NullDispatcher:
    """A broker that takes every message and loses it."""

    def push(self, source: str, product_ids: object, *, priority: bool = False, force: bool = False) -> bool:
        return True


class _RecordingDispatcher:
    """A broker that takes every message and remembers (source, ids, priority)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], bool]] = []

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool:
        self.calls.append((source, tuple(product_ids), priority))
        return True


class _DeadBroker:
    """A broker that refuses every message."""

    def push(self, source: str, product_ids: object, *, priority: bool = False, force: bool = False) -> bool:
        return False
