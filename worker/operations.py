"""The work itself, as plain functions over a `Runtime` and a `Dispatcher`: a source sync, a single-product
sync, a reconcile pass. Celery tasks, the inline admin command and the embedded mode all call these, so every
path runs the same plan and push code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from config.sources import SourceConfig
from connectors.base import SourceProduct
from worker.errors import SkippedProduct, SyncError
from worker.feeder import feed
from worker.images import ImageChecker, ImageVerdict
from worker.plan import RunReport, desired_row, plan_source, skipped_row
from worker.runtime import Runtime
from worker.state import RunMode, utcnow

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

    def on_changed(_source: str, _ids: Sequence[str]) -> None:
        # The rows wait in the database; the feeder hands the queue what the budget serves next.
        feed(runtime, dispatcher)

    with _sync_lock(runtime, source_name):
        connector = runtime.connector(source_name, bulk=bulk)
        checker = ImageChecker(runtime.store) if source.check_images else None
        try:
            return plan_source(
                runtime.store,
                connector,
                source,
                mode=mode,
                on_changed=on_changed,
                mass_delete_share=runtime.settings.mass_delete_share,
                allow_mass_delete=allow_mass_delete,
                image_checker=checker,
            )
        finally:
            connector.close()
            if checker is not None:
                checker.close()


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
        changed = row is not None and runtime.store.write_desired([row], force=force, priority=True).changed > 0
        if changed:
            dispatch(runtime, dispatcher, source_name, [product_id], priority=True, force=force)
        return changed
    finally:
        connector.close()
    if product is None:
        changed = runtime.store.mark_deleted(source_name, product_id, updated_at=None if force else utcnow())
    else:
        try:
            row = desired_row(product, source, _image_verdicts(runtime, source, product))
        except SkippedProduct as skip:
            skipped = skipped_row(skip, source, product.updated_at)
            if skipped is None:
                return False
            row = skipped
        changed = runtime.store.write_desired([row], force=force, priority=True).changed > 0
    if changed or force:
        dispatch(runtime, dispatcher, source_name, [product_id], priority=True, force=force)
    return changed


def _image_verdicts(runtime: Runtime, source: SourceConfig, product: SourceProduct) -> dict[str, ImageVerdict] | None:
    """The image check for one product the admin command syncs, as a run would do it."""
    if not source.check_images or product.status != "active":
        return None
    with ImageChecker(runtime.store) as checker:
        return checker.check(image.url for image in product.images)


def reconcile(runtime: Runtime, dispatcher: Dispatcher) -> int:
    """Hand the queue what is due: every priority row, and bulk rows up to each account's budget; returns how many."""
    return feed(runtime, dispatcher).total
