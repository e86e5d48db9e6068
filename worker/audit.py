"""The catalog as it really is: list an account's catalog, compare it with the state, and repair the drift.

Our synced hash says what we last sent, not what the catalog holds now: products expire (`validForDays` counts time
between uses), are edited or deleted in the vendor's dashboard, or are left behind by a removed source. Listing the
catalog is the only way to know. The listing is `GET /products` at 200 per page through the same limiter as every
other call, so an audit of 20,000 products costs about 100 calls and nothing per product.

Every listed product and every row the state believes the catalog holds is one of:

- ok: the catalog holds what we last sent;
- pending: a push is on its way (the row is not converged), so there is nothing to judge yet;
- missing: a converged row whose product is not in the catalog (deleted in the dashboard); `expired` when the
  catalog's `expiresAt` we recorded has passed;
- differs: title, description, images or metadata are not what we last sent;
- orphaned: a product we wrote that no configured source wants: it carries our source metadata but the state does
  not know it, its owner belongs to a source no longer configured, or its owner no longer wants it;
- unknown: not ours (no source metadata, no owner): never touched.

Repair makes missing and differing rows push again (expired ones only where the source's `restore_expired` says
so; the others are recorded `expired`) and deletes orphans, behind the same brake as full syncs: deleting more than
the mass-delete share of our listed products deletes nothing until an operator confirms.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.sources import SourceConfig
from worker.catalog import MAX_PAGE_SIZE, CatalogClient, CatalogProduct
from worker.state import DEFAULT_ACCOUNT, DELETED, CatalogOwner, Store, utcnow

log = logging.getLogger(__name__)

KINDS = ("ok", "pending", "missing", "expired", "differs", "orphaned", "unknown")
# Examples kept per kind for the report: enough to see the pattern, few enough to read.
EXAMPLES = 5
# The catalog fields we send and compare; the others (timestamps, validForDays) are the catalog's own business.
COMPARED = ("title", "description", "images", "metadata")

# Called with (source, product ids) for rows the repair made pending, to enqueue their pushes.
OnResend = Callable[[str, Sequence[str]], None]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    external_id: str
    source: str | None = None
    product_id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "external_id": self.external_id,
            "source": self.source,
            "product_id": self.product_id,
            "detail": self.detail,
        }


@dataclass
class AuditReport:
    account: str
    source: str | None
    started_at: datetime
    listed: int = 0
    pages: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Finding]] = field(default_factory=dict)
    repaired: Counter[str] = field(default_factory=Counter)
    # (orphans, our listed products) when the brake held the orphan deletions.
    deletion_blocked: tuple[int, int] | None = None

    def add(self, finding: Finding) -> None:
        self.counts[finding.kind] += 1
        kept = self.examples.setdefault(finding.kind, [])
        if len(kept) < EXAMPLES:
            kept.append(finding)

    @property
    def drift(self) -> int:
        return sum(self.counts[k] for k in ("missing", "expired", "differs", "orphaned"))

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "account": self.account,
            "source": self.source,
            "listed": self.listed,
            "pages": self.pages,
            "counts": {kind: self.counts[kind] for kind in KINDS},
            "examples": {kind: [f.as_dict() for f in found] for kind, found in self.examples.items() if kind != "ok"},
            "repaired": dict(self.repaired),
        }
        if self.deletion_blocked is not None:
            body["deletion_blocked"] = {"orphans": self.deletion_blocked[0], "ours": self.deletion_blocked[1]}
        return body


def audit(
    store: Store,
    catalog: CatalogClient,
    sources: Mapping[str, SourceConfig],
    *,
    account: str = DEFAULT_ACCOUNT,
    source: str | None = None,
    repair: bool = False,
    mass_delete_share: float = 0.2,
    allow_mass_delete: bool = False,
    on_resend: OnResend | None = None,
) -> AuditReport:
    """List the account's catalog, classify what differs from the state, and repair it when asked.

    `source` narrows the findings to one source's products (the listing is the whole account's either way: the
    catalog has no filters). Memory holds the listed externalIds and the orphans, never whole products."""
    report = AuditReport(account, source, utcnow())
    configured = {name for name, s in sources.items() if s.account == account}
    seen: set[str] = set()
    orphans: list[str] = []
    ours = 0
    cursor: str | None = None
    while True:
        page = catalog.list_page(limit=MAX_PAGE_SIZE, cursor=cursor)
        report.pages += 1
        owners = store.catalog_owners(account, [p.external_id for p in page.items])
        differing: list[tuple[str, str]] = []
        for product in page.items:
            report.listed += 1
            seen.add(product.external_id)
            owner = owners.get(product.external_id)
            if not _in_scope(product, owner, source):
                continue
            finding = classify(product, owner, configured)
            report.add(finding)
            if finding.kind != "unknown":
                ours += 1
            if finding.kind == "orphaned":
                orphans.append(product.external_id)
            elif finding.kind == "differs" and finding.source and finding.product_id:
                differing.append((finding.source, finding.product_id))
        if repair:
            _resend(store, report, differing, True, on_resend)
        if page.has_more is False or not page.next_cursor or page.next_cursor == cursor:
            break
        cursor = page.next_cursor
    missing = _missing(store, report, seen, account, source)
    if repair:
        _repair_missing(store, report, missing, sources, on_resend)
        _delete_orphans(store, catalog, report, orphans, ours, mass_delete_share, allow_mass_delete)
    log.info(
        "audit of account %s%s: %d listed in %d page(s); %s; repaired %s",
        account,
        f" (source {source})" if source else "",
        report.listed,
        report.pages,
        ", ".join(f"{kind} {report.counts[kind]}" for kind in KINDS),
        dict(report.repaired) or "nothing",
    )
    return report


def classify(product: CatalogProduct, owner: CatalogOwner | None, configured: set[str]) -> Finding:
    """What one listed product is, given the owner of its externalId in the state."""
    external_id = product.external_id
    metadata = product.metadata or {}
    if owner is None or owner.desired_hash is None:
        ours = isinstance(metadata.get("source"), str) and "productId" in metadata
        if not ours:
            return Finding("unknown", external_id)
        return Finding(
            "orphaned", external_id, str(metadata["source"]), str(metadata["productId"]), "unknown to the state"
        )
    where = (owner.source, owner.product_id)
    if owner.source not in configured:
        return Finding("orphaned", external_id, *where, f"source {owner.source!r} is no longer configured")
    converged = owner.desired_hash == owner.synced_hash
    if owner.catalog_external_id == external_id and converged and owner.payload is not None:
        changed = differences(owner.payload, product)
        if changed:
            return Finding("differs", external_id, *where, ", ".join(changed))
        return Finding("ok", external_id, *where)
    wanted = owner.external_id == external_id and owner.desired_hash != DELETED
    if not converged or wanted:
        return Finding("pending", external_id, *where)
    return Finding("orphaned", external_id, *where, "its product no longer wants this externalId")


def differences(sent: Mapping[str, Any], held: CatalogProduct) -> list[str]:
    """The compared fields whose value in the catalog is not what we sent."""
    changed: list[str] = []
    if (sent.get("title") or None) != (held.title or None):
        changed.append("title")
    if (sent.get("description") or None) != (held.description or None):
        changed.append("description")
    sent_images = [image.get("source", {}).get("url") for image in sent.get("images") or []]
    held_images = [image.source_url for image in sorted(held.images, key=lambda image: image.order)]
    if sent_images != held_images:
        changed.append("images")
    if (sent.get("metadata") or None) != (held.metadata or None):
        changed.append("metadata")
    return changed


def _in_scope(product: CatalogProduct, owner: CatalogOwner | None, source: str | None) -> bool:
    if source is None:
        return True
    if owner is not None:
        return owner.source == source
    return (product.metadata or {}).get("source") == source


def _missing(
    store: Store, report: AuditReport, seen: set[str], account: str, source: str | None
) -> list[tuple[str, str, bool]]:
    """Rows the catalog was confirmed to hold that the listing did not show: (source, product, expired)."""
    found: list[tuple[str, str, bool]] = []
    for src, product_id, external_id, expires_at in store.held_in_catalog(
        account, source=source, synced_before=report.started_at
    ):
        if external_id in seen:
            continue
        expired = expires_at is not None and expires_at <= report.started_at
        detail = f"expired at {expires_at.isoformat()}" if expired and expires_at else "not in the catalog"
        report.add(Finding("expired" if expired else "missing", external_id, src, product_id, detail))
        found.append((src, product_id, expired))
    return found


def _repair_missing(
    store: Store,
    report: AuditReport,
    missing: Iterable[tuple[str, str, bool]],
    sources: Mapping[str, SourceConfig],
    on_resend: OnResend | None,
) -> None:
    restore: list[tuple[str, str]] = []
    keep_expired: list[tuple[str, str]] = []
    for src, product_id, expired in missing:
        configured = sources.get(src)
        if expired and configured is not None and not configured.restore_expired:
            keep_expired.append((src, product_id))
        elif configured is not None:
            restore.append((src, product_id))
    _resend(store, report, restore, False, on_resend)
    if keep_expired:
        report.repaired["recorded_expired"] += len(store.mark_expired(keep_expired))


def _resend(
    store: Store,
    report: AuditReport,
    keys: Sequence[tuple[str, str]],
    catalog_holds: bool,
    on_resend: OnResend | None,
) -> None:
    if not keys:
        return
    done = store.resend(keys, catalog_holds=catalog_holds)
    report.repaired["resent"] += len(done)
    if on_resend is None:
        return
    by_source: dict[str, list[str]] = {}
    for src, product_id in done:
        by_source.setdefault(src, []).append(product_id)
    for src, ids in by_source.items():
        on_resend(src, ids)


def _delete_orphans(
    store: Store,
    catalog: CatalogClient,
    report: AuditReport,
    orphans: Sequence[str],
    ours: int,
    share: float,
    allow_mass_delete: bool,
) -> None:
    if not orphans:
        return
    if not allow_mass_delete and len(orphans) > share * ours:
        report.deletion_blocked = (len(orphans), ours)
        log.warning(
            "audit of account %s: deleting %d orphan(s) of %d products of ours is more than %.0f%%; nothing "
            "deleted. If this is intended, run `catalog-sync audit --repair --allow-mass-delete`",
            report.account,
            len(orphans),
            ours,
            share * 100,
        )
        return
    for external_id in orphans:
        catalog.delete(external_id)
        report.repaired["orphans_deleted"] += 1
    store.forget_catalog_ids(report.account, orphans)
