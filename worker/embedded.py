"""The all-in-one process: a Celery worker on the in-process `memory://` broker, optionally beat, in threads.

This is the embedded default (`catalog-sync run --embedded`, `catalog-sync demo`): a newcomer sees the real queue
path (tasks, acks, the push and sync queues) without installing a broker. It is one process, so its rate limiter
is the in-process twin.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery.beat import EmbeddedService

from worker.celery_app import QUEUES, app, configure
from worker.runtime import Runtime, set_runtime

log = logging.getLogger(__name__)

# Worker threads: one can page a source while another pushes.
DEFAULT_CONCURRENCY = 4
# How long shutdown waits for running tasks.
STOP_TIMEOUT = 15.0


@contextmanager
def embedded_worker(runtime: Runtime, *, concurrency: int = DEFAULT_CONCURRENCY, beat: bool = False) -> Iterator[None]:
    """Run a worker (and beat) in this process for the duration of the block."""
    configure(app, runtime.settings, runtime.sources, embedded=True)
    set_runtime(runtime)
    worker = app.WorkController(
        pool_cls="threads",
        concurrency=concurrency,
        queues=list(QUEUES),
        loglevel=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        hostname="embedded@catalog-sync",
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    scheduler = None
    schedule_dir = None
    if beat:
        schedule_dir = tempfile.TemporaryDirectory(prefix="catalog-sync-beat-")
        app.conf.beat_schedule_filename = str(Path(schedule_dir.name) / "schedule")
        scheduler = EmbeddedService(app, thread=True)
        scheduler.start()
    try:
        yield
    finally:
        if scheduler is not None:
            scheduler.stop()
        worker.stop()
        thread.join(STOP_TIMEOUT)
        if schedule_dir is not None:
            schedule_dir.cleanup()
        set_runtime(None)
