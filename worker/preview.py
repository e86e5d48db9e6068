"""A dry run: what a sync would create, update, delete and skip, computed from the source and the state without
writing either or calling the catalog (`resync SOURCE [--full] --dry-run`).

It reads the source through the same connector and builds the same desired rows as a real run (`worker/plan.py`),
then compares them with the stored rows read-only: so a changed template, filter or feed can be checked before it
costs an hour of catalog budget or deletes anything. What it cannot know is what another writer (a webhook) does
meanwhile; the real run decides again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from config.sources import SourceConfig
from connectors.base import Connector, ProductDeletion, ReadsDeletions
from ground.errors import SkippedProduct
from worker.plan import PAGE_SIZE, WATERMARK_OVERLAP, page_rows, paged
from worker.state import DELETED, DesiredRow, ProductRow, RunMode, Store, conflict_message, utcnow

# Products listed per action in the report; the counts are always complete.
LISTED = 200


@dataclass(frozen=True, slots=True)
class Change:
    product_id: str
    external_id: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"product_id": self.product_id, "external_id": self.external_id, "detail": self.detail}


@dataclass
class Preview:
    source: str
    mode: RunMode
    counts: Counter[str] = field(default_factory=Counter)
    changes: dict[str, list[Change]] = field(default_factory=dict)
    # (products that would be deleted, products wanted now) when the brake would hold the run's deletions.
    deletion_blocked: tuple[int, int] | None = None

    def add(self, action: str, change: Change) -> None:
        self.counts[action] += 1
        listed = self.changes.setdefault(action, [])
        if len(listed) < LISTED:
            listed.append(change)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "source": self.source,
            "mode": self.mode,
            "dry_run": True,
            "counts": {a: self.counts[a] for a in ("create", "update", "delete", "skip", "unchanged", "stale")},
            "changes": {action: [c.as_dict() for c in listed] for action, listed in self.changes.items()},
        }
        if self.deletion_blocked is not None:
            body["deletion_blocked"] = {"deletions": self.deletion_blocked[0], "wanted": self.deletion_blocked[1]}
        return body


def preview_source(
    store: Store,
    connector: Connector,
    source: SourceConfig,
    *,
    mode: RunMode,
    mass_delete_share: float,
    mass_delete_window: float = 0.0,
    since: datetime | None = None,
    page_size: int = PAGE_SIZE,
) -> Preview:
    """What `plan_source` would do with the same stream, without doing it (the deletion brake counted the same
    way: every live product the run would take out, plus the removals of full runs in the window)."""
    if mode == "incremental" and since is None:
        watermark = store.last_watermark(source.name)
        since = watermark - WATERMARK_OVERLAP if watermark is not None else None
    preview = Preview(source.name, mode)
    seen: set[str] = set()
    taken_out = 0
    for page in paged(connector.iter_products(since), page_size):
        rows = page_rows(page, source, Counter())
        stored = store.desired_view(source.name, [row.product_id for row in rows])
        live = [(row.external_id, row.source, row.product_id) for row in rows if not row.is_deletion]
        refused = store.foreign_owners(source.account, live)
        for row in rows:
            seen.add(row.product_id)
            old = stored.get(row.product_id)
            if row.is_deletion and old is not None and old.desired_hash != DELETED:
                taken_out += 1
            _judge(preview, row, old, refused.get(row.external_id))
        preview.counts["skip"] += sum(1 for item in page if _without_id(item))
    if mode == "full":
        since_window = utcnow() - timedelta(seconds=mass_delete_window)
        recent = store.removed_since(source.name, since_window) if mass_delete_window else 0
        _missing(store, preview, source, seen, mass_delete_share, taken_out, recent)
    elif since is not None and isinstance(connector, ReadsDeletions):
        _destroyed(store, preview, source, connector.iter_deletions(since), mass_delete_share)
    return preview


def preview_products(store: Store, connector: Connector, source: SourceConfig, product_ids: list[str]) -> Preview:
    """What `resync SOURCE --product ID …` would do, without doing it."""
    preview = Preview(source.name, "product")
    rows: list[DesiredRow] = []
    for product_id in product_ids:
        try:
            product = connector.get_product(product_id)
        except SkippedProduct as skip:
            rows += page_rows([skip], source, Counter())
            continue
        if product is None:
            rows.append(DesiredRow(source.name, product_id, product_id, None, DELETED, None, account=source.account))
        else:
            rows += page_rows([product], source, Counter())
    stored = store.desired_view(source.name, [row.product_id for row in rows])
    live = [(row.external_id, row.source, row.product_id) for row in rows if not row.is_deletion]
    refused = store.foreign_owners(source.account, live)
    for row in rows:
        _judge(preview, row, stored.get(row.product_id), refused.get(row.external_id))
    return preview


def _judge(preview: Preview, row: DesiredRow, old: ProductRow | None, owner: tuple[str, str] | None) -> None:
    external_id = row.external_id
    if owner is not None:
        preview.add("skip", Change(row.product_id, external_id, conflict_message(external_id, owner)))
        return
    if row.skip_reason:
        held = old is not None and (old.catalog_external_id is not None)
        detail = row.skip_reason + ("; removed from the catalog" if held else "")
        preview.add("skip", Change(row.product_id, external_id, detail))
        return
    if old is not None and old.desired_hash == row.content_hash:
        preview.counts["unchanged"] += 1
        return
    if old is not None and row.updated_at and old.source_updated_at and row.updated_at < old.source_updated_at:
        preview.counts["stale"] += 1
        return
    if row.is_deletion:
        if old is not None and old.desired_hash != DELETED:
            preview.add("delete", Change(row.product_id, old.catalog_external_id or old.external_id, "inactive"))
        else:
            preview.counts["unchanged"] += 1
        return
    if old is None or old.desired_payload is None:
        preview.add("create", Change(row.product_id, external_id))
        return
    preview.add("update", Change(row.product_id, external_id, ", ".join(changed_fields(old, row.payload or {}))))


def changed_fields(old: ProductRow, new: Mapping[str, Any]) -> list[str]:
    """The catalog fields a push would change, `metadata.<key>` for metadata; a moved product says from where."""
    before = old.desired_payload or {}
    fields: list[str] = []
    for key in sorted(set(before) | set(new)):
        if key == "metadata":
            meta_before, meta_after = before.get(key) or {}, new.get(key) or {}
            fields += [
                f"metadata.{k}"
                for k in sorted(set(meta_before) | set(meta_after))
                if meta_before.get(k) != meta_after.get(k)
            ]
        elif before.get(key) != new.get(key):
            fields.append(f"externalId (from {before.get(key)})" if key == "externalId" else key)
    return fields


def _missing(
    store: Store,
    preview: Preview,
    source: SourceConfig,
    seen: set[str],
    default_share: float,
    taken_out: int = 0,
    recent: int = 0,
) -> None:
    wanted = store.wanted_rows(source.name)
    gone = [(pid, external_id) for pid, external_id in wanted if pid not in seen]
    share = source.mass_delete_share if source.mass_delete_share is not None else default_share
    removals = len(gone) + taken_out
    if removals and removals + recent > share * (len(wanted) + recent):
        preview.deletion_blocked = (removals, len(wanted))
        return
    for pid, external_id in gone:
        preview.add("delete", Change(pid, external_id, "removed_from_source"))


def _destroyed(
    store: Store, preview: Preview, source: SourceConfig, deletions: Iterable[ProductDeletion], default_share: float
) -> None:
    """An incremental run's deletions: the products the shop says it deleted that the catalog should still hold."""
    wanted = dict(store.wanted_rows(source.name))
    gone = sorted({deletion.product_id for deletion in deletions} & wanted.keys())
    share = source.mass_delete_share if source.mass_delete_share is not None else default_share
    if gone and len(gone) > share * len(wanted):
        preview.deletion_blocked = (len(gone), len(wanted))
        return
    for pid in gone:
        preview.add("delete", Change(pid, wanted[pid], "deleted_in_source"))


def _without_id(item: object) -> bool:
    return isinstance(item, SkippedProduct) and not item.product_id
