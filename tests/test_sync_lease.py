"""The sync lock is a short lease kept alive by the running sync (issue 15, finding 1): a killed holder blocks its
source for at most a lease, SIGTERM releases the lock at once, a run that lost its lock stops writing, and an
operator can clear a lock. Real `catalog-sync` processes, the catalog emulator over HTTP, both state databases."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from connectors.base import Connector
from tests.sync_helpers import (
    CLI,
    CLI_TIMEOUT,
    SOURCE,
    SyncWorld,
    ext,
    feed_item,
    process_env,
    run_cli,
    sync_world,
    write_feed,
)
from worker.inline import InlineDispatcher
from worker.lease import LockLost, SyncLease
from worker.operations import run_sync
from worker.state import ABANDONED_RUN, UNLOCKED_RUN, RunRow, SourceStateRow, Store, utcnow

# The lease the tests' syncs take: short, so a test waits seconds for a dead holder's lock to run out.
LEASE = 5.0
PRODUCTS = 30
# Added to every catalog answer, so an inline run is still pushing its first page when it is stopped.
SLOW_CATALOG_MS = 300


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[SyncWorld]:
    with sync_world(tmp_path, database_url=database_url) as w:
        write_feed(w.feed, [feed_item(str(n)) for n in range(PRODUCTS)])
        yield w


def env(world: SyncWorld) -> dict[str, str]:
    return process_env(
        world,
        {
            "CATALOG_SYNC_SYNC_LOCK_SECONDS": str(LEASE),
            # The push the killed process was making holds its row this long; the next run waits for it.
            "CATALOG_SYNC_LEASE_SECONDS": str(LEASE),
            # A push lease may not be shorter than one catalog request's timeout.
            "CATALOG_SYNC_CATALOG_TIMEOUT": str(LEASE),
            "CATALOG_SYNC_CATALOG_RATE_LIMIT": "500",
            "CATALOG_SYNC_CATALOG_BURST": "100",
            "CATALOG_SYNC_CATALOG_MAX_ATTEMPTS": "1",
        },
    )


def lock_row(store: Store) -> SourceStateRow | None:
    with store.read_session() as session:
        return session.get(SourceStateRow, SOURCE)


def runs(store: Store) -> list[RunRow]:
    return list(reversed(store.recent_runs(SOURCE)))


def wait_for(condition: Any, what: str, *, process: subprocess.Popen[str] | None = None) -> None:
    """Poll until `condition()`; the guard only stops a hung test, it measures nothing."""
    deadline = time.monotonic() + CLI_TIMEOUT
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the command ended ({process.returncode}) before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def start_slow_full_resync(world: SyncWorld) -> subprocess.Popen[str]:
    """`resync --full --inline` as its own process, stopped in the middle of its run: it holds the source's lock,
    its run is `running` and it is pushing its first page to a slow catalog."""
    world.faults(latency_ms=SLOW_CATALOG_MS)
    process = subprocess.Popen(
        [*CLI, "resync", SOURCE, "--full", "--inline"],
        env=env(world),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: world.stats()["upserts"] >= 1, "the run pushed its first product", process=process)
    assert world.runtime.store.sync_state(SOURCE)["running"]
    assert [r.outcome for r in runs(world.runtime.store)] == ["running"]
    return process


# ------------------------------------------------------------------------------------------- a killed holder


def test_a_killed_resync_blocks_the_source_for_at_most_one_lease(world: SyncWorld) -> None:
    store = world.runtime.store
    process = start_slow_full_resync(world)

    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=CLI_TIMEOUT)
    killed_at = utcnow()

    held = lock_row(store)
    assert held is not None and held.sync_lock_until is not None
    assert held.sync_lock_until <= killed_at + timedelta(seconds=LEASE)  # a lease, not hours
    assert store.acquire_sync_lock(SOURCE, seconds=LEASE) is None  # still held until the lease runs out

    time.sleep(max(0.0, (held.sync_lock_until - utcnow()).total_seconds()) + 0.2)
    world.faults(latency_ms=0)
    result = run_cli(env(world), "resync", SOURCE, "--full", "--inline")

    assert result.returncode == 0, result.stderr
    killed, after = runs(store)
    assert (killed.outcome, killed.error) == ("failed", ABANDONED_RUN)
    assert after.outcome == "completed"
    assert sorted(world.catalog_products()) == sorted(ext(str(n)) for n in range(PRODUCTS))
    assert "abandoned: the process holding the lock stopped" in run_cli(env(world), "status", SOURCE).stdout


def test_sigterm_of_an_inline_resync_releases_the_lock_and_fails_its_run(world: SyncWorld) -> None:
    store = world.runtime.store
    process = start_slow_full_resync(world)

    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=CLI_TIMEOUT)

    assert process.returncode == 128 + signal.SIGTERM
    held = lock_row(store)
    assert held is not None and (held.sync_lock_until, held.sync_lock_token) == (None, None)
    [stopped] = runs(store)
    assert (stopped.outcome, stopped.error) == ("failed", "Terminated: stopped by SIGTERM")
    token = store.acquire_sync_lock(SOURCE, seconds=LEASE)  # the next sync starts at once
    assert token is not None
    store.release_sync_lock(SOURCE, token)


# ----------------------------------------------------------------------------------------- a lost lease


class _Gate:
    """Wraps the runtime's connector factory: the run blocks after its first product until released."""

    def __init__(self, world: SyncWorld) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._factory = world.runtime.connector
        world.runtime.connector = self.connector  # type: ignore[method-assign]

    def connector(self, name: str, *, bulk: bool | None = None) -> Connector:
        inner = self._factory(name, bulk=bulk)
        gate = self

        class Held:
            def iter_products(self, since: Any) -> Iterator[Any]:
                for index, item in enumerate(inner.iter_products(since)):
                    if index == 1:
                        gate.entered.set()
                        assert gate.release.wait(CLI_TIMEOUT)
                    yield item

            def __getattr__(self, attr: str) -> Any:
                return getattr(inner, attr)

        return Held()  # type: ignore[return-value]


def test_a_run_whose_lock_another_sync_took_stops_without_writing(world: SyncWorld) -> None:
    store = world.runtime.store
    gate = _Gate(world)
    failure: dict[str, BaseException] = {}

    def target() -> None:
        try:
            run_sync(world.runtime, SOURCE, "full", InlineDispatcher(world.runtime))
        except BaseException as exc:
            failure["exc"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    assert gate.entered.wait(CLI_TIMEOUT)

    # The run's lease is taken from it, as when it expired while the process was frozen and another sync started.
    assert store.clear_sync_lock(SOURCE, force=True).cleared
    other = store.acquire_sync_lock(SOURCE, seconds=60)
    assert other is not None
    gate.release.set()
    thread.join(CLI_TIMEOUT)

    assert isinstance(failure.get("exc"), LockLost)
    assert store.products(SOURCE) == []  # its page was never written
    [run] = runs(store)
    assert run.outcome == "failed" and run.error is not None and "lost its lock" in run.error
    assert store.renew_sync_lock(SOURCE, other, seconds=60)  # the other sync still holds the lock
    store.release_sync_lock(SOURCE, other)


def test_the_heartbeat_keeps_a_lease_past_its_length_and_notices_when_it_is_taken(world: SyncWorld) -> None:
    store = world.runtime.store
    token = store.acquire_sync_lock(SOURCE, seconds=LEASE)
    assert token is not None
    first = lock_row(store)
    assert first is not None and first.sync_lock_until is not None

    with SyncLease(store, SOURCE, token, seconds=LEASE) as lease:
        time.sleep(max(0.0, (first.sync_lock_until - utcnow()).total_seconds()) + 0.5)
        assert store.acquire_sync_lock(SOURCE, seconds=LEASE) is None  # renewed by the heartbeat alone

        store.clear_sync_lock(SOURCE, force=True)
        taker = store.acquire_sync_lock(SOURCE, seconds=60)
        assert taker is not None
        wait_for(lambda: lease._lost is not None, "the heartbeat noticed the lost lock")
        with pytest.raises(LockLost):
            lease.check()
    assert store.renew_sync_lock(SOURCE, taker, seconds=60)


# ---------------------------------------------------------------------------------------- the operator


def test_unlock_refuses_a_live_lease_unless_forced_and_fails_the_runs_it_left(world: SyncWorld) -> None:
    store = world.runtime.store
    token = store.acquire_sync_lock(SOURCE, seconds=600)
    assert token is not None
    store.start_run(SOURCE, "full")

    refused = run_cli(env(world), "unlock", SOURCE)
    assert refused.returncode == 1
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert store.sync_state(SOURCE)["running"]

    forced = run_cli(env(world), "unlock", SOURCE, "--force", "--json")

    assert forced.returncode == 0, forced.stderr
    assert '"runs_failed": 1' in forced.stdout
    assert not store.sync_state(SOURCE)["running"]
    [run] = runs(store)
    assert (run.outcome, run.error) == ("failed", UNLOCKED_RUN)
    assert not store.renew_sync_lock(SOURCE, token, seconds=60)  # the stopped holder cannot take it back


def test_taking_the_lock_fails_only_the_sync_runs_left_running(world: SyncWorld) -> None:
    store = world.runtime.store
    left = store.start_run(SOURCE, "incremental")
    product = store.start_run(SOURCE, "product")
    other = store.start_run("other", "full")

    token = store.acquire_sync_lock(SOURCE, seconds=LEASE)

    assert token is not None
    with store.engine.connect() as conn:
        outcomes = dict(conn.execute(sqlalchemy.select(RunRow.id, RunRow.outcome)).all())
    assert outcomes == {left: "failed", product: "running", other: "running"}


def test_a_lease_that_cannot_be_renewed_for_its_whole_length_counts_as_lost(caplog: pytest.LogCaptureFixture) -> None:
    # The state database is down (nothing listens on port 1): every renewal fails, so once a whole lease passed
    # without one, another sync may have taken the lock and this run must stop.
    down = Store.from_url("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1")
    try:
        with SyncLease(down, SOURCE, "token", seconds=0.3) as lease:
            wait_for(lambda: lease._lost is not None, "the lease counted as lost")
            with pytest.raises(LockLost, match="no renewal succeeded"):
                lease.check()
    finally:
        down.close()
    assert "could not renew the sync lock" in caplog.text
