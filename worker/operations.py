"""The work itself, as plain functions over a `Runtime` and a `Dispatcher`: a source sync, a single-product
sync, a reconcile pass. Celery tasks, the inline admin command and the embedded mode all call these, so every
path runs the same plan and push code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from worker.audit import AuditReport, audit
from worker.errors import ConfigError, SkippedProduct, SyncError
from worker.plan import RunReport, desired_row, plan_source, skipped_row
from worker.runtime import Runtime
from worker.state import DEFAULT_ACCOUNT, RunMode, utcnow

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Sends push work on its way: onto a queue, or straight into this process. Returns False when the work could
    not be handed over (a broker that is down): the caller clears the rows' enqueued stamps so reconcile sends them
    as soon as it can."""

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool: ...


def dispatch(
    runtime: Runtime,
    dispatcher: Dispatcher,
    source: str,
    product_ids: Sequence[str],
    *,
    priority: bool = False,
    force: bool = False,
) -> None:
    """Hand pushes to the dispatcher; when it cannot take them, let the next reconcile pass resend them."""
    if product_ids and not dispatcher.push(source, product_ids, priority=priority, force=force):
        runtime.store.clear_enqueued(source, product_ids)


class SyncInProgress(SyncError):
    """Another sync of this source is reading it right now."""


@contextmanager
def _sync_lock(runtime: Runtime, source: str) -> Iterator[None]:
    token = runtime.store.acquire_sync_lock(source, seconds=runtime.settings.sync_lock_seconds)
    if token is None:
        raise SyncInProgress(f"a sync of {source!r} is already running; this one is skipped")
    try:
        yield
    finally:
        runtime.store.release_sync_lock(source, token)


def run_sync(
    runtime: Runtime,
    source_name: str,
    mode: RunMode,
    dispatcher: Dispatcher,
    *,
    allow_mass_delete: bool = False,
    bulk: bool | None = None,
) -> RunReport:
    """Read a source, record its desired state, dispatch pushes for what changed."""
    source = runtime.source(source_name)
    with _sync_lock(runtime, source_name):
        connector = runtime.connector(source_name, bulk=bulk)
        try:
            return plan_source(
                runtime.store,
                connector,
                source,
                mode=mode,
                on_changed=lambda name, ids: dispatch(runtime, dispatcher, name, ids),
                mass_delete_share=runtime.settings.mass_delete_share,
                allow_mass_delete=allow_mass_delete,
            )
        finally:
            connector.close()


def sync_product(
    runtime: Runtime, source_name: str, product_id: str, dispatcher: Dispatcher, *, force: bool = False
) -> bool:
    """Fetch one product from its source and converge it at priority. Returns whether the desired row changed.

    `force` (the admin command) overwrites a newer stored row and retries a failed one.
    """
    source = runtime.source(source_name)
    connector = runtime.connector(source_name)
    try:
        product = connector.get_product(product_id)
    except SkippedProduct as skip:
        # The source lists it but the record is unusable: recorded, and kept out of the catalog.
        row = skipped_row(skip, source, utcnow())
        changed = row is not None and runtime.store.write_desired([row], force=force).changed > 0
        if changed:
            dispatch(runtime, dispatcher, source_name, [product_id], priority=True, force=force)
        return changed
    finally:
        connector.close()
    if product is None:
        changed = runtime.store.mark_deleted(source_name, product_id, updated_at=None if force else utcnow())
    else:
        try:
            row = desired_row(product, source)
        except SkippedProduct as skip:
            skipped = skipped_row(skip, source, product.updated_at)
            if skipped is None:
                return False
            row = skipped
        changed = runtime.store.write_desired([row], force=force).changed > 0
    if changed or force:
        dispatch(runtime, dispatcher, source_name, [product_id], priority=True, force=force)
    return changed


def accounts(runtime: Runtime) -> list[str]:
    """The catalog accounts the configured sources write to."""
    return sorted({source.account for source in runtime.sources.values()} | {DEFAULT_ACCOUNT})


def run_audit(
    runtime: Runtime,
    dispatcher: Dispatcher,
    *,
    account: str | None = None,
    source: str | None = None,
    repair: bool = False,
    allow_mass_delete: bool = False,
) -> AuditReport:
    """Audit one account (or one source's products in its account); repairs are pushed through `dispatcher`."""
    share = runtime.settings.mass_delete_share
    if source is not None:
        configured = runtime.source(source)
        account = configured.account
        if configured.mass_delete_share is not None:
            share = configured.mass_delete_share
    account = account or DEFAULT_ACCOUNT
    if account not in accounts(runtime):
        raise ConfigError(f"unknown catalog account {account!r} (known: {', '.join(accounts(runtime))})")
    return audit(
        runtime.store,
        runtime.catalog(),
        runtime.sources,
        account=account,
        source=source,
        repair=repair,
        mass_delete_share=share,
        allow_mass_delete=allow_mass_delete,
        on_resend=lambda name, ids: dispatch(runtime, dispatcher, name, ids),
    )


def reconcile(runtime: Runtime, dispatcher: Dispatcher) -> int:
    """Dispatch the unconverged rows that are due and not in flight; returns how many."""
    due = runtime.store.take_due(limit=runtime.settings.reconcile_batch, requeue_after=runtime.settings.requeue_after)
    by_source: dict[str, list[str]] = {}
    for source, product_id in due:
        by_source.setdefault(source, []).append(product_id)
    for source, ids in by_source.items():
        dispatch(runtime, dispatcher, source, ids)
    if due:
        log.info("reconcile dispatched %d push(es)", len(due))
    return len(due)
