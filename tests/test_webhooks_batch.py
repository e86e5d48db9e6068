"""The committer's batches: several deliveries applied together must each get the answer they would get alone.

Events the connectors parsed from signed bodies go through the two steps the committer and publisher threads run,
`Batcher.commit` (write and commit) then `Batcher.publish` (publish, answer, remember the delivery ids), on a real
state database; the dispatcher is a fake that records what it was asked to publish.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from config.sources import SourceConfig
from connectors.base import WebhookEvent
from tests.webhooks_support import (
    broker_url,
    make_runtime,
    make_sources,
    shopify_headers,
    shopify_product,
    stored,
    stored_payload,
)
from worker.runtime import Runtime
from worker.state import DELETED
from worker.webhook_batch import Pending
from worker.webhook_decision import Outcome, Result
from worker.webhooks import Intake


class RecordingDispatcher:
    def __init__(self) -> None:
        self.pushed: list[tuple[str, list[str], bool]] = []

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool:
        self.pushed.append((source, list(product_ids), priority))
        return True


class Fetches:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, source: str, product_id: str) -> None:
        self.calls.append((source, product_id))


@pytest.fixture
def runtime(clean_env: None, database_url: str, tmp_path: Path, unique: str) -> Iterator[Runtime]:
    runtime = make_runtime(database_url, make_sources(unique), broker_url(), tmp_path)
    yield runtime
    runtime.close()


@pytest.fixture
def shop(runtime: Runtime) -> SourceConfig:
    return next(s for s in runtime.sources.values() if s.name.startswith("shop-"))


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def intake(runtime: Runtime, dispatcher: RecordingDispatcher) -> Iterator[Intake]:
    intake = Intake(runtime, dispatcher, fetch=Fetches())
    yield intake
    intake.close()


def event(intake: Intake, source: SourceConfig, body: Any, **headers: Any) -> WebhookEvent:
    raw = json.dumps(body).encode()
    signed = {k.lower(): v for k, v in shopify_headers(raw, **headers).items()}
    verdict = intake.verify(source, signed, raw)
    assert isinstance(verdict, WebhookEvent)
    return verdict


def outcomes(intake: Intake, source: SourceConfig, events: list[WebhookEvent]) -> list[Outcome]:
    """Apply `events` as one batch, the way the committer and the publisher do, and read the answers they gave."""
    answers: list[Future[Result]] = [Future() for _ in events]
    group = [Pending(source, event, future=answer) for event, answer in zip(events, answers, strict=True)]
    intake.batcher.publish(intake.batcher.commit(group))
    return [answer.result(timeout=0).outcome for answer in answers]


def test_a_newer_and_an_older_update_of_one_product_in_one_batch_keep_the_newer(
    intake: Intake, shop: SourceConfig, runtime: Runtime, dispatcher: RecordingDispatcher
) -> None:
    newer = event(intake, shop, shopify_product(1, title="New", updated_at="2024-05-01T10:00:05Z"), event_id="a")
    older = event(intake, shop, shopify_product(1, title="Old", updated_at="2024-05-01T10:00:01Z"), event_id="b")

    assert outcomes(intake, shop, [newer, older]) == [Outcome.UPDATED, Outcome.STALE]
    assert stored_payload(runtime.store, shop.name, "1")["title"] == "New"
    assert dispatcher.pushed == [(shop.name, ["1"], True)]


def test_an_older_then_a_newer_update_in_one_batch_both_apply_in_order(
    intake: Intake, shop: SourceConfig, runtime: Runtime, dispatcher: RecordingDispatcher
) -> None:
    older = event(intake, shop, shopify_product(2, title="Old", updated_at="2024-05-01T10:00:01Z"), event_id="a")
    newer = event(intake, shop, shopify_product(2, title="New", updated_at="2024-05-01T10:00:05Z"), event_id="b")
    other = event(intake, shop, shopify_product(3, title="Other", updated_at="2024-05-01T10:00:05Z"), event_id="c")

    assert outcomes(intake, shop, [older, newer, other]) == [Outcome.UPDATED, Outcome.UPDATED, Outcome.UPDATED]
    assert stored_payload(runtime.store, shop.name, "2")["title"] == "New"
    # One push per product, whatever number of its deliveries the batch held.
    assert dispatcher.pushed == [(shop.name, ["2", "3"], True)]


def test_the_same_delivery_twice_in_one_batch_is_applied_once(intake: Intake, shop: SourceConfig) -> None:
    body = shopify_product(4, title="Hat", updated_at="2024-05-01T10:00:00Z")

    first, again = event(intake, shop, body, event_id="same"), event(intake, shop, body, event_id="same")

    assert outcomes(intake, shop, [first, again]) == [Outcome.UPDATED, Outcome.REPLAY]
    assert outcomes(intake, shop, [event(intake, shop, body, event_id="same")]) == [Outcome.REPLAY]


def test_an_update_and_a_later_deletion_in_one_batch_end_deleted(
    intake: Intake, shop: SourceConfig, runtime: Runtime, dispatcher: RecordingDispatcher
) -> None:
    from datetime import UTC, datetime

    update = event(intake, shop, shopify_product(5, title="Coat", updated_at="2024-05-01T10:00:00Z"), event_id="a")
    deletion = event(
        intake,
        shop,
        {"id": 5},
        topic="products/delete",
        event_id="b",
        triggered_at=datetime(2024, 5, 1, 11, tzinfo=UTC),
    )

    assert outcomes(intake, shop, [deletion, update]) == [Outcome.DELETED, Outcome.STALE]
    assert stored(runtime.store, shop.name, "5").desired_hash == DELETED
    assert dispatcher.pushed == [(shop.name, ["5"], True)]


def test_an_update_arriving_before_an_undated_deletion_in_one_batch_is_written_first(
    intake: Intake, runtime: Runtime, dispatcher: RecordingDispatcher
) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.webhooks_support import woo_headers

    woo = next(s for s in runtime.sources.values() if s.name.startswith("woo-"))
    # The shop's clock runs ahead of ours: its update is stamped after our "now".
    ahead = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    product = {"id": 9, "name": "Mug", "status": "publish", "type": "simple", "date_modified_gmt": ahead}
    product["images"] = [{"id": 1, "src": "https://cdn.example/mug.jpg"}]
    events = []
    for topic, body in (("product.updated", product), ("product.deleted", {"id": 9})):
        raw = json.dumps(body).encode()
        headers = {k.lower(): v for k, v in woo_headers(raw, topic=topic, delivery_id=topic).items()}
        verdict = intake.verify(woo, headers, raw)
        assert isinstance(verdict, WebhookEvent)
        events.append(verdict)

    assert outcomes(intake, woo, events) == [Outcome.UPDATED, Outcome.DELETED]
    assert stored(runtime.store, woo.name, "9").desired_hash == DELETED
    assert dispatcher.pushed == [(woo.name, ["9"], True)]


def test_unchanged_content_is_told_apart_from_a_stale_update(intake: Intake, shop: SourceConfig) -> None:
    body = shopify_product(6, title="Scarf", updated_at="2024-05-01T10:00:00Z")
    outcomes(intake, shop, [event(intake, shop, body, event_id="a")])

    same = event(intake, shop, body, event_id="b")
    older = event(intake, shop, {**body, "title": "Old", "updated_at": "2024-04-01T10:00:00Z"}, event_id="c")

    assert outcomes(intake, shop, [same, older]) == [Outcome.UNCHANGED, Outcome.STALE]


def test_a_partial_payload_is_fetched_and_remembered(intake: Intake, shop: SourceConfig) -> None:
    partial = event(
        intake,
        shop,
        shopify_product(7, title="Odd", updated_at="2024-05-01T10:00:00Z", status="in_review"),
        event_id="a",
    )

    assert outcomes(intake, shop, [partial]) == [Outcome.FETCH]


def test_the_thread_api_waits_for_the_committer(intake: Intake, shop: SourceConfig, runtime: Runtime) -> None:
    body = json.dumps(shopify_product(8, title="Belt", updated_at="2024-05-01T10:00:00Z")).encode()
    headers = {k.lower(): v for k, v in shopify_headers(body, event_id="a").items()}

    futures = [intake.submit(shop, event(intake, shop, json.loads(body), event_id=f"e{n}")) for n in range(20)]

    assert intake.handle(shop, headers, body).outcome is Outcome.UNCHANGED
    assert sorted(f.result().outcome for f in futures).count(Outcome.UPDATED) == 1
    assert stored_payload(runtime.store, shop.name, "8")["title"] == "Belt"
