"""The shop emulators' webhook APIs answer the way the shops do: Shopify's Admin GraphQL and REST subscriptions
(userErrors, 422s, the address field of each API version), WooCommerce's REST webhooks (write-only secret, no
trashing, statuses, the creation ping, disabled after repeated failures). Over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.woocommerce import webhook_signature
from emulators import shopify as shopify_emulator
from emulators import woocommerce as woo_emulator
from emulators.server import free_port, running
from emulators.woocommerce.store import MAX_DELIVERY_FAILURES

HOOK = "http://127.0.0.1:9/webhooks/acme"
TOKEN = {"X-Shopify-Access-Token": shopify_emulator.DEFAULT_ACCESS_TOKEN}
CREATE = (
    "mutation($topic: WebhookSubscriptionTopic!, $sub: WebhookSubscriptionInput!) { "
    "webhookSubscriptionCreate(topic: $topic, webhookSubscription: $sub) { "
    "webhookSubscription { id topic %s } userErrors { field message } } }"
)
DELETE = (
    "mutation($id: ID!) { webhookSubscriptionDelete(id: $id) { deletedWebhookSubscriptionId userErrors { message } } }"
)
LIST = (
    "query($topics: [WebhookSubscriptionTopic!]) { webhookSubscriptions(first: 10, topics: $topics) { "
    "nodes { id topic uri endpoint { __typename ... on WebhookHttpEndpoint { callbackUrl } } } } }"
)


@pytest.fixture
def shopify() -> Iterator[httpx.Client]:
    app = shopify_emulator.create_app(products=1)
    with running(app) as server, httpx.Client(base_url=server.url, headers=TOKEN, timeout=10) as client:
        yield client


def graphql(client: httpx.Client, query: str, version: str = "2025-07", **variables: Any) -> dict[str, Any]:
    response = client.post(f"/admin/api/{version}/graphql.json", json={"query": query, "variables": variables})
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_shopify_graphql_creates_lists_refuses_a_taken_address_and_deletes(shopify: httpx.Client) -> None:
    created = graphql(shopify, CREATE % "callbackUrl", topic="PRODUCTS_UPDATE", sub={"callbackUrl": HOOK})
    taken = graphql(shopify, CREATE % "callbackUrl", topic="PRODUCTS_UPDATE", sub={"callbackUrl": HOOK})
    other_topic = graphql(shopify, CREATE % "callbackUrl", topic="PRODUCTS_DELETE", sub={"callbackUrl": HOOK})
    listed = graphql(shopify, LIST, topics=["PRODUCTS_UPDATE"])
    subscription_id = created["data"]["webhookSubscriptionCreate"]["webhookSubscription"]["id"]
    deleted = graphql(shopify, DELETE, id=subscription_id)

    assert created["data"]["webhookSubscriptionCreate"]["userErrors"] == []
    assert subscription_id.startswith("gid://shopify/WebhookSubscription/")
    assert taken["data"]["webhookSubscriptionCreate"] == {
        "webhookSubscription": None,
        "userErrors": [
            {
                "field": ["webhookSubscription", "callbackUrl"],
                "message": "Address for this topic has already been taken",
            }
        ],
    }
    assert other_topic["data"]["webhookSubscriptionCreate"]["userErrors"] == []
    assert listed["data"]["webhookSubscriptions"]["nodes"] == [
        {
            "id": subscription_id,
            "topic": "PRODUCTS_UPDATE",
            "uri": HOOK,
            "endpoint": {"__typename": "WebhookHttpEndpoint", "callbackUrl": HOOK},
        }
    ]
    assert deleted["data"]["webhookSubscriptionDelete"] == {
        "deletedWebhookSubscriptionId": subscription_id,
        "userErrors": [],
    }


def test_shopify_takes_uri_from_api_version_2025_10_only(shopify: httpx.Client) -> None:
    old = graphql(shopify, CREATE % "uri", "2025-07", topic="PRODUCTS_CREATE", sub={"uri": HOOK})
    new = graphql(shopify, CREATE % "uri", "2025-10", topic="PRODUCTS_CREATE", sub={"uri": HOOK})

    assert "new in 2025-10" in old["errors"][0]["message"]
    assert new["data"]["webhookSubscriptionCreate"]["webhookSubscription"]["uri"] == HOOK


def test_shopify_rest_webhooks_answer_422_for_a_taken_address_and_hide_control_receivers(
    shopify: httpx.Client,
) -> None:
    shopify.post("/_emulator/webhooks", json={"url": HOOK, "secret": "control-receiver"})
    body = {"webhook": {"topic": "products/create", "address": HOOK, "format": "json"}}

    created = shopify.post("/admin/api/2025-07/webhooks.json", json=body)
    taken = shopify.post("/admin/api/2025-07/webhooks.json", json=body)
    listed = shopify.get("/admin/api/2025-07/webhooks.json")
    moved = shopify.put(
        f"/admin/api/2025-07/webhooks/{created.json()['webhook']['id']}.json",
        json={"webhook": {"address": "http://localhost:9/webhooks/acme"}},
    )

    assert created.status_code == 201
    assert taken.status_code == 422
    assert taken.json() == {"errors": {"address": ["for this topic has already been taken"]}}
    assert [(w["topic"], w["address"]) for w in listed.json()["webhooks"]] == [("products/create", HOOK)]
    assert moved.json()["webhook"]["address"] == "http://localhost:9/webhooks/acme"


# ------------------------------------------------------------------------------------------------- WooCommerce

KEY = (woo_emulator.DEFAULT_CONSUMER_KEY, woo_emulator.DEFAULT_CONSUMER_SECRET)
API = woo_emulator.API_PREFIX


class Receiver:
    """A delivery URL that records what arrives and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []

        async def receive(request: Request) -> Response:
            self.received.append((dict(request.headers), await request.body()))
            return Response("ok")

        self.app = Starlette(routes=[Route("/webhooks/acme", receive, methods=["POST"])])


def woo_client(permissions: str = "read_write") -> Any:
    # Basic credentials over plain HTTP only when the store is told the connection is secure.
    return woo_emulator.create_app(products=1, key_permissions=permissions, secure=True)


def test_woocommerce_webhooks_hide_the_secret_refuse_trashing_and_filter_by_status() -> None:
    app = woo_client()
    with running(app) as server, httpx.Client(base_url=server.url, auth=KEY, timeout=10) as client:
        created = client.post(
            f"{API}/webhooks",
            json={"topic": "product.updated", "delivery_url": HOOK, "secret": "s3cret", "name": "ours"},
        )
        hook_id = created.json()["id"]
        paused = client.put(f"{API}/webhooks/{hook_id}", json={"status": "paused"})
        active = client.get(f"{API}/webhooks", params={"status": "active"})
        every = client.get(f"{API}/webhooks")
        trashed = client.delete(f"{API}/webhooks/{hook_id}")
        deleted = client.delete(f"{API}/webhooks/{hook_id}", params={"force": "true"})
        gone = client.get(f"{API}/webhooks/{hook_id}")

    assert created.status_code == 201
    assert created.json()["name"] == "ours"
    assert "secret" not in created.json() and "s3cret" not in created.text
    assert paused.json()["status"] == "paused"
    assert active.json() == []
    assert [(w["id"], w["status"], w["topic"]) for w in every.json()] == [(hook_id, "paused", "product.updated")]
    assert every.headers["X-WP-Total"] == "1"
    assert trashed.status_code == 501
    assert trashed.json()["code"] == "woocommerce_rest_trash_not_supported"
    assert deleted.status_code == 200
    assert gone.status_code == 404


def test_a_read_only_key_may_list_woocommerce_webhooks_but_not_create_them() -> None:
    app = woo_client("read")
    with running(app) as server, httpx.Client(base_url=server.url, auth=KEY, timeout=10) as client:
        listed = client.get(f"{API}/webhooks")
        refused = client.post(f"{API}/webhooks", json={"topic": "product.updated", "delivery_url": HOOK})

    assert listed.status_code == 200
    assert refused.status_code == 401
    assert refused.json()["message"] == "The API key provided does not have write permissions."


def test_a_created_woocommerce_webhook_is_pinged_and_signs_deliveries_with_its_secret() -> None:
    receiver = Receiver()
    app = woo_client()
    with (
        running(receiver.app) as hooks,
        running(app) as server,
        httpx.Client(base_url=server.url, auth=KEY, timeout=10) as client,
    ):
        created = client.post(
            f"{API}/webhooks",
            json={"topic": "product.created", "delivery_url": f"{hooks.url}/webhooks/acme", "secret": "s3cret"},
        ).json()
        client.post("/_emulator/products", json={"name": "Linen dress", "images": ["https://cdn.example/a.jpg"]})
        client.post("/_emulator/webhooks/drain")

    (ping_headers, ping), (headers, body) = receiver.received
    assert ping == f"webhook_id={created['id']}".encode()
    assert "x-wc-webhook-signature" not in ping_headers
    assert headers["x-wc-webhook-topic"] == "product.created"
    assert headers["x-wc-webhook-signature"] == webhook_signature(body, "s3cret")


def test_a_woocommerce_webhook_that_keeps_failing_is_disabled_and_stops_delivering() -> None:
    app = woo_client()
    nowhere = f"http://127.0.0.1:{free_port()}/webhooks/acme"
    with running(app) as server, httpx.Client(base_url=server.url, auth=KEY, timeout=10) as client:
        hook_id = client.post(f"{API}/webhooks", json={"topic": "product.updated", "delivery_url": nowhere}).json()[
            "id"
        ]
        product = client.get(f"{API}/products", params={"per_page": 1}).json()[0]["id"]
        for n in range(MAX_DELIVERY_FAILURES + 2):
            client.patch(f"/_emulator/products/{product}", json={"name": f"Edit {n}"})
            client.post("/_emulator/webhooks/drain")
        status = client.get(f"{API}/webhooks/{hook_id}").json()["status"]
        deliveries = client.get("/_emulator/stats").json()["deliveries"]

    assert status == "disabled"
    assert deliveries["failed"] == MAX_DELIVERY_FAILURES + 1
