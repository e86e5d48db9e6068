"""Thin Celery tasks: each takes ids, rebuilds nothing but what the runtime caches, and calls a plain function."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery.exceptions import Reject
from redis import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ground.errors import InfrastructureError
from worker import feeder, operations, work_metrics
from worker.celery_app import PUBLISH_RETRY_POLICY, QUEUE_PRIORITY, QUEUE_PUSH, app
from worker.push import Outcome, push
from worker.runtime import get_runtime
from worker.state import RunMode

log = logging.getLogger(__name__)

# Products per priority push message. Publishing through Celery costs about half a millisecond of CPU per message,
# which bounds webhook intake; a few ids per message cut that several-fold. Bulk pushes stay one per message: a
# worker busy with a chunk of rate-limited bulk pushes would hold a webhook's push behind all of them.
PUSH_CHUNK = 8
# Seconds a push waits before handing its message back when the state database (or our Redis) cannot be reached:
# long enough that an outage does not spin the workers, short enough that the row is pushed soon after it ends.
STORE_OUTAGE_PAUSE = 1.0
# What a push cannot do without: our own database and Redis. A push that meets them down blames no product.
OUTAGES = (SQLAlchemyError, RedisError, InfrastructureError)


class CeleryDispatcher:
    """Publishes push tasks over one producer connection: bulk work one product per `push` message, priority work
    in chunks of `push_many`.

    A broker that is down is logged, not raised (the caller clears the rows' enqueued stamps so reconcile sends
    them once the broker is back).
    """

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool:
        queue = QUEUE_PRIORITY if priority else QUEUE_PUSH
        kwargs = {"force": force} if force else None
        try:
            with app.producer_or_acquire() as producer:
                if priority and len(product_ids) > 1:
                    for start in range(0, len(product_ids), PUSH_CHUNK):
                        chunk = list(product_ids[start : start + PUSH_CHUNK])
                        push_many_task.apply_async(
                            (source, chunk), kwargs, queue=queue, producer=producer, retry_policy=PUBLISH_RETRY_POLICY
                        )
                else:
                    for product_id in product_ids:
                        push_task.apply_async(
                            (source, product_id),
                            kwargs,
                            queue=queue,
                            producer=producer,
                            retry_policy=PUBLISH_RETRY_POLICY,
                        )
        except Exception as exc:  # kombu raises several unrelated types for a dead broker
            log.warning(
                "could not enqueue %d push(es) for %s (%s: %s); reconcile will deliver them",
                len(product_ids),
                source,
                type(exc).__name__,
                exc,
            )
            return False
        return True


dispatcher = CeleryDispatcher()


@app.task(name="catalog_sync.push")
def push_task(source: str, product_id: str, force: bool = False) -> str:
    with _requeued_on_outage(source, [product_id]):
        outcome = _push_one(source, product_id, force).value
    _hand_on(source)
    return outcome


@app.task(name="catalog_sync.push_many")
def push_many_task(source: str, product_ids: list[str], force: bool = False) -> list[str]:
    with _requeued_on_outage(source, product_ids):
        outcomes = [_push_one(source, product_id, force).value for product_id in product_ids]
    _hand_on(source)
    return outcomes


@contextmanager
def _requeued_on_outage(source: str, product_ids: Sequence[str]) -> Iterator[None]:
    """A push that cannot lease or record its row (the state database or Redis is down) hands its message back to
    the broker after a short pause instead of failing: the message is not acknowledged away, no attempt is counted,
    and the row is pushed again as soon as the database answers. Pushes already done in a chunk are no-ops then."""
    try:
        yield
    except OUTAGES as exc:
        log.warning(
            "push %s/%s waits for the state database or Redis (%s); the message goes back to the queue",
            source,
            ",".join(product_ids),
            type(exc).__name__,
        )
        time.sleep(STORE_OUTAGE_PAUSE)
        raise Reject(exc, requeue=True) from exc


def _hand_on(source: str) -> None:
    """Fill the room these pushes left on their account's budget (see `feeder`); a failure here only delays the
    next push to the next reconcile tick, so it is logged, never raised over the push's own outcome."""
    try:
        feeder.hand_on(get_runtime(), dispatcher, source)
    except Exception as exc:  # the state database or config went away mid-task; reconcile restarts the chain
        log.warning("could not hand on the next push of %s (%s: %s); reconcile will", source, type(exc).__name__, exc)


def _push_one(source: str, product_id: str, force: bool) -> Outcome:
    runtime = get_runtime()
    catalog = runtime.catalog_for(source)
    outcome = push(runtime.store, catalog, source, product_id, settings=runtime.push_settings, force=force)
    work_metrics.pushes.labels(source, outcome.value).inc()
    if outcome is Outcome.SUPERSEDED:
        # The row changed while we pushed: converge the newer state right away instead of waiting for reconcile.
        dispatcher.push(source, [product_id], priority=True)
    return outcome


@app.task(name="catalog_sync.sync_source")
def sync_source_task(
    source: str,
    mode: RunMode = "incremental",
    allow_mass_delete: bool = False,
    bulk: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    try:
        report = operations.run_sync(
            get_runtime(), source, mode, dispatcher, allow_mass_delete=allow_mass_delete, bulk=bulk, force=force
        )
    except operations.SyncInProgress as exc:
        return {"outcome": "deferred", "waiting": exc.waiting, "reason": str(exc)}
    return {"run_id": report.run_id, "outcome": report.outcome, "counts": dict(report.counts)}


@app.task(name="catalog_sync.sync_product")
def sync_product_task(source: str, product_id: str, force: bool = False, resend: bool = False) -> bool:
    return operations.sync_product(get_runtime(), source, product_id, dispatcher, force=force, resend=resend)


@app.task(name="catalog_sync.reconcile")
def reconcile_task() -> int:
    return operations.reconcile(get_runtime(), dispatcher)


@app.task(name="catalog_sync.audit")
def audit_task(account: str, repair: bool = True) -> dict[str, Any]:
    report = operations.run_audit(get_runtime(), dispatcher, account=account, repair=repair)
    return report.as_dict()


@app.task(name="catalog_sync.housekeeping")
def housekeeping_task() -> int:
    return get_runtime().store.purge_deliveries()
