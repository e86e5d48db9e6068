"""The work itself, as plain functions over a `Runtime` and a `Dispatcher`: a source sync, a single-product
sync, a reconcile pass. Celery tasks, the inline admin command and the embedded mode all call these, so every
path runs the same plan and push code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from config.sources import SourceConfig, SplitSource
from connectors.base import SourceProduct
from connectors.colourways import colourways, group_of, splits_shop_products
from connectors.feed import SPLIT_SEPARATOR
from ground.errors import ConfigError, SkippedProduct, SyncError
from worker.audit import AuditReport, audit
from worker.feeder import feed
from worker.images import ImageChecker, ImageVerdict
from worker.lease import SyncLease
from worker.plan import RunReport, desired_row, plan_source, skipped_row
from worker.runtime import Runtime
from worker.state import DEFAULT_ACCOUNT, DesiredRow, RunMode, utcnow

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
    """Another sync of this source is reading it right now; this one waits (`deferred_mode`) and runs after it."""

    def __init__(self, message: str, *, waiting: str) -> None:
        super().__init__(message)
        self.waiting = waiting


def run_sync(
    runtime: Runtime,
    source_name: str,
    mode: RunMode,
    dispatcher: Dispatcher,
    *,
    allow_mass_delete: bool = False,
    bulk: bool | None = None,
    force: bool = False,
) -> RunReport:
    """Read a source, record its desired state, dispatch pushes for what changed (everything, with `force`).

    One sync of a source runs at a time. A sync that falls due while another runs is not dropped: it waits in the
    state database and the running one starts it when it finishes (a waiting full run is never replaced by an
    incremental one, and a full run covers an incremental one that waited for it). A waiting run left behind by a
    holder that died is picked up by the next sync of the source.

    The lock is a short lease renewed while the run reads (`worker/lease.py`): a holder that dies blocks the
    source for at most a lease, and a run that lost its lock stops with `LockLost` before writing another page."""
    runtime.source(source_name)
    store = runtime.store
    token = store.acquire_sync_lock(source_name, seconds=runtime.settings.sync_lock_seconds)
    if token is None:
        reason = f"a {mode} sync was due while another sync of {source_name!r} was running"
        waiting = store.defer_sync(source_name, mode, reason=reason)
        log.info(
            "%s: %s sync deferred: another sync is running; a %s sync runs when it finishes", source_name, mode, waiting
        )
        raise SyncInProgress(
            f"a sync of {source_name!r} is already running; this {mode} sync waits and a {waiting} sync runs when "
            "that one finishes",
            waiting=waiting,
        )
    try:
        with SyncLease(store, source_name, token, seconds=runtime.settings.sync_lock_seconds) as lease:
            left_waiting = store.take_deferred(source_name)
            if left_waiting == "full" and mode != "full":
                log.info(
                    "%s: a full sync was waiting; it runs instead of this %s one (it covers it)", source_name, mode
                )
                mode = "full"
            report = _plan(runtime, source_name, mode, dispatcher, lease, allow_mass_delete, bulk, force)
            while (next_mode := store.take_deferred(source_name)) is not None:
                if next_mode == "incremental" and report.mode == "full":
                    log.info(
                        "%s: the waiting incremental sync is covered by the full run %d", source_name, report.run_id
                    )
                    continue
                log.info("%s: running the %s sync that waited for run %d", source_name, next_mode, report.run_id)
                report = _plan(
                    runtime, source_name, "full" if next_mode == "full" else "incremental", dispatcher, lease
                )
            return report
    finally:
        store.release_sync_lock(source_name, token)


def _plan(
    runtime: Runtime,
    source_name: str,
    mode: RunMode,
    dispatcher: Dispatcher,
    lease: SyncLease,
    allow_mass_delete: bool = False,
    bulk: bool | None = None,
    force: bool = False,
) -> RunReport:
    source = runtime.source(source_name)
    connector = runtime.connector(source_name, bulk=bulk)
    checker = ImageChecker(runtime.store) if source.check_images else None
    try:
        return plan_source(
            runtime.store,
            connector,
            source,
            mode=mode,
            on_changed=_feeding(runtime, dispatcher),
            mass_delete_share=runtime.settings.mass_delete_share,
            mass_delete_window=runtime.settings.mass_delete_window,
            allow_mass_delete=allow_mass_delete,
            image_checker=checker,
            resend=force,
            still_holds_lock=lease.check,
        )
    finally:
        connector.close()
        if checker is not None:
            checker.close()


def sync_product(
    runtime: Runtime,
    source_name: str,
    product_id: str,
    dispatcher: Dispatcher,
    *,
    force: bool = False,
    resend: bool = False,
) -> bool:
    """Fetch one product from its source and converge it at priority. Returns whether the desired row changed.

    `force` (the admin command) overwrites a newer stored row and retries a failed one; `resend` pushes it whatever
    the hashes say (`resync --product ID --force`). A shop source that splits products by an option converges the
    whole product, every colourway at once (`product_id` may name the product or one of its colourways).
    """
    source = runtime.source(source_name)
    if splits_shop_products(source):
        return _sync_colourways(runtime, source, group_of(product_id), dispatcher, force=force, resend=resend)
    connector = runtime.connector(source_name)
    try:
        product = connector.get_product(product_id)
    except SkippedProduct as skip:
        # The source lists it but the record is unusable: recorded, and kept out of the catalog.
        row = skipped_row(skip, source, utcnow())
        changed = (
            row is not None
            and runtime.store.write_desired([row], force=force, priority=True, resend=resend).changed > 0
        )
        if changed:
            dispatch(runtime, dispatcher, source_name, [product_id], priority=True, force=force)
        return changed
    finally:
        connector.close()
    if product is None:
        changed = runtime.store.mark_deleted(
            source_name, product_id, updated_at=None if force else utcnow(), account=source.account
        )
        if resend:
            runtime.store.resend_rows(source_name, [product_id])
    else:
        row = _product_row(runtime, source, product)
        if row is None:
            return False
        changed = runtime.store.write_desired([row], force=force, priority=True, resend=resend).changed > 0
    if changed or force:
        dispatch(runtime, dispatcher, source_name, [product_id], priority=True, force=force)
    return changed


def _product_row(runtime: Runtime, source: SourceConfig, product: SourceProduct) -> DesiredRow | None:
    try:
        return desired_row(product, source, _image_verdicts(runtime, source, product))
    except SkippedProduct as skip:
        return skipped_row(skip, source, product.updated_at)


def _sync_colourways(
    runtime: Runtime, source: SourceConfig, group: str, dispatcher: Dispatcher, *, force: bool, resend: bool
) -> bool:
    """Converge a split shop product: upsert its colourways as the shop has them now, delete the ones the state
    knows for it that the shop no longer has (and every one, with the product, when the shop has no such product).
    The product's own id stays a product when it has no option to split by."""
    store = runtime.store
    connector = runtime.connector(source.name)
    rows: list[DesiredRow] = []
    updated_at: datetime | None = None
    try:
        product = connector.get_product(group)
    except SkippedProduct as skip:
        skipped = skipped_row(skip, source, utcnow())
        rows = [skipped] if skipped is not None else []
        product = None
    finally:
        connector.close()
    if product is not None:
        assert isinstance(source, SplitSource) and source.split_by is not None
        updated_at = product.updated_at
        rows = [row for item in colourways(product, source.split_by) if (row := _product_row(runtime, source, item))]
    present = {row.product_id for row in rows}
    vanished = [pid for pid in store.group_members(source.name, group, SPLIT_SEPARATOR) if pid not in present]
    # The product's own row: a tombstone when the shop has no such product (as for any product), and deleted when
    # it now splits into colourways while the catalog still holds it whole.
    if group not in present and ((product is None and not rows) or store.live_ids(source.name, [group])):
        vanished.append(group)
    changed = list(store.write_desired(rows, force=force, priority=True, resend=resend).changed_ids) if rows else []
    # A colour dropped from the product is dated by the product's edit, so an older read cannot undo a newer one; a
    # product the shop no longer has is gone for good (shop ids are never reused), so its colourways are deleted
    # whatever their stored dates: a shop clock running ahead of ours must not keep them in the catalog.
    moment = None if force or updated_at is None else updated_at
    for product_id in vanished:
        if store.mark_deleted(source.name, product_id, updated_at=moment, account=source.account):
            changed.append(product_id)
    if resend and vanished:
        store.resend_rows(source.name, vanished)
    pushes = list(dict.fromkeys(changed if not (force or resend) else [*present, *vanished]))
    if pushes:
        dispatch(runtime, dispatcher, source.name, pushes, priority=True, force=force)
    return bool(changed)


def accounts(runtime: Runtime) -> list[str]:
    """The catalog accounts of the deployment: the default one and those the sources file names."""
    return sorted(runtime.accounts)


def run_audit(
    runtime: Runtime,
    dispatcher: Dispatcher | None = None,
    *,
    account: str | None = None,
    source: str | None = None,
    repair: bool = False,
    allow_mass_delete: bool = False,
) -> AuditReport:
    """Audit one account (or one source's products in its account); repairs are pushed through `dispatcher`
    (without one, repaired rows wait for the next reconcile pass)."""
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
        runtime.catalog(account),
        runtime.sources,
        account=account,
        source=source,
        repair=repair,
        mass_delete_share=share,
        allow_mass_delete=allow_mass_delete,
        on_resend=None if dispatcher is None else _feeding(runtime, dispatcher),
    )


def _feeding(runtime: Runtime, dispatcher: Dispatcher) -> Callable[[str, Sequence[str]], None]:
    """After rows became bulk work waiting in the database (a sync's changes, an audit's repairs): the feeder
    hands the queue what the budget serves next."""

    def on_changed(_source: str, _ids: Sequence[str]) -> None:
        feed(runtime, dispatcher)

    return on_changed


def _image_verdicts(runtime: Runtime, source: SourceConfig, product: SourceProduct) -> dict[str, ImageVerdict] | None:
    """The image check for one product the admin command syncs, as a run would do it."""
    if not source.check_images or product.status != "active":
        return None
    with ImageChecker(runtime.store) as checker:
        return checker.check(image.url for image in product.images)


def reconcile(runtime: Runtime, dispatcher: Dispatcher) -> int:
    """Hand the queue what is due: every priority row, and bulk rows up to each account's budget; returns how many."""
    return feed(runtime, dispatcher).total
