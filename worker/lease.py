"""The sync lock as a short lease kept alive while its run works.

One sync of a source runs at a time. The lock is a lease of `sync_lock_seconds` (90 s by default), not a lock held
for the longest conceivable run: a process killed mid-run (SIGKILL, a lost host) stops renewing, and the next sync
takes the lock within a lease instead of hours later. The lease is renewed in two places:

- by the run itself before each page it writes (`check`), so a run that lost its lock (it expired while the
  process was frozen, or an operator cleared it, and another sync took it) notices before it writes another page;
- by a heartbeat thread while a page is read or pushed, since a single page of a slow shop may take longer than
  the lease.

The heartbeat only records a loss; the run raises `LockLost` at its next `check`, where it can stop cleanly. A
renewal that fails for a database outage is retried at the next beat; once no renewal has succeeded for a whole
lease, the lock can no longer be assumed held and counts as lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from ground.errors import SyncError
from worker.state import Store

log = logging.getLogger(__name__)

# Beats per lease: a renewal every third of the lease leaves two more chances before it runs out.
BEATS_PER_LEASE = 3


class LockLost(SyncError):
    """The run no longer holds its source's sync lock: another sync may be reading the source, so this one stops
    without writing further."""


class SyncLease:
    """A held sync lock (its `token`), renewed by a heartbeat thread between `start` and `stop` and by `check`."""

    def __init__(
        self,
        store: Store,
        source: str,
        token: str,
        *,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.source = source
        self.token = token
        self.seconds = seconds
        self._clock = clock
        self._renewed = clock()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SyncLease:
        self._thread = threading.Thread(target=self._beat, name=f"sync-lease-{self.source}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def check(self) -> None:
        """Renew the lease now; raise `LockLost` when it is no longer ours (now, or as the heartbeat found)."""
        if self._lost is None and not self._renew():
            self._lost = "another sync took it or an operator cleared it"
        if self._lost is not None:
            raise LockLost(
                f"the sync of {self.source!r} lost its lock ({self._lost}); it stopped without writing further"
            )

    def _renew(self) -> bool:
        held = self.store.renew_sync_lock(self.source, self.token, seconds=self.seconds)
        if held:
            self._renewed = self._clock()
        return held

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / BEATS_PER_LEASE):
            try:
                if not self._renew():
                    self._lost = "another sync took it or an operator cleared it"
                    return
            except Exception as exc:  # a database outage: the next beat tries again while the lease may still hold
                log.warning("%s: could not renew the sync lock: %s: %s", self.source, type(exc).__name__, exc)
            if self._clock() - self._renewed >= self.seconds:
                self._lost = f"no renewal succeeded for {self.seconds:g} s"
                return
