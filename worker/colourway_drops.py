"""Colours a shop product dropped, found by an incremental read.

A full run deletes whatever the shop no longer lists, colourways included. An incremental run only sees the
products edited since the watermark: a product that lost a colour is among them, but the lost colourway is not, so
no listing ever says it is gone. `ColourwaysRead` remembers which colourways each product read split into, and
`dropped_colour_rows` turns the ones the state still wants in the catalog, and that the product no longer has, into
deletions dated by the product's edit (so an older read cannot undo a newer one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from config.sources import SourceConfig
from connectors.base import SourceProduct
from connectors.colourways import group_of
from connectors.feed import SPLIT_SEPARATOR
from ground.errors import SkippedProduct
from worker.state import DELETED, DesiredRow, Store


class ColourwaysRead:
    """The colourway ids each shop product split into during one read, and the product's edit time."""

    def __init__(self) -> None:
        self.present: dict[str, set[str]] = {}
        self.edited: dict[str, datetime | None] = {}

    def watch(
        self, items: Iterable[SourceProduct | SkippedProduct]
    ) -> Iterator[SourceProduct | SkippedProduct]:
        """Pass a split stream through, noting every id it holds (skipped ones too: they have rows of their own)."""
        for item in items:
            if item.product_id:
                group = group_of(item.product_id)
                self.present.setdefault(group, set()).add(item.product_id)
                if isinstance(item, SourceProduct):
                    self.edited[group] = item.updated_at
            yield item


def dropped_colour_rows(store: Store, source: SourceConfig, read: ColourwaysRead) -> list[DesiredRow]:
    """Deletions of the colourways the state wants in the catalog that their product, as just read, no longer has;
    and of a product's own row when it now splits into colourways while the catalog still holds it whole."""
    rows: list[DesiredRow] = []
    for group, present in read.present.items():
        vanished = [pid for pid in store.group_members(source.name, group, SPLIT_SEPARATOR) if pid not in present]
        if group not in present and store.live_ids(source.name, [group]):
            vanished.append(group)
        for product_id in vanished:
            stored = store.get(source.name, product_id)
            if stored is None:
                continue
            edited = read.edited.get(group)
            rows.append(
                DesiredRow(source.name, product_id, stored.external_id, None, DELETED, edited, account=source.account)
            )
    return rows
