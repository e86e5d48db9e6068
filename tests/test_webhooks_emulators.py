"""Deliveries signed and sent by the Shopify and WooCommerce emulators (their own HTTP clients, headers, encodings
and delivery ids) to the webhook server over real sockets.

The shops' clocks are swapped for ones the tests move forward, so edits are seconds apart without waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import shopify as shopify_emulator
from emulators import woocommerce as woo_emulator
from emulators.server import running
from tests.webhooks_support import (
    SHOPIFY_SECRET,
    WOO_SECRET,
    Queues,
    broker_url,
    make_runtime,
    make_sources,
    use_broker,
)
from worker.runtime import Runtime
from worker.state import DELETED
from worker.webhooks import create_app

# Longest a test waits for an emulator to finish its deliveries (they take milliseconds).
DELIVERY_WAIT = 10.0


class SteppedClock:
    """A shop clock that moves only when told to, starting a little ahead of ours."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)

    def advance(self, seconds: float = 10) -> None:
        self.now += timedelta(seconds=seconds)

    def epoch(self) -> float:
        return self.now.timestamp()

    def aware(self) -> datetime:
        return self.now


@dataclass
class Setup:
    runtime: Runtime
    receiver: str
    shop: str
    woo: str
    queues: Queues
    clock: SteppedClock

    def row(self, source: str, product_id: int | str) -> Any:
        return self.runtime.store.get(source, str(product_id))

    def pushes(self, source: str) -> list[str]:
        return [product_id for name, product_id in self.queues.pushed() if name == source]


@pytest.fixture
def setup(clean_env: None, database_url: str, redis_url: str, tmp_path: Path, unique: str) -> Iterator[Setup]:
    sources = make_sources(unique)
    runtime = make_runtime(database_url, sources, broker_url(), tmp_path)
    use_broker(runtime)
    queues = Queues(broker_url(), sources)
    try:
        with running(create_app(runtime)) as server:
            yield Setup(runtime, server.url, f"shop-{unique}", f"woo-{unique}", queues, SteppedClock())
    finally:
        queues.clear()
        queues.close()
        runtime.close()


# ------------------------------------------------------------------------------------------------------ Shopify


@pytest.fixture
def shopify(setup: Setup) -> Iterator[tuple[httpx.Client, shopify_emulator.Shop]]:
    app = shopify_emulator.create_app(products=3, clock=setup.clock.epoch)
    with running(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        subscribed = client.post(
            "/_emulator/webhooks", json={"url": f"{setup.receiver}/webhooks/{setup.shop}", "secret": SHOPIFY_SECRET}
        )
        assert subscribed.status_code == 201
        yield client, app.state.shop


def settle(shop: shopify_emulator.Shop) -> list[dict[str, Any]]:
    """Wait for the emulator's deliveries; their public records, oldest first."""
    assert shop.webhooks.wait_idle(DELIVERY_WAIT)
    recent: list[dict[str, Any]] = shop.webhooks.summary()["recent"]
    return recent


def test_shopify_create_update_and_delete_reach_the_state_database(
    setup: Setup, shopify: tuple[httpx.Client, shopify_emulator.Shop]
) -> None:
    client, shop = shopify

    created = client.post(
        "/_emulator/products",
        json={"title": "Linen shirt", "status": "active", "images": ["https://cdn.example/linen.jpg"]},
    ).json()["product"]
    settle(shop)
    setup.clock.advance()
    client.patch(f"/_emulator/products/{created['id']}", json={"title": "Linen shirt, blue"})
    settle(shop)
    after_update = setup.row(setup.shop, created["id"])
    setup.clock.advance()
    client.delete(f"/_emulator/products/{created['id']}")
    deliveries = settle(shop)

    assert [(d["topic"], d["status"]) for d in deliveries] == [
        ("products/create", 200),
        ("products/update", 200),
        ("products/delete", 200),
    ]
    assert after_update.desired_payload["title"] == "Linen shirt, blue"
    assert after_update.desired_payload["images"] == [{"source": {"url": "https://cdn.example/linen.jpg"}}]
    assert setup.row(setup.shop, created["id"]).desired_hash == DELETED
    assert setup.pushes(setup.shop) == [str(created["id"])] * 3


def test_a_shopify_retry_of_the_same_delivery_is_a_replay(
    setup: Setup, shopify: tuple[httpx.Client, shopify_emulator.Shop]
) -> None:
    client, shop = shopify
    product_id = client.post(
        "/_emulator/products", json={"title": "Wool hat", "images": ["https://cdn.example/hat.jpg"]}
    ).json()["product"]["id"]
    first = settle(shop)[-1]

    client.post("/_emulator/webhooks/send", json={"delivery_id": first["id"]})
    settle(shop)

    metrics = httpx.get(f"{setup.receiver}/metrics").text
    assert f'outcome="replay",source="{setup.shop}",topic="upsert"}} 1.0' in metrics
    assert setup.pushes(setup.shop) == [str(product_id)]


def test_a_shopify_update_delivered_after_the_next_one_is_dropped(
    setup: Setup, shopify: tuple[httpx.Client, shopify_emulator.Shop]
) -> None:
    client, shop = shopify
    product_id = client.post(
        "/_emulator/products", json={"title": "Scarf", "images": ["https://cdn.example/scarf.jpg"]}
    ).json()["product"]["id"]
    settle(shop)
    setup.clock.advance()
    client.patch(f"/_emulator/products/{product_id}", json={"title": "Scarf, red"})
    older = settle(shop)[-1]
    setup.clock.advance()
    client.patch(f"/_emulator/products/{product_id}", json={"title": "Scarf, green"})
    settle(shop)

    # Shopify retries the older delivery after the newer one went through (same bytes, same event id), and a
    # fresh event of the older state cannot exist; the retry is a replay and the row keeps the newest title.
    client.post("/_emulator/webhooks/send", json={"delivery_id": older["id"]})
    settle(shop)

    assert setup.row(setup.shop, product_id).desired_payload["title"] == "Scarf, green"


def test_a_receiver_with_the_wrong_secret_is_refused(
    setup: Setup, shopify: tuple[httpx.Client, shopify_emulator.Shop]
) -> None:
    client, shop = shopify
    client.delete("/_emulator/webhooks/1")
    client.post("/_emulator/webhooks", json={"url": f"{setup.receiver}/webhooks/{setup.shop}", "secret": "other"})

    product_id = client.post(
        "/_emulator/products", json={"title": "Gloves", "images": ["https://cdn.example/gloves.jpg"]}
    ).json()["product"]["id"]
    deliveries = settle(shop)

    assert [d["status"] for d in deliveries] == [401]
    assert setup.row(setup.shop, product_id) is None


# -------------------------------------------------------------------------------------------------- WooCommerce


@pytest.fixture
def woo(setup: Setup) -> Iterator[httpx.Client]:
    app = woo_emulator.create_app(products=3, clock=setup.clock.aware)
    with running(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        created = client.post(
            "/_emulator/webhooks", json={"url": f"{setup.receiver}/webhooks/{setup.woo}", "secret": WOO_SECRET}
        )
        assert created.status_code == 201
        yield client


def drain(client: httpx.Client) -> list[dict[str, Any]]:
    recent: list[dict[str, Any]] = client.post("/_emulator/webhooks/drain", timeout=DELIVERY_WAIT).json()["recent"]
    return recent


def test_the_woocommerce_ping_is_accepted(setup: Setup, woo: httpx.Client) -> None:
    answers = woo.post("/_emulator/webhooks/ping").json()["results"]

    assert answers
    assert all(a["accepted"] for a in answers)


def test_woocommerce_create_edit_trash_and_restore_reach_the_state_database(setup: Setup, woo: httpx.Client) -> None:
    product = woo.post(
        "/_emulator/products", json={"name": "Hoodie", "images": ["https://cdn.example/hoodie.jpg"]}
    ).json()
    drain(woo)
    setup.clock.advance()
    woo.patch(f"/_emulator/products/{product['id']}", json={"name": "Hoodie, grey"})
    drain(woo)
    edited = setup.row(setup.woo, product["id"])
    setup.clock.advance()
    woo.post(f"/_emulator/products/{product['id']}/trash")
    drain(woo)
    trashed = setup.row(setup.woo, product["id"])
    setup.clock.advance(120)
    woo.post(f"/_emulator/products/{product['id']}/restore")
    deliveries = drain(woo)

    assert [(d["topic"], d["status"]) for d in deliveries] == [
        ("product.created", 200),
        ("product.updated", 200),
        ("product.deleted", 200),
        ("product.restored", 200),
    ]
    assert edited.desired_payload["title"] == "Hoodie, grey"
    assert trashed.desired_hash == DELETED
    assert setup.row(setup.woo, product["id"]).desired_payload["title"] == "Hoodie, grey"
    assert setup.pushes(setup.woo) == [str(product["id"])] * 4


def test_a_woocommerce_variable_product_is_fetched_through_sync_product(setup: Setup, woo: httpx.Client) -> None:
    product = woo.post(
        "/_emulator/products",
        json={
            "name": "Dress",
            "type": "variable",
            "images": ["https://cdn.example/dress.jpg"],
            "variations": [
                {"image": "https://cdn.example/dress-red.jpg"},
                {"image": "https://cdn.example/dress-blue.jpg"},
            ],
        },
    ).json()
    drain(woo)

    messages = [(m.task, m.args) for m in setup.queues.messages()]
    assert messages == [("catalog_sync.sync_product", [setup.woo, str(product["id"])])]
