"""What one verified delivery asks of the state database, decided without one: replays and stale deliveries are
answered, a deletion is dated, a partial product is fetched, a complete one becomes the desired row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.sources import ShopifySource
from connectors.base import ImageRef, SourceProduct, WebhookEvent
from worker.webhook_decision import (
    DELETION_AFTER_STORED,
    Answered,
    Decision,
    Delete,
    Outcome,
    Refetch,
    Result,
    Upsert,
    clamped,
    decide,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SOURCE = ShopifySource(
    name="shop", kind="shopify", url="https://shop.example", access_token="t", webhook_secret="s", external_id="{id}"
)


def product(updated_at: datetime, title: str = "Coat") -> SourceProduct:
    return SourceProduct(
        source="shop",
        product_id="7",
        updated_at=updated_at,
        status="active",
        title=title,
        images=(ImageRef("https://cdn.example/coat.jpg"),),
    )


def update(updated_at: datetime) -> WebhookEvent:
    return WebhookEvent(
        source="shop", topic="upsert", product_id="7", event_id="e", updated_at=updated_at, product=product(updated_at)
    )


def deletion(triggered_at: datetime | None) -> WebhookEvent:
    return WebhookEvent(source="shop", topic="delete", product_id="7", event_id="d", triggered_at=triggered_at)


def test_a_replayed_delivery_is_answered_replay_whatever_it_carries() -> None:
    decision = decide(update(NOW), SOURCE, replay=True, stored_at=None, now=NOW)

    assert decision == Answered(Result(Outcome.REPLAY, "upsert"))


@pytest.mark.parametrize(
    ("event", "stored_at"),
    [
        (update(NOW - timedelta(seconds=1)), NOW),
        (deletion(NOW - timedelta(seconds=1)), NOW),
    ],
    ids=["update-older-than-the-row", "deletion-triggered-before-the-row"],
)
def test_a_delivery_older_than_the_stored_row_is_stale(event: WebhookEvent, stored_at: datetime) -> None:
    decision = decide(event, SOURCE, replay=False, stored_at=stored_at, now=NOW)

    assert decision == Answered(Result(Outcome.STALE, event.topic))


@pytest.mark.parametrize(
    ("triggered_at", "stored_at", "deleted_at"),
    [
        (NOW - timedelta(minutes=1), None, NOW - timedelta(minutes=1)),
        (None, None, NOW),
        (None, NOW - timedelta(minutes=1), NOW),
        # The shop's clock runs ahead of ours: the deletion is placed just after the state it follows.
        (None, NOW + timedelta(minutes=5), NOW + timedelta(minutes=5) + DELETION_AFTER_STORED),
    ],
    ids=["dated-by-the-shop", "undated-unknown-product", "undated-after-an-older-row", "undated-row-ahead-of-us"],
)
def test_a_deletion_is_dated_by_the_shop_or_on_arrival_never_before_the_stored_row(
    triggered_at: datetime | None, stored_at: datetime | None, deleted_at: datetime
) -> None:
    decision = decide(deletion(triggered_at), SOURCE, replay=False, stored_at=stored_at, now=NOW)

    assert decision == Delete("7", deleted_at, "7")


def test_an_update_without_a_complete_product_is_fetched() -> None:
    partial = WebhookEvent(source="shop", topic="upsert", product_id="7", event_id="e", updated_at=NOW)

    assert decide(partial, SOURCE, replay=False, stored_at=None, now=NOW) == Refetch("7")


def test_a_complete_newer_product_becomes_the_desired_row() -> None:
    decision: Decision = decide(update(NOW), SOURCE, replay=False, stored_at=NOW - timedelta(days=1), now=NOW)

    assert isinstance(decision, Upsert)
    assert (decision.row.product_id, decision.row.updated_at) == ("7", NOW)
    assert decision.row.payload is not None
    assert decision.row.payload["title"] == "Coat"


def test_times_from_the_future_are_brought_back_before_anything_is_decided() -> None:
    far = datetime(2099, 1, 1, tzinfo=UTC)

    event = clamped(deletion(far))

    assert event.triggered_at is not None
    assert event.triggered_at < far


@pytest.mark.parametrize("event", [update(NOW), deletion(NOW)], ids=["update", "deletion"])
def test_a_product_split_into_colourways_is_fetched_whole_whatever_the_delivery(event: WebhookEvent) -> None:
    splitting = SOURCE.model_copy(update={"split_by": "color"})

    assert decide(event, splitting, replay=False, stored_at=None, now=NOW) == Refetch("7")
