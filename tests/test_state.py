"""The state store on real SQLite and PostgreSQL: ordering, change detection, leases, retries, deletion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ground.errors import ConfigError
from worker import schema
from worker.state import DELETED, DesiredRow, Store, make_engine, utcnow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(pid: str, h: str = "h1", at: datetime = T0, *, source: str = "shop", payload: bool = True) -> DesiredRow:
    return DesiredRow(source, pid, f"ext-{pid}", {"externalId": f"ext-{pid}", "h": h} if payload else None, h, at)


def test_new_rows_are_pending_and_unchanged_rows_cost_nothing(store: Store) -> None:
    first = store.write_desired([row("1"), row("2")])
    again = store.write_desired([row("1"), row("2")])

    assert sorted(first.changed_ids) == ["1", "2"]
    assert again.changed == 0 and again.unchanged == 2
    assert store.get("shop", "1").status == "pending"  # type: ignore[union-attr]


def test_an_older_update_never_overwrites_a_newer_row(store: Store) -> None:
    store.write_desired([row("1", "new", T0 + timedelta(hours=1))])

    result = store.write_desired([row("1", "old", T0)])

    assert result.stale == 1 and result.changed == 0
    assert store.get("shop", "1").desired_hash == "new"  # type: ignore[union-attr]


def test_force_overwrites_a_newer_row(store: Store) -> None:
    store.write_desired([row("1", "new", T0 + timedelta(hours=1))])

    store.write_desired([row("1", "admin", T0)], force=True)

    assert store.get("shop", "1").desired_hash == "admin"  # type: ignore[union-attr]


def test_a_batch_with_the_same_product_twice_keeps_the_newest(store: Store) -> None:
    store.write_desired([row("1", "b", T0 + timedelta(minutes=1)), row("1", "a", T0)])

    assert store.get("shop", "1").desired_hash == "b"  # type: ignore[union-attr]


def test_a_claimed_row_cannot_be_claimed_twice_and_converges_on_success(store: Store) -> None:
    store.write_desired([row("1")])
    claim = store.claim("shop", "1", lease_seconds=60)
    assert claim is not None
    assert store.claim("shop", "1", lease_seconds=60) is None  # leased

    assert store.record_success(claim) is True

    stored = store.get("shop", "1")
    assert stored is not None and stored.status == "synced" and stored.synced_hash == "h1"
    assert store.claim("shop", "1", lease_seconds=60) is None  # converged: nothing to do


def test_a_row_changed_during_the_push_stays_pending(store: Store) -> None:
    store.write_desired([row("1", "h1")])
    claim = store.claim("shop", "1", lease_seconds=60)
    assert claim is not None
    store.write_desired([row("1", "h2", T0 + timedelta(minutes=1))])

    assert store.record_success(claim) is False

    stored = store.get("shop", "1")
    assert stored is not None and stored.status == "pending" and stored.synced_hash == "h1"
    assert stored.desired_hash == "h2"


def test_retryable_failures_wait_until_due_then_fail_after_max_attempts(store: Store) -> None:
    store.write_desired([row("1")])
    later = utcnow() + timedelta(minutes=10)
    claim = store.claim("shop", "1", lease_seconds=60)
    assert claim is not None

    status = store.record_failure(claim, code="HTTP_503", message="down", retry_at=later, max_attempts=2)

    assert status == "pending"
    assert store.claim("shop", "1", lease_seconds=60) is None  # not due yet
    assert store.take_due(limit=10, requeue_after=0) == []
    assert store.take_due(limit=10, requeue_after=0, now=later + timedelta(seconds=1)) == [("shop", "1")]
    forced = store.claim("shop", "1", lease_seconds=60, force=True)
    assert forced is not None
    assert store.record_failure(forced, code="HTTP_503", message="down", retry_at=later, max_attempts=2) == "failed"
    assert [r.product_id for r in store.failures("shop")] == ["1"]
    assert store.retry_failed("shop") == 1
    assert store.get("shop", "1").status == "pending"  # type: ignore[union-attr]


def test_take_due_skips_rows_already_enqueued_until_the_message_counts_as_lost(store: Store) -> None:
    store.write_desired([row("1")], priority=True)  # a webhook's write: its caller enqueues it at once

    assert store.take_due(limit=10, requeue_after=600) == []
    assert store.take_due(limit=10, requeue_after=600, now=utcnow() + timedelta(seconds=601)) == [("shop", "1")]


def test_bulk_rows_wait_for_the_feeder_and_are_stamped_when_taken(store: Store) -> None:
    store.write_desired([row("1"), row("2")])

    taken = store.take_due(limit=1, requeue_after=600, priority=False)

    assert taken == [("shop", "1")]
    assert store.in_flight(["shop"], requeue_after=600) == 1
    assert store.due_counts(["shop"], requeue_after=600) == {"shop": 1}


def test_priority_is_kept_through_a_failure_and_a_bulk_rewrite_and_ends_with_convergence(store: Store) -> None:
    store.write_desired([row("1", "h2")], priority=True)
    claim = store.claim("shop", "1", lease_seconds=60)
    assert claim is not None and claim.priority
    store.record_failure(claim, code="HTTP_503", message="down", retry_at=utcnow(), max_attempts=5)
    store.write_desired([row("1", "h2")])  # the same state read again by a full sync

    assert store.take_due(limit=10, requeue_after=0, priority=False) == []
    assert store.take_due(limit=10, requeue_after=0, priority=True) == [("shop", "1")]
    again = store.claim("shop", "1", lease_seconds=60)
    assert again is not None and again.priority
    assert store.record_success(again)
    assert store.get("shop", "1").priority is False  # type: ignore[union-attr]


def test_retry_puts_failed_rows_back_in_line_at_priority(store: Store) -> None:
    store.write_desired([row("1")])
    claim = store.claim("shop", "1", lease_seconds=60)
    assert claim is not None and not claim.priority
    store.record_failure(claim, code="INVALID_IMAGE", message="bad", retry_at=None, max_attempts=5)

    assert store.retry_failed("shop") == 1
    assert store.take_due(limit=10, requeue_after=0, priority=True) == [("shop", "1")]


def test_take_due_skips_paused_sources(store: Store) -> None:
    store.write_desired([row("1")])
    store.pause_source("shop", until=utcnow() + timedelta(minutes=5), reason="bad key")

    assert store.take_due(limit=10, requeue_after=0) == []
    assert store.source_pause("shop") == "bad key"
    store.resume_source("shop")
    assert store.take_due(limit=10, requeue_after=0) == [("shop", "1")]


def test_a_full_run_marks_unseen_products_for_deletion(store: Store) -> None:
    first = store.start_run("shop", "full")
    store.write_desired([row("1"), row("2"), row("3")], run_id=first)
    second = store.start_run("shop", "full")
    store.write_desired([row("1"), row("2")], run_id=second)

    started = utcnow()
    store.write_desired([row("4")])  # created by a webhook while the run was reading

    assert store.count_missing("shop", second, started) == (1, 4)
    assert store.mark_missing_for_deletion("shop", second, started) == ["3"]
    assert store.get("shop", "3").desired_hash == DELETED  # type: ignore[union-attr]
    assert store.count_missing("shop", second, started) == (0, 3)


def test_a_deletion_of_an_unknown_product_leaves_a_tombstone_that_stops_a_late_update(store: Store) -> None:
    assert store.mark_deleted("shop", "9", updated_at=T0 + timedelta(hours=1)) is True

    late = store.write_desired([row("9", "late", T0)])

    assert late.stale == 1
    assert store.get("shop", "9").desired_hash == DELETED  # type: ignore[union-attr]


def test_a_deletion_older_than_the_stored_row_is_refused(store: Store) -> None:
    store.write_desired([row("1", "h", T0 + timedelta(hours=1))])

    assert store.mark_deleted("shop", "1", updated_at=T0) is False


def test_a_delivery_is_remembered_once(store: Store) -> None:
    now = utcnow()

    def seen() -> set[str]:
        return store.delivery_context("shop", ["evt-1"], [], now=now)[0]

    assert seen() == set()
    store.remember_deliveries("shop", ["evt-1"], now=now, keep=timedelta(days=1))
    store.remember_deliveries("shop", ["evt-1", "evt-1"], now=now, keep=timedelta(days=1))
    assert seen() == {"evt-1"}
    assert store.purge_deliveries(now=now + timedelta(days=2)) == 1
    assert seen() == set()


def test_the_sync_lock_admits_one_sync_per_source(store: Store) -> None:
    token = store.acquire_sync_lock("shop", seconds=60)
    assert token is not None
    assert store.acquire_sync_lock("shop", seconds=60) is None
    assert store.acquire_sync_lock("other", seconds=60) is not None
    store.release_sync_lock("shop", token)
    assert store.acquire_sync_lock("shop", seconds=60) is not None


def test_runs_record_the_watermark_of_completed_runs_only(store: Store) -> None:
    ok = store.start_run("shop", "full", started_at=T0)
    store.finish_run(ok, outcome="completed", counts={"seen": 1}, watermark=T0)
    bad = store.start_run("shop", "incremental", started_at=T0 + timedelta(hours=1))
    store.finish_run(bad, outcome="failed", counts={}, watermark=T0 + timedelta(hours=1), error="boom")

    assert store.last_watermark("shop") == T0


def test_an_unmigrated_database_is_refused_with_the_command_to_run(tmp_path: pytest.TempPathFactory) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")

    with pytest.raises(ConfigError, match="catalog-sync db upgrade"):
        schema.check_current(engine)


def test_on_sqlite_a_reader_does_not_wait_for_a_writer(tmp_path: pytest.TempPathFactory) -> None:
    import threading

    from sqlalchemy import update

    from worker.state import ProductRow

    engine = make_engine(f"sqlite:///{tmp_path}/state.db")
    schema.upgrade(engine)
    store = Store(engine)
    store.write_desired([row("1")])
    seen: list[int] = []
    with store.session() as writer:  # holds SQLite's write lock until the block ends
        writer.execute(update(ProductRow).values(attempts=7))
        reader = threading.Thread(target=lambda: seen.append(store.get("shop", "1").attempts))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout=10)  # a reader queued behind the writer would still be waiting here
        finished_while_locked = not reader.is_alive()
    reader.join()
    store.close()

    assert finished_while_locked
    assert seen == [0]  # the snapshot before the writer's commit
