"""Pushing in the calling process, without a broker: `resync --inline` and `retry --inline`.

The same push code as the workers; retries scheduled by push (`next_attempt_at`) are waited for here, up to a
timeout, so the command returns when the source has converged (or only failures remain).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from worker.push import Outcome, push
from worker.runtime import Runtime

# How often `drain` looks for rows that became due.
POLL_SECONDS = 0.2
# Rows pushed per `take_due` round.
DRAIN_BATCH = 500


class InlineDispatcher:
    def __init__(self, runtime: Runtime, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.runtime = runtime
        self._sleep = sleep
        self.outcomes: dict[Outcome, int] = {}

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool:
        runtime = self.runtime
        for product_id in product_ids:
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

    def drain(self, source: str, *, timeout: float) -> int:
        """Push what is due until the source has converged or `timeout` passes; returns rows still pending."""
        store = self.runtime.store
        deadline = time.monotonic() + timeout
        while True:
            due = store.take_due(limit=DRAIN_BATCH, requeue_after=0, source=source)
            if due:
                self.push(source, [product_id for _, product_id in due])
                continue
            pending = store.unconverged_count(source)
            if pending == 0 or store.source_pause(source) is not None or time.monotonic() >= deadline:
                return pending
            self._sleep(POLL_SECONDS)
