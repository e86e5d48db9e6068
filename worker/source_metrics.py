"""Scrape-time gauges of what an operator alerts on that no single process counts: each source's last run (when,
which kind, with what outcome), paused sources, deletions held by the brake, and the broker's queue depths.

They are read from the state database and the broker when `/metrics` is scraped, so every webhook server reports
the same numbers whichever worker did the work, and nothing has to be shared between worker processes. A source
without a run yet has no last-run sample (an alert on "no run for N hours" uses `absent()` or the time); a broker
that does not answer gives `catalog_sync_broker_up 0` and no depth samples, never a stale zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

# How long a scrape waits for the broker: Prometheus's default scrape timeout is 10 s.
BROKER_TIMEOUT = 2.0

QueueDepths = Callable[[], Mapping[str, int]]


class SourceStateCollector(Collector):
    """Last run, pause and held deletions per configured source; messages waiting per queue."""

    def __init__(self, runtime: Callable[[], Runtime], queue_depths: QueueDepths) -> None:
        self._runtime = runtime
        self._queue_depths = queue_depths

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield from self._sources()
        yield from self._queues()

    def _sources(self) -> list[GaugeMetricFamily]:
        last_run = GaugeMetricFamily(
            "catalog_sync_last_run_timestamp_seconds",
            "When the source's latest run finished (or started, while it runs), by kind and outcome.",
            labels=["source", "mode", "outcome"],
        )
        paused = GaugeMetricFamily(
            "catalog_sync_source_paused", "1 while pushes of the source are paused (the catalog refused its key).",
            labels=["source"],
        )
        held = GaugeMetricFamily(
            "catalog_sync_deletions_held",
            "Deletions the latest full run held back behind the mass-deletion brake (0 when none).",
            labels=["source"],
        )
        runtime = self._runtime()
        store = runtime.store
        try:
            for name in sorted(runtime.sources):
                run = store.latest_run(name)
                if run is not None:
                    moment = run.finished_at or run.started_at
                    last_run.add_metric([name, run.mode, run.outcome], moment.timestamp())
                held_back = run.counts.get("deletion_blocked", 0) if run and run.outcome == "deletion_blocked" else 0
                held.add_metric([name], held_back)
                paused.add_metric([name], 1 if store.source_pause(name) else 0)
        except SQLAlchemyError as exc:
            # `catalog_sync_state_database_up` says so; partial families would read as real zeros.
            log.warning("metrics: cannot read source state (%s)", type(exc).__name__)
            return []
        return [last_run, paused, held]

    def _queues(self) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily("catalog_sync_broker_up", "1 when the last scrape could read the broker's queues.")
        try:
            depths = self._queue_depths()
        except Exception as exc:  # kombu raises several unrelated types for a dead broker
            log.warning("metrics: cannot read the broker's queues (%s)", type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        depth = GaugeMetricFamily(
            "catalog_sync_queue_messages", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        for queue, count in sorted(depths.items()):
            depth.add_metric([queue], count)
        up.add_metric([], 1)
        return [depth, up]


def celery_queue_depths() -> dict[str, int]:
    """Messages ready in each of the app's queues, by a (idempotent) declaration that reports the count; the same
    call for Redis and RabbitMQ."""
    from worker.celery_app import app as celery

    options = {"socket_connect_timeout": BROKER_TIMEOUT, "socket_timeout": BROKER_TIMEOUT}
    depths: dict[str, int] = {}
    with celery.connection_for_write(transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT)
        channel = conn.default_channel
        for queue in celery.conf.task_queues:
            _, count, _ = queue.bind(channel).queue_declare()
            depths[queue.name] = int(count)
    return depths


__all__ = ["SourceStateCollector", "celery_queue_depths"]
