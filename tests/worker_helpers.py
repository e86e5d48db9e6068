"""Real `catalog-sync worker` processes for end-to-end tests, on a Redis database of their own."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.redis_dbs import db_for
from tests.sync_helpers import CLI, SyncWorld, process_env, run_cli, sync_world
from worker.celery_app import QUEUE_PRIORITY, configure
from worker.celery_app import app as celery

# Generous: a guard against a hung worker, not a performance assertion.
CONVERGE_TIMEOUT = 120.0
# As beat does by default (`reconcile_interval`).
RECONCILE_EVERY = 5.0


def broker_url_for(redis_url: str) -> str:
    """The end-to-end Redis database of this run: flushed freely, so no other run's messages are consumed or lost."""
    return redis_url.rsplit("/", 1)[0] + f"/{db_for('e2e')}"


def flush_broker(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def worker_env(world: SyncWorld) -> dict[str, str]:
    """The environment a `catalog-sync` process needs to share this world's state, broker and catalog."""
    settings = world.runtime.settings
    return process_env(
        world,
        {
            "CATALOG_SYNC_BROKER_URL": settings.broker_url,
            "CATALOG_SYNC_REDIS_URL": settings.redis_url or settings.broker_url,
            "CATALOG_SYNC_CATALOG_RATE_LIMIT": "1000",
            "CATALOG_SYNC_CATALOG_BURST": "50",
        },
    )


def catalog_sync(world: SyncWorld, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the admin command against this world, as an operator would."""
    return run_cli(worker_env(world), *args, timeout=CONVERGE_TIMEOUT)


def start_worker(
    world: SyncWorld,
    tmp_path: Path,
    *,
    concurrency: int = 2,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """A `catalog-sync worker` process writing to tmp_path/worker.log; `args` and `env` are added to the defaults."""
    log = (tmp_path / "worker.log").open("ab")
    command = ["worker", "--concurrency", str(concurrency), *args]
    return subprocess.Popen(
        [*CLI, *command],
        env={**worker_env(world), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def worker_running(world: SyncWorld, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(world, tmp_path)
    try:
        yield process
    finally:
        stop_worker(process)


def wait_for_run_and_convergence(world: SyncWorld, source: str, *, after_run: int = 0) -> int:
    """Wait until a run of `source` newer than `after_run` finished and every row converged; returns the run id.

    While it waits it plays beat's part and asks for a reconcile pass every `RECONCILE_EVERY` seconds: a push that
    met the catalog's 429s on every attempt is due again later and only reconcile hands it back to the workers.
    """
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    next_reconcile = time.monotonic() + RECONCILE_EVERY
    store = world.runtime.store
    while time.monotonic() < deadline:
        run = store.latest_run(source)
        finished = run is not None and run.id > after_run and run.outcome != "running"
        if run is not None and finished and store.unconverged_count(source) == 0:
            return run.id
        if time.monotonic() >= next_reconcile:
            celery.send_task("catalog_sync.reconcile", queue=QUEUE_PRIORITY)
            next_reconcile = time.monotonic() + RECONCILE_EVERY
        time.sleep(0.2)
    pytest.fail(f"{source} did not converge within {CONVERGE_TIMEOUT}s: {store.status_counts(source)}")


@contextmanager
def broker_world(tmp_path: Path, redis_url: str, **kwargs: object) -> Iterator[SyncWorld]:
    """`sync_world` on the end-to-end Redis database, with this process's Celery app publishing there."""
    broker = broker_url_for(redis_url)
    flush_broker(broker)
    try:
        with sync_world(tmp_path, broker_url=broker, redis_url=broker, **kwargs) as world:  # type: ignore[arg-type]
            configure(celery, world.runtime.settings, world.runtime.sources)
            yield world
    finally:
        flush_broker(broker)


def sync_through_worker(world: SyncWorld, source: str, mode: str, *, after_run: int = 0) -> int:
    """Enqueue a sync of `source` for the running worker and wait for it; returns the run id."""
    celery.send_task("catalog_sync.sync_source", (source, mode), queue="sync")
    return wait_for_run_and_convergence(world, source, after_run=after_run)
