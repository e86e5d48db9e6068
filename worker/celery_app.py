"""The Celery app and its settings (DESIGN.md, "Queues and delivery").

- JSON only; no result backend (the state database records outcomes).
- `acks_late` + `task_reject_on_worker_lost` + prefetch 1: a message is acknowledged after its task ran, so a worker
  killed mid-task has its message re-delivered; push is idempotent, so that is safe.
- Queues `push.priority` (webhooks, admin single products, reconcile), `sync` (paging a source) and `push` (bulk
  convergence), consumed in that order (`queue_order_strategy: priority` keeps the `-Q` order on Redis). Bulk comes
  last: the feeder keeps its queue a few seconds deep, so a sync queued behind it would otherwise wait for a moment
  the queue is empty, which with many accounts never comes.
- Redis `visibility_timeout` longer than the longest task, so a slow sync is not delivered twice.
- No countdown/ETA tasks anywhere (celery#5935, kombu#337): retries are scheduled in the database.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu.entity import Exchange, Queue

from config.settings import Settings
from config.sources import SourceConfig
from worker.broker_fixes import tolerate_detached_channels

QUEUE_PRIORITY = "push.priority"
QUEUE_PUSH = "push"
QUEUE_SYNC = "sync"
QUEUES = (QUEUE_PRIORITY, QUEUE_PUSH, QUEUE_SYNC)
# Longer than the longest task (a full sync of a large shop), so Redis does not re-deliver a running task.
VISIBILITY_TIMEOUT = 12 * 3600
# The in-process broker polls its queues; a short interval keeps the embedded mode responsive.
MEMORY_POLLING_INTERVAL = 0.01
# Publishing to a broker that is down is retried briefly; after that the row's `enqueued_at` lets reconcile
# deliver it later, so nobody waits long on a dead broker.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
# How long a `purge_deliveries` pass waits between runs.
HOUSEKEEPING_INTERVAL = timedelta(hours=1)

# Configured explicitly by `configure()` (the CLI, the embedded mode, tests) rather than from a signal: the
# settings must be read after the process's environment is final, and `catalog-sync worker` is the entry point.
app = Celery("catalog_sync", include=["worker.tasks"])


def configure(
    celery: Celery, settings: Settings, sources: dict[str, SourceConfig] | None = None, *, embedded: bool = False
) -> Celery:
    """Apply the project's settings to a Celery app; `embedded` uses the in-process `memory://` broker."""
    _drop_connections(celery)
    broker = "memory://" if embedded else settings.broker_url
    if broker.startswith(("redis://", "rediss://")):
        tolerate_detached_channels()
    transport_options: dict[str, Any] = {"visibility_timeout": VISIBILITY_TIMEOUT, "queue_order_strategy": "priority"}
    if embedded:
        transport_options = {"polling_interval": MEMORY_POLLING_INTERVAL}
    celery.conf.update(
        broker_url=broker,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A worker outlives any broker outage: Celery's default gives up after 100 reconnection attempts, and a
        # channel error (a Redis restarted under a consumer) would otherwise stop the worker ("Unrecoverable
        # error"). The state database remembers the work; the worker only has to come back.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One direct exchange per queue: queues sharing the default exchange and key would each get every message.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue=QUEUE_PUSH,
        task_routes={
            "catalog_sync.sync_source": {"queue": QUEUE_SYNC},
            # Listing a catalog is long, low-priority reading, like reading a source.
            "catalog_sync.audit": {"queue": QUEUE_SYNC},
            "catalog_sync.sync_product": {"queue": QUEUE_PRIORITY},
            "catalog_sync.reconcile": {"queue": QUEUE_PRIORITY},
            "catalog_sync.housekeeping": {"queue": QUEUE_PRIORITY},
            "catalog_sync.push": {"queue": QUEUE_PUSH},
            "catalog_sync.push_many": {"queue": QUEUE_PUSH},
        },
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        worker_hijack_root_logger=False,
        # Task events (sent, started, succeeded, ...) so Flower and `celery events` show what workers are doing.
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule=beat_schedule(settings, sources or {}),
        timezone="UTC",
        enable_utc=True,
    )
    return celery


def _drop_connections(celery: Celery) -> None:
    # Pools are built on first use for the broker configured then; a reconfigured app must not publish to the old one.
    celery._pool = None
    amqp = celery.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
        # The task sender and its event dispatcher are cached with the settings and the transport of their first
        # use (the event exchange is `fanout` on Redis, `topic` on RabbitMQ): built again for the new broker.
        for cached in ("send_task_message", "_event_dispatcher"):
            amqp.__dict__.pop(cached, None)


def beat_schedule(settings: Settings, sources: dict[str, SourceConfig]) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {
        "reconcile": {"task": "catalog_sync.reconcile", "schedule": settings.reconcile_interval},
        "housekeeping": {"task": "catalog_sync.housekeeping", "schedule": HOUSEKEEPING_INTERVAL.total_seconds()},
    }
    if settings.audit_interval is not None:
        for account in sorted({source.account for source in sources.values()}):
            schedule[f"audit:{account}"] = {
                "task": "catalog_sync.audit",
                "schedule": settings.audit_interval,
                "args": (account,),
                "kwargs": {"repair": True},
            }
    for source in sources.values():
        if not source.enabled:
            continue
        schedule[f"sync:{source.name}:incremental"] = {
            "task": "catalog_sync.sync_source",
            "schedule": source.incremental_interval,
            "args": (source.name, "incremental"),
        }
        schedule[f"sync:{source.name}:full"] = {
            "task": "catalog_sync.sync_source",
            "schedule": source.full_interval,
            "args": (source.name, "full"),
        }
    return schedule


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A prefork child must not reuse the parent's database connections or HTTP sockets.
    from worker.runtime import reset_runtime

    reset_runtime()
