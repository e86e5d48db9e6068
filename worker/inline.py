"""Pushing in the calling process, without a broker: `resync --inline` and `retry --inline`.

The same push code as the workers; retries scheduled by push (`next_attempt_at`) are waited for here, up to a
timeout, so the command returns when the source has converged (or only failures remain), when its pushes are paused
(a refused key, an account without credits), or when the timeout passes. The timeout bounds the pushing from the
moment the dispatcher is made, including pushes handed over while the source is still being read: past it, pushes
are left to reconcile (their rows stay pending) instead of being tried one by one against a catalog that is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from worker.operations import dispatch
from worker.push import Outcome, push
from worker.runtime import Runtime

# How often `drain` looks for rows that became due.
POLL_SECONDS = 0.2
# Rows pushed per `take_due` round.
DRAIN_BATCH = 500


class InlineDispatcher:
    def __init__(
        self,
        runtime: Runtime,
        *,
        timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self._sleep = sleep
        self._clock = clock
        self.deadline = clock() + timeout if timeout is not None else None
        self.outcomes: dict[Outcome, int] = {}

    def expired(self) -> bool:
        return self.deadline is not None and self._clock() >= self.deadline

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool:
        """Push each product now; False once the timeout passed (the rest are left to reconcile)."""
        runtime = self.runtime
        for product_id in product_ids:
            if self.expired():
                return False
            outcome = Outcome.SUPERSEDED
            while outcome is Outcome.SUPERSEDED:
                outcome = push(
                    runtime.store,
                    runtime.catalog_for(source),
                    source,
                    product_id,
                    settings=runtime.push_settings,
                    force=force,
                )
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return True

    def drain(self, source: str, *, timeout: float | None = None) -> int:
        """Push what is due until the source has converged, its pushes are paused, or the timeout (this call's or
        the dispatcher's, whichever comes first) passes; returns rows still pending."""
        store = self.runtime.store
        deadline = self._clock() + timeout if timeout is not None else None
        if self.deadline is not None:
            deadline = self.deadline if deadline is None else min(deadline, self.deadline)
        self.deadline = deadline  # pushes inside this call stop at the same moment
        while True:
            if deadline is not None and self._clock() >= deadline:
                return store.unconverged_count(source)
            due = store.take_due(limit=DRAIN_BATCH, requeue_after=0, source=source)
            if due:
                dispatch(self.runtime, self, source, [product_id for _, product_id in due])
                continue
            pending = store.unconverged_count(source)
            if pending == 0 or store.source_pause(source) is not None:
                return pending
            self._sleep(POLL_SECONDS)
