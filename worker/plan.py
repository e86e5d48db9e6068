"""From a connector's stream to desired rows: what each product should be in the catalog.

The stream is consumed page by page, so memory is bounded by the page and never by the shop. Only a changed hash
of the normalized catalog payload makes a row pending: an unchanged product costs no catalog call. An older
`updated_at` never overwrites a newer desired row (the state store enforces it in SQL).

Incremental runs read products updated since the watermark (the start time of the last completed run, minus an
overlap for clock skew between the shop and us) and move it only when the run completes. Full runs mark products
the source no longer lists for deletion, unless that would delete more than a safety share of the source's
products: then nothing is deleted and the run records `deletion_blocked` until an operator confirms. The brake counts
every removal the run would cause (unlisted, archived, filtered out, unusable) plus the removals of recent full runs,
so a source cannot be emptied a fifth at a time. A full run also lifts a webhook's deletion of a product the shop
still lists well after it (topic and trigger time are not signed). Incremental runs of a source that can list its
deletions (Shopify's `destroy` events) delete those products, behind the same brake; a run whose deletions the brake
held does not move the watermark, so the next run sees them again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from pydantic import ValidationError

from config.sources import SourceConfig, SplitSource
from connectors.base import (
    Connector,
    ProductDeletion,
    ReadsDeletions,
    ReportsNotes,
    SourceProduct,
    clean_text,
    filter_reason,
    product_id_problem,
)
from connectors.colourways import split_products, splits_shop_products
from ground.errors import SkippedProduct, SourceError
from ground.limits import MAX_IMAGES
from worker.catalog import ProductUpsert, field_path
from worker.colourway_drops import ColourwaysRead, dropped_colour_rows
from worker.images import ImageChecker, ImageVerdict
from worker.state import DELETED, MASS_DELETE_CONFIRMED, DesiredRow, RunMode, RunOutcome, Store, utcnow

log = logging.getLogger(__name__)

# Products read and written per transaction.
PAGE_SIZE = 500
# Incremental reads start this much before the last watermark: shop clocks and ours disagree a little, and a
# product edited while the previous run was reading must not fall between two runs.
WATERMARK_OVERLAP = timedelta(minutes=5)
# Catalog metadata keys for the stable descriptors (volatile fields like price stay out unless configured).
_STABLE_METADATA = ("handle", "url", "vendor", "product_type", "tags")
# The state database's externalId column; a template filled with a long handle must not overflow it.
MAX_EXTERNAL_ID_LENGTH = 512
# How far ahead of ours a source's clock may run before its timestamps are treated as wrong (and clamped to now).
MAX_CLOCK_SKEW = timedelta(hours=1)
# A shop's listing may show a product for a while after its deletion. A deletion older than this that a full run
# still finds listed (a forged or replayed delete delivery: its topic and time are not signed) is lifted by the run.
DELETION_LISTING_LAG = timedelta(minutes=10)
# Characters of a failed run's error kept in the runs table and shown by `status`.
MAX_ERROR_LENGTH = 2000

# Why a product without images is not in the catalog, and the fix.
NO_IMAGES_MESSAGE = "the product has no usable image (the catalog needs at least one): add an image in the shop"

# Run counts `skipped_without_id:<reason>`: records without a product id have no row, so the run lists them by reason.
WITHOUT_ID_PREFIX = "skipped_without_id:"
# The skip reason of a product the source's include/exclude filter keeps out of the catalog.
FILTERED_OUT = "filtered_out"
# The skip reason of a product whose every image failed the image check.
NO_USABLE_IMAGES = "no_usable_images"
# Unusable images named in a skip detail at most.
MAX_IMAGES_IN_DETAIL = 3

# Called with (source, product ids) after each committed page, to enqueue their pushes.
OnChanged = Callable[[str, Sequence[str]], None]


def external_id_for(product_id: str, handle: str | None, source: SourceConfig) -> str:
    """The catalog externalId from the source's template (`{id}`, `{handle}`, `{source}`)."""
    if "{handle}" in source.external_id and not handle:
        raise SkippedProduct(product_id, "missing_handle", f"the external_id template {source.external_id!r} needs it")
    external_id = source.external_id.format(id=product_id, handle=handle or "", source=source.name)
    problem = product_id_problem(external_id, max_length=MAX_EXTERNAL_ID_LENGTH)
    if problem is not None:
        raise SkippedProduct(product_id, "invalid_external_id", f"externalId {external_id[:80]!r}…: {problem}")
    return external_id


def usable_id(product_id: str) -> None:
    """Raise `SkippedProduct` without a product id when `product_id` cannot key a row: the id itself is what is
    wrong, so nothing may be stored under it."""
    problem = product_id_problem(product_id)
    if problem is not None:
        raise SkippedProduct(None, "invalid_id", f"id {product_id[:80]!r}: {problem}")


def source_time(moment: datetime) -> datetime:
    """A source's timestamp, clamped to now when it is further ahead than any clock skew: a product dated 2999 would
    make every later correction look older than it and be dropped as stale for ever. Times within the skew are kept,
    so updates from a shop whose clock runs a little ahead still order among themselves."""
    now = utcnow()
    return now if moment > now + MAX_CLOCK_SKEW else moment


def catalog_payload(product: SourceProduct, source: SourceConfig) -> dict[str, Any]:
    """The full catalog upsert for a product, in the API's wire shape (current image shape only).

    Every field is sent every time so the catalog converges to exactly this, whatever it held before;
    `validForDays` null means kept forever.
    """
    metadata: dict[str, Any] = {"source": source.name, "productId": product.product_id}
    for key in _STABLE_METADATA:
        value = getattr(product, key)
        if value:
            metadata[_camel(key)] = list(value) if isinstance(value, tuple) else value
    group = product.attributes.get("item_group_id")
    if group is not None and group != product.product_id:
        # A colourway of a split product: the catalog keeps which shop product (or feed group) it belongs to.
        metadata["itemGroupId"] = group
    for name in source.metadata_fields:
        if name in product.attributes:
            metadata[name] = product.attributes[name]
    payload = {
        "externalId": external_id_for(product.product_id, product.handle, source),
        "title": product.title,
        "description": product.description,
        "images": [{"source": {"url": image.url}} for image in product.images[:MAX_IMAGES]],
        "metadata": metadata,
        "validForDays": source.valid_for_days,
        # Omitted unless set, so sources that never chose keep their payload (and its hash) as it was.
        **({} if source.auto_detect_image_roles is None else {"autoDetectImageRoles": source.auto_detect_image_roles}),
    }
    cleaned: dict[str, Any] = _cleaned(payload)
    return cleaned


def _cleaned(value: Any) -> Any:
    """Every string of a payload through `clean_text`: one NUL or lone surrogate must not fail a page write or
    the hash of the payload."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {key: _cleaned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value


def desired_row(
    product: SourceProduct, source: SourceConfig, images: Mapping[str, ImageVerdict] | None = None
) -> DesiredRow:
    """The desired state of one product. Inactive products, products the source's filter keeps out (recorded
    `skipped: filtered_out` with the rule) and products without images (`skipped: no_images`) are not in the
    catalog. With `images` (the image check's verdicts by URL), unusable images are dropped, and a product left
    with none is `skipped: no_usable_images`; a URL without a verdict is kept. Raises `SkippedProduct` for a
    product the catalog cannot take."""
    usable_id(product.product_id)
    external_id = external_id_for(product.product_id, product.handle, source)
    updated_at = source_time(product.updated_at)

    def kept_out(reason: str | None = None, detail: str | None = None) -> DesiredRow:
        return DesiredRow(
            source.name,
            product.product_id,
            external_id,
            None,
            DELETED,
            updated_at,
            reason,
            detail,
            account=source.account,
        )

    if product.status != "active":
        return kept_out()
    rule = filter_reason(product, source.include, source.exclude)
    if rule is not None:
        return kept_out(FILTERED_OUT, rule)
    if not product.images:
        return kept_out("no_images", NO_IMAGES_MESSAGE)
    if images is not None:
        dead = _unusable(product, images)
        if dead:
            usable = tuple(image for image in product.images if image.url not in {v.url for v in dead})
            if not usable:
                named = "; ".join(f"{v.url}: {v.describe()}" for v in dead[:MAX_IMAGES_IN_DETAIL])
                more = f" (and {len(dead) - MAX_IMAGES_IN_DETAIL} more)" if len(dead) > MAX_IMAGES_IN_DETAIL else ""
                return kept_out(NO_USABLE_IMAGES, named + more)
            product = replace(product, images=usable)
    upsert = _validated(catalog_payload(product, source), product.product_id)
    return DesiredRow(
        source.name,
        product.product_id,
        external_id,
        upsert.payload(),
        upsert.content_hash(),
        updated_at,
        account=source.account,
    )


def _unusable(product: SourceProduct, images: Mapping[str, ImageVerdict]) -> list[ImageVerdict]:
    verdicts = (images.get(image.url) for image in product.images)
    return [verdict for verdict in verdicts if verdict is not None and verdict.ok is False]


def skipped_row(skip: SkippedProduct, source: SourceConfig, updated_at: datetime | None) -> DesiredRow | None:
    """A record the source lists but that cannot be a catalog product: recorded, and kept out of the catalog."""
    if not skip.product_id or product_id_problem(skip.product_id) is not None:
        return None
    try:
        external_id = external_id_for(skip.product_id, None, source)
    except SkippedProduct:
        external_id = skip.product_id  # the template needs a handle this record does not have; nothing is sent
    moment = source_time(updated_at) if updated_at is not None else None
    return DesiredRow(
        source.name,
        skip.product_id,
        external_id,
        None,
        DELETED,
        moment,
        skip_reason=skip.reason[:64],
        skip_detail=skip.detail or None,
        account=source.account,
    )


def _validated(payload: dict[str, Any], product_id: str) -> ProductUpsert:
    """The request model, catching what the catalog would reject before it costs a call."""
    try:
        return ProductUpsert.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{field_path(error['loc'])}: {error['msg'].removeprefix('Value error, ')}" for error in exc.errors()
        )
        raise SkippedProduct(product_id, "invalid_product", f"the catalog would refuse it: {problems}") from None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# --------------------------------------------------------------------------------------------------- a run


@dataclass
class RunReport:
    run_id: int
    source: str
    mode: RunMode
    started_at: datetime
    outcome: RunOutcome = "running"
    counts: Counter[str] = field(default_factory=Counter)
    error: str | None = None
    deletion_blocked: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"


def plan_source(
    store: Store,
    connector: Connector,
    source: SourceConfig,
    *,
    mode: RunMode,
    on_changed: OnChanged,
    mass_delete_share: float,
    allow_mass_delete: bool = False,
    mass_delete_window: float = 0.0,
    since: datetime | None = None,
    page_size: int = PAGE_SIZE,
    image_checker: ImageChecker | None = None,
    resend: bool = False,
    still_holds_lock: Callable[[], None] | None = None,
) -> RunReport:
    """Read a source and record its desired state; enqueue (through `on_changed`) what changed, or with `resend`
    every product read, whatever the hashes say (`resync --full --force`). With an `image_checker`, each page's
    image URLs are checked (or found in its cache) before its rows are built.

    A failed read fails the run (nothing is deleted, the watermark does not move) and re-raises. So does an
    interrupted one (SIGTERM of the admin command, Ctrl-C): the run is recorded failed, not left `running`.

    `still_holds_lock` is called before each page is written and before deletions; it renews the source's sync
    lock and raises when the run lost it (another sync may be reading the source), which fails the run there.
    """
    started_at = utcnow()
    if mode == "incremental" and since is None:
        watermark = store.last_watermark(source.name)
        since = watermark - WATERMARK_OVERLAP if watermark is not None else None
    run_id = store.start_run(source.name, mode, started_at=started_at)
    report = RunReport(run_id, source.name, mode, started_at)
    full = mode == "full"
    # Products in the catalog that a filter or the image check now keeps out: a full run leaves them unseen, so the
    # deletion brake counts them with the products the source dropped.
    held: list[DesiredRow] = []
    split_by = source.split_by if isinstance(source, SplitSource) else None
    try:
        # An incremental read of a shop split by colour notes what each product split into: a colour it dropped is in
        # no listing, so it is deleted here (a full run deletes it with everything else the shop no longer lists).
        colours = ColourwaysRead() if not full and splits_shop_products(source) else None
        items = split_products(connector.iter_products(since), split_by)
        for page in paged(colours.watch(items) if colours is not None else items, page_size):
            verdicts = _check_images(page, source, image_checker) if image_checker is not None else None
            rows = page_rows(page, source, report.counts, verdicts)
            if full:
                rows = _hold_kept_out(store, source.name, rows, held)
            if still_holds_lock is not None:
                still_holds_lock()
            if full:
                rows = _lift_tombstones(store, report, rows, on_changed)
            _write(store, report, rows, on_changed, run_id=run_id if full else None, resend=resend)
        if full:
            if still_holds_lock is not None:
                still_holds_lock()
            _delete_missing(
                store, source, report, on_changed, mass_delete_share, allow_mass_delete, held, mass_delete_window
            )
        if colours is not None:
            dropped = [
                replace(row, updated_at=source_time(row.updated_at) if row.updated_at is not None else None)
                for row in dropped_colour_rows(store, source, colours)
            ]
            if dropped:
                _write(store, report, dropped, on_changed, run_id=None)
        if not full and since is not None and isinstance(connector, ReadsDeletions):
            if still_holds_lock is not None:
                still_holds_lock()
            deletions = connector.iter_deletions(since)
            _delete_destroyed(store, source, report, deletions, on_changed, mass_delete_share, allow_mass_delete)
    except BaseException as exc:  # an interruption too: a run left `running` would claim the source for ever
        _add_notes(report, connector)
        report.outcome = "failed"
        report.error = _describe(exc)
        store.finish_run(run_id, outcome="failed", counts=dict(report.counts), error=report.error)
        log.error("run %s of %s failed: %s", run_id, source.name, report.error)
        raise
    _add_notes(report, connector)
    if report.outcome == "running":
        report.outcome = "completed"
    # The watermark is the run's start: a product edited while we read is picked up by the next run. A run that
    # held back deletions still read everything, so incremental runs may move on.
    store.finish_run(run_id, outcome=report.outcome, counts=dict(report.counts), watermark=started_at)
    return report


def _write(
    store: Store,
    report: RunReport,
    rows: Sequence[DesiredRow],
    on_changed: OnChanged,
    *,
    run_id: int | None,
    resend: bool = False,
) -> None:
    result = store.write_desired(rows, run_id=run_id, resend=resend)
    report.counts["changed"] += result.changed
    report.counts["unchanged"] += result.unchanged
    report.counts["stale"] += result.stale
    if result.changed_ids:
        on_changed(report.source, result.changed_ids)


def _lift_tombstones(
    store: Store, report: RunReport, rows: list[DesiredRow], on_changed: OnChanged
) -> list[DesiredRow]:
    """Write the listed products whose row is a deletion older than `DELETION_LISTING_LAG`, whatever the dates say;
    return the other rows.

    A webhook's topic and trigger time are not covered by its signature, so a replayed delete delivery can leave a
    tombstone dated after the product's last edit; the ordering guard would then refuse every listing of the product
    as stale. The shop's own listing, read well after the deletion, is the better witness: a product it still lists
    was not deleted. A deletion younger than the lag is kept (the listing may simply lag behind), so a genuine
    deletion does not flap back for a run."""
    listed = [row.product_id for row in rows if not row.is_deletion]
    lifted = store.tombstones_before(report.source, listed, report.started_at - DELETION_LISTING_LAG)
    if not lifted:
        return rows
    restore = [row for row in rows if row.product_id in lifted and not row.is_deletion]
    result = store.write_desired(restore, run_id=report.run_id, force=True)
    report.counts["changed"] += result.changed
    report.counts["restored"] += result.changed
    log.warning(
        "%s: %d product(s) deleted by a webhook are still listed by the shop; restored", report.source, result.changed
    )
    if result.changed_ids:
        on_changed(report.source, result.changed_ids)
    return [row for row in rows if row.product_id not in lifted]


def _hold_kept_out(store: Store, source: str, rows: list[DesiredRow], held: list[DesiredRow]) -> list[DesiredRow]:
    """The rows to write now; rows that would take a live product out of the catalog go to `held`.

    Whatever the reason (archived in the shop, a filter, no usable image, data the catalog would refuse), a full run
    removes through the deletion brake: a shop that suddenly lists every product archived or unusable, a filter typo
    or an image host that is down must not empty the catalog without an operator's word."""
    candidates = [row.product_id for row in rows if row.is_deletion]
    live = store.live_ids(source, candidates) if candidates else set()
    if not live:
        return rows
    held.extend(row for row in rows if row.is_deletion and row.product_id in live)
    return [row for row in rows if not (row.is_deletion and row.product_id in live)]


def _check_images(
    page: Sequence[SourceProduct | SkippedProduct], source: SourceConfig, checker: ImageChecker
) -> dict[str, ImageVerdict]:
    """Verdicts for the images of the page's products that may go to the catalog (not those of inactive or
    filtered-out products: checking them would cost requests for nothing)."""
    urls = [
        image.url
        for item in page
        if isinstance(item, SourceProduct)
        and item.status == "active"
        and filter_reason(item, source.include, source.exclude) is None
        for image in item.images
    ]
    return checker.check(urls)


def page_rows(
    page: Sequence[SourceProduct | SkippedProduct],
    source: SourceConfig,
    counts: Counter[str],
    images: Mapping[str, ImageVerdict] | None = None,
) -> list[DesiredRow]:
    rows: list[DesiredRow] = []
    for item in page:
        counts["seen"] += 1
        if isinstance(item, SkippedProduct):
            counts["skipped"] += 1
            counts[f"skipped:{item.reason}"] += 1
            log.info("%s: %s", source.name, item)
            row = skipped_row(item, source, None)
            if row is None:
                counts["skipped_without_id"] += 1
                counts[WITHOUT_ID_PREFIX + item.reason] += 1
        else:
            if images:
                counts["images_dropped"] += len(_unusable(item, images))
            try:
                row = desired_row(item, source, images)
            except SkippedProduct as skip:
                counts["skipped"] += 1
                counts[f"skipped:{skip.reason}"] += 1
                log.info("%s: %s", source.name, skip)
                row = skipped_row(skip, source, item.updated_at)
                if row is None:
                    counts["skipped_without_id"] += 1
            else:
                if row.skip_reason:
                    counts["skipped"] += 1
                    counts[f"skipped:{row.skip_reason}"] += 1
                elif row.is_deletion:
                    counts["inactive"] += 1
        if row is not None:
            rows.append(row)
    return rows


def _delete_missing(
    store: Store,
    source: SourceConfig,
    report: RunReport,
    on_changed: OnChanged,
    default_share: float,
    allow_mass_delete: bool,
    held: Sequence[DesiredRow] = (),
    window: float = 0.0,
) -> None:
    """Delete what the run did not see (and the `held` rows), unless that is too much at once.

    The brake adds up over `window` seconds: what this run would remove plus what full runs removed in the window,
    as a share of what the source had at the window's start (wanted now plus removed since), so three runs that
    each drop 20 % cannot take half the catalog. Removals an operator confirmed do not count against later runs."""
    missing, total = store.count_missing(source.name, report.run_id, report.started_at)
    share = source.mass_delete_share if source.mass_delete_share is not None else default_share
    recent = store.removed_since(source.name, utcnow() - timedelta(seconds=window)) if missing and window else 0
    over = missing > 0 and missing + recent > share * (total + recent)
    if over and not allow_mass_delete:
        report.outcome = "deletion_blocked"
        report.deletion_blocked = (missing, total)
        report.counts["deletion_blocked"] = missing
        if recent:
            report.counts["removed_in_window"] = recent
        if held:
            report.counts["kept_out_held"] = len(held)
        log.warning(
            "%s: the full run would delete %d of %d products, %d more were removed in the last %g h (more than "
            "%.0f%% together); nothing deleted. If this is intended, run `catalog-sync resync %s --full "
            "--allow-mass-delete`",
            source.name,
            missing,
            total,
            recent,
            window / 3600,
            share * 100,
            source.name,
        )
        return
    if over:
        report.counts[MASS_DELETE_CONFIRMED] = 1
    # The held rows first, so they are seen and keep their reason; what is left unseen the source dropped.
    if held:
        before = report.counts["changed"]
        _write(store, report, held, on_changed, run_id=report.run_id)
        report.counts["removed"] += report.counts["changed"] - before
    if missing == 0:
        return
    ids = store.mark_missing_for_deletion(source.name, report.run_id, report.started_at)
    report.counts["removed"] += len(ids)
    if ids:
        on_changed(source.name, ids)


def _delete_destroyed(
    store: Store,
    source: SourceConfig,
    report: RunReport,
    deletions: Iterable[ProductDeletion],
    on_changed: OnChanged,
    default_share: float,
    allow_mass_delete: bool,
) -> None:
    """Delete the products the shop says it deleted since the watermark, unless that is too much at once (the same
    brake as a full run's). A deletion older than the stored product's update is ignored by the state's ordering."""
    latest: dict[str, ProductDeletion] = {}
    for deletion in deletions:
        known = latest.get(deletion.product_id)
        if known is None or deletion.deleted_at > known.deleted_at:
            latest[deletion.product_id] = deletion
    report.counts["deleted_in_source"] += len(latest)
    live = store.live_ids(source.name, list(latest)) if latest else set()
    if not live:
        return
    total = store.count_live(source.name)
    share = source.mass_delete_share if source.mass_delete_share is not None else default_share
    if not allow_mass_delete and len(live) > share * total:
        report.outcome = "deletion_blocked"
        report.deletion_blocked = (len(live), total)
        report.counts["deletion_blocked"] = len(live)
        log.warning(
            "%s: the shop deleted %d of %d products since the last run (more than %.0f%%); nothing deleted. "
            "If this is intended, run `catalog-sync resync %s --allow-mass-delete`",
            source.name,
            len(live),
            total,
            share * 100,
            source.name,
        )
        return
    rows = []
    for product_id in sorted(live):
        stored = store.get(source.name, product_id)
        if stored is None:
            continue
        moment = source_time(latest[product_id].deleted_at)
        row = DesiredRow(source.name, product_id, stored.external_id, None, DELETED, moment, account=source.account)
        rows.append(row)
    before = report.counts["changed"]
    _write(store, report, rows, on_changed, run_id=None)
    report.counts["removed"] += report.counts["changed"] - before


def _add_notes(report: RunReport, connector: Connector) -> None:
    """The connector's notes on how the read went (a bulk export that fell back to pages) join the run's counts."""
    if isinstance(connector, ReportsNotes):
        report.counts.update(connector.notes)


def paged(items: Iterable[SourceProduct | SkippedProduct], size: int) -> Iterator[list[SourceProduct | SkippedProduct]]:
    iterator = iter(items)
    while page := list(islice(iterator, size)):
        yield page


def _describe(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
    # Stored in a text column and printed by `status`: a quoted NUL or a megabyte of feed must fit in neither.
    return clean_text(text)[:MAX_ERROR_LENGTH]
