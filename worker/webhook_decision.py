"""What one verified webhook delivery asks of the state database, decided without touching it.

`decide` is a pure function of the event, its source, whether its delivery id was already processed, the stored
row's date and the time of arrival. It answers one of:

    Answered   nothing to write: the delivery is a replay, or describes a state older than the stored row
    Delete     mark the product deleted, dated by the shop's trigger time (or on arrival, never before the stored row)
    Refetch    the payload is partial (WooCommerce variable products, a variation), or the product is split into
               colourways (`split_by`): the `sync_product` task reads it
    Upsert     the desired row built from the payload

The batcher (`worker.webhook_batch`) reads that state for a whole batch in one query, applies the decisions in
arrival order and turns the store's answers (changed or refused by its ordering guard) into each delivery's outcome.
The answers' vocabulary (`Outcome`, `Result`) is here too, shared by the HTTP app and the batcher.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from config.sources import SourceConfig
from connectors.base import WebhookEvent
from connectors.colourways import splits_shop_products
from ground.errors import SkippedProduct
from worker.plan import desired_row, external_id_for, skipped_row, source_time
from worker.state import DesiredRow

log = logging.getLogger(__name__)

# The topic label before a delivery is verified.
UNVERIFIED_TOPIC = "unverified"
# An undated deletion of a row stamped later than our clock is placed just after that row's state.
DELETION_AFTER_STORED = timedelta(microseconds=1)


class Outcome(StrEnum):
    """What became of one request; the `outcome` label of the deliveries metric and the answer's body."""

    UPDATED = "updated"
    DELETED = "deleted"
    FETCH = "fetch"
    UNCHANGED = "unchanged"
    STALE = "stale"
    REPLAY = "replay"
    PING = "ping"
    IGNORED = "ignored"
    MALFORMED = "malformed"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    TOO_SLOW = "too_slow"
    THROTTLED = "throttled"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"


_STATUS: Mapping[Outcome, int] = {
    Outcome.MALFORMED: 400,
    Outcome.BAD_REQUEST: 400,
    Outcome.UNAUTHORIZED: 401,
    Outcome.NOT_FOUND: 404,
    Outcome.TOO_LARGE: 413,
    Outcome.TOO_SLOW: 408,
    Outcome.THROTTLED: 429,
    Outcome.OVERLOADED: 503,
    Outcome.UNAVAILABLE: 503,
}
# Outcomes that changed a desired row and therefore send a push.
PUSHED = frozenset({Outcome.UPDATED, Outcome.DELETED})


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    topic: str = UNVERIFIED_TOPIC
    detail: str | None = None

    @property
    def status(self) -> int:
        return _STATUS.get(self.outcome, 200)

    def body(self) -> dict[str, str]:
        if self.status >= 400:
            return {"error": self.detail or self.outcome.value}
        return {"outcome": self.outcome.value}


@dataclass(frozen=True, slots=True)
class Answered:
    """Nothing to write: `result` is the delivery's final answer."""

    result: Result


@dataclass(frozen=True, slots=True)
class Delete:
    product_id: str
    at: datetime
    # None when the source's template cannot be filled from a bare id: the store keeps the known row's.
    external_id: str | None


@dataclass(frozen=True, slots=True)
class Refetch:
    product_id: str


@dataclass(frozen=True, slots=True)
class Upsert:
    row: DesiredRow


Decision = Answered | Delete | Refetch | Upsert


def decide(
    event: WebhookEvent, source: SourceConfig, *, replay: bool, stored_at: datetime | None, now: datetime
) -> Decision:
    """What `event` asks of the state database. `replay`: its delivery id was processed before (or earlier in the
    same batch); `stored_at`: the stored desired row's `source_updated_at` (None for a product never seen); `now`:
    when the delivery arrived, which dates a deletion the shop sent without a time."""
    assert event.product_id is not None  # verification refuses an event without one
    if replay:
        log.debug("webhook %s: delivery %s already processed", source.name, event.event_id)
        return Answered(Result(Outcome.REPLAY, event.topic))
    if older_than_stored(event, stored_at):
        return Answered(Result(Outcome.STALE, event.topic))
    if splits_shop_products(source):
        # A split product's colourways converge together, from the shop's own read of the product: an update may
        # add or drop colours, a deletion takes every colourway the state knows for it.
        return Refetch(event.product_id)
    if event.topic == "delete":
        deleted_at = event.triggered_at or undated_deletion(stored_at, now)
        return Delete(event.product_id, deleted_at, _external_id(event.product_id, source))
    if event.product is None:
        return Refetch(event.product_id)
    return Upsert(_row(event, source))


def clamped(event: WebhookEvent) -> WebhookEvent:
    """The event with times from the future brought back to now: a trigger time of 2099 must not make every later
    genuine update of the product look stale."""
    triggered_at = source_time(event.triggered_at) if event.triggered_at is not None else None
    updated_at = source_time(event.updated_at) if event.updated_at is not None else None
    if triggered_at == event.triggered_at and updated_at == event.updated_at:
        return event
    return replace(event, triggered_at=triggered_at, updated_at=updated_at)


def older_than_stored(event: WebhookEvent, stored_at: datetime | None) -> bool:
    """The event describes a product state older than the desired row (by its `updated_at` or trigger time)."""
    if stored_at is None:
        return False
    return any(moment is not None and moment < stored_at for moment in (event.updated_at, event.triggered_at))


def undated_deletion(stored_at: datetime | None, now: datetime) -> datetime:
    """When a deletion that carries no time of its own (WooCommerce's `{"id"}`) happened, for ordering.

    Shopify's trigger time orders a deletion against updates; WooCommerce sends none. The deletion is dated on
    arrival, so an update written before it that arrives late is stale; but never before the state we hold, which
    is dated by the shop's clock: a shop clock running ahead of ours must not make a deletion look older than the
    edit it follows.
    """
    if stored_at is None or stored_at < now:
        return now
    return stored_at + DELETION_AFTER_STORED


def _external_id(product_id: str, source: SourceConfig) -> str | None:
    # A template that needs the handle cannot be filled from a deletion's bare id; the store then keeps the known
    # row's externalId (or the id, for a product it never saw).
    try:
        return external_id_for(product_id, None, source)
    except SkippedProduct:
        return None


def _row(event: WebhookEvent, source: SourceConfig) -> DesiredRow:
    assert event.product is not None
    try:
        return desired_row(event.product, source)
    except SkippedProduct as skip:
        log.info("webhook %s: %s", source.name, skip)
        row = skipped_row(skip, source, event.product.updated_at)
        if row is None:  # a skip always names the product here; kept for the type checker
            raise
        return row
