"""Registering product webhooks through each shop's API, against the Shopify and WooCommerce emulators over real
sockets: created once, unchanged after, moved rather than duplicated, switched back on, checked, refused clearly."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr

from config.sources import ShopifySource, SourceConfig, WooCommerceSource, parse_source
from connectors import build_connector
from connectors.subscriptions import SubscriptionApi
from emulators import shopify as shopify_emulator
from emulators import woocommerce as woo_emulator
from emulators.server import running
from ground.errors import AuthError, ConfigError, SourceError
from worker.webhook_registration import inspect_subscriptions, register, required_url, subscription_api

SOURCE = "acme"
URL = f"http://127.0.0.1:9/webhooks/{SOURCE}"
MOVED = f"http://localhost:9/webhooks/{SOURCE}"
WOO_SECRET = "woo-webhook-secret"


@dataclass
class Shop:
    """A running shop emulator and a source that reads it."""

    flavour: str
    source: SourceConfig
    state: Any  # the emulator's in-process state: Shop (Shopify) or WooStore

    def api(self, **changes: Any) -> SubscriptionApi:
        source = self.source.model_copy(update=changes)
        return subscription_api(source, build_connector(source))

    def registered(self) -> list[tuple[str, str, str]]:
        """(topic, url, status) of every subscription the shop holds, as the shop itself knows them."""
        if self.flavour == "woocommerce":
            return sorted((w.topic, w.url, w.status) for w in self.state.webhooks)
        return sorted((s.topic, s.url, "active") for s in self.state.webhooks.app_subscriptions())


FLAVOURS = ("shopify-2025-07", "shopify-2025-10", "shopify-rest", "woocommerce")


@pytest.fixture(params=FLAVOURS)
def shop(request: pytest.FixtureRequest) -> Iterator[Shop]:
    flavour: str = request.param
    if flavour == "woocommerce":
        app = woo_emulator.create_app(products=2, key_permissions="read_write")
        with running(app) as server:
            source: SourceConfig = WooCommerceSource(
                name=SOURCE,
                kind="woocommerce",
                url=server.url,
                consumer_key=SecretStr(woo_emulator.DEFAULT_CONSUMER_KEY),
                consumer_secret=SecretStr(woo_emulator.DEFAULT_CONSUMER_SECRET),
                webhook_secret=SecretStr(WOO_SECRET),
            )
            yield Shop(flavour, source, app.state.store)
        return
    kind, _, version = flavour.partition("-2")
    app = shopify_emulator.create_app(products=2)
    with running(app) as server:
        source = parse_source(
            {
                "name": SOURCE,
                "kind": "shopify-rest" if kind == "shopify-rest" else "shopify",
                "url": server.url,
                "access_token": SecretStr(shopify_emulator.DEFAULT_ACCESS_TOKEN),
                "webhook_secret": SecretStr(shopify_emulator.DEFAULT_APP_SECRET),
                "api_version": f"2{version}" if version else shopify_emulator.DEFAULT_API_VERSION,
            }
        )
        yield Shop(flavour, source, app.state.shop)


def api_of(source: SourceConfig) -> SubscriptionApi:
    return subscription_api(source, build_connector(source))


def actions(shop: Shop, url: str, **options: Any) -> dict[str, str]:
    return {result.topic: result.action for result in register(shop.source, shop.api(), url, **options).results}


def test_register_creates_one_subscription_per_topic_and_a_second_run_changes_nothing(shop: Shop) -> None:
    topics = shop.api().webhook_topics()

    first = actions(shop, URL)
    after_first = shop.registered()
    second = actions(shop, URL)

    assert first == dict.fromkeys(topics, "created")
    assert second == dict.fromkeys(topics, "unchanged")
    assert after_first == sorted((topic, URL, "active") for topic in topics)
    assert shop.registered() == after_first


def test_a_changed_url_updates_the_subscriptions_instead_of_adding_some(shop: Shop) -> None:
    topics = shop.api().webhook_topics()
    actions(shop, URL)

    moved = actions(shop, MOVED)

    assert moved == dict.fromkeys(topics, "updated")
    assert shop.registered() == sorted((topic, MOVED, "active") for topic in topics)


def test_list_says_which_topics_match_the_url_and_which_do_not(shop: Shop) -> None:
    api = shop.api()
    topics = api.webhook_topics()
    nothing = inspect_subscriptions(shop.source, api, URL)
    api.create_subscription(topics[0], URL)
    api.create_subscription(topics[1], MOVED)

    partial = inspect_subscriptions(shop.source, api, URL)
    actions(shop, URL)
    complete = inspect_subscriptions(shop.source, api, URL)

    assert nothing.problems == [f"{topic}: not registered" for topic in topics]
    assert [(row.subscription.topic, row.matches) for row in partial.rows] == [(topics[0], True), (topics[1], False)]
    assert partial.problems[0] == f"{topics[1]}: registered for {MOVED} (active), not for {URL}"
    assert partial.problems[1:] == [f"{topic}: not registered" for topic in topics[2:]]
    assert complete.problems == []
    assert all(row.matches for row in complete.rows)
    assert complete.as_dict()["ok"] is True


def test_subscriptions_of_other_receivers_are_left_alone(shop: Shop) -> None:
    api = shop.api()
    topic = api.webhook_topics()[0]
    other = api.create_subscription(topic, "http://127.0.0.1:9/zapier/hook")

    actions(shop, URL)

    assert (topic, other.url, "active") in shop.registered()
    assert (topic, URL, "active") in shop.registered()


def test_a_wrong_access_token_is_a_clear_auth_error(shop: Shop) -> None:
    wrong = {"consumer_secret": SecretStr("cs_wrong")} if shop.flavour == "woocommerce" else {}
    wrong = wrong or {"access_token": SecretStr("shpat_wrong")}

    with pytest.raises(AuthError) as refused:
        register(shop.source, shop.api(**wrong), URL)

    message = str(refused.value)
    assert f"source {SOURCE!r}" in message
    assert "cs_wrong" not in message and "shpat_wrong" not in message


# ---------------------------------------------------------------------------------------------- one shop only


@pytest.fixture
def woo() -> Iterator[tuple[SourceConfig, Any]]:
    app = woo_emulator.create_app(products=1, key_permissions="read_write")
    with running(app) as server:
        source = WooCommerceSource(
            name=SOURCE,
            kind="woocommerce",
            url=server.url,
            consumer_key=SecretStr(woo_emulator.DEFAULT_CONSUMER_KEY),
            consumer_secret=SecretStr(woo_emulator.DEFAULT_CONSUMER_SECRET),
            webhook_secret=SecretStr(WOO_SECRET),
        )
        yield source, app.state.store


def test_a_paused_or_disabled_woocommerce_webhook_is_switched_back_on(woo: tuple[SourceConfig, Any]) -> None:
    source, store = woo
    api = subscription_api(source, build_connector(source))
    register(source, api, URL)
    store.webhooks[0].status = "paused"
    store.webhooks[1].status = "disabled"

    listed = inspect_subscriptions(source, api, URL)
    again = {r.topic: r.action for r in register(source, api, URL).results}

    assert listed.problems == [
        "product.created: paused, so it delivers nothing; `register` switches it back on",
        "product.updated: disabled, so it delivers nothing; `register` switches it back on",
    ]
    assert again == {
        "product.created": "updated",
        "product.updated": "updated",
        "product.deleted": "unchanged",
        "product.restored": "unchanged",
    }
    assert {w.status for w in store.webhooks} == {"active"}


def test_woocommerce_webhooks_carry_the_source_secret_and_force_sends_a_rotated_one(
    woo: tuple[SourceConfig, Any],
) -> None:
    source, store = woo
    register(source, api_of(source), URL)
    rotated = source.model_copy(update={"webhook_secret": SecretStr("rotated-secret")})

    unforced = {r.action for r in register(rotated, api_of(rotated), URL).results}
    secrets_before = {w.secret for w in store.webhooks}
    forced = {r.action for r in register(rotated, api_of(rotated), URL, force=True).results}

    assert secrets_before == {WOO_SECRET}
    assert unforced == {"unchanged"}
    assert forced == {"updated"}
    assert {w.secret for w in store.webhooks} == {"rotated-secret"}


def test_duplicates_of_our_woocommerce_webhook_are_removed(woo: tuple[SourceConfig, Any]) -> None:
    source, store = woo
    api = subscription_api(source, build_connector(source))
    api.create_subscription("product.updated", URL)
    api.create_subscription("product.updated", MOVED)

    results = {r.topic: r for r in register(source, api, URL).results}

    assert results["product.updated"].action == "unchanged"
    assert [s.url for s in results["product.updated"].removed] == [MOVED]
    assert sorted(w.topic for w in store.webhooks) == sorted(api.webhook_topics())


def test_a_read_only_woocommerce_key_is_told_to_get_write_permission() -> None:
    app = woo_emulator.create_app(products=1)  # the emulator's key reads only, like the README's products key
    with running(app) as server:
        source = WooCommerceSource(
            name=SOURCE,
            kind="woocommerce",
            url=server.url,
            consumer_key=SecretStr(woo_emulator.DEFAULT_CONSUMER_KEY),
            consumer_secret=SecretStr(woo_emulator.DEFAULT_CONSUMER_SECRET),
            webhook_secret=SecretStr(WOO_SECRET),
        )
        api = subscription_api(source, build_connector(source))

        listed = inspect_subscriptions(source, api, URL)
        with pytest.raises(AuthError, match="Read/Write permission"):
            register(source, api, URL)

    assert listed.problems[0] == "product.created: not registered"
    assert app.state.store.webhooks == []


def test_shopify_refuses_a_plain_http_address_off_this_machine_with_its_own_words() -> None:
    app = shopify_emulator.create_app(products=1)
    with running(app) as server:
        source = ShopifySource(
            name=SOURCE, kind="shopify", url=server.url, access_token=SecretStr(shopify_emulator.DEFAULT_ACCESS_TOKEN)
        )
        api = subscription_api(source, build_connector(source))

        with pytest.raises(SourceError, match="Address protocol http:// is not supported"):
            api.create_subscription("products/update", "http://shop.example/webhooks/acme")


@pytest.mark.parametrize(
    ("kind", "extra", "why"),
    [
        ("feed", {"url": "/tmp/feed.json"}, "a feed has no webhook API"),
        ("shopify-storefront", {"url": "https://shop.example"}, 'use kind "shopify"'),
    ],
    ids=["feed", "storefront"],
)
def test_sources_without_a_webhook_api_are_refused_as_configuration(kind: str, extra: dict[str, Any], why: str) -> None:
    source = parse_source({"name": SOURCE, "kind": kind, **extra})

    with pytest.raises(ConfigError, match=why):
        subscription_api(source, build_connector(source))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example/webhooks/acme", "plain http://"),
        ("https://hooks.example/hooks", "does not end with /webhooks/acme"),
        ("https://hooks.example/webhooks/acme?token=1", "query"),
        ("ftp://hooks.example/webhooks/acme", "not an http(s) URL"),
    ],
    ids=["http-off-this-machine", "wrong-path", "query", "not-http"],
)
def test_a_webhook_url_a_shop_cannot_deliver_to_is_a_configuration_error(url: str, why: str) -> None:
    source = ShopifySource(name=SOURCE, kind="shopify", url="https://acme.myshopify.com", access_token=SecretStr("t"))

    with pytest.raises(ConfigError, match=re.escape(why)):
        required_url(source, url)


def test_without_a_url_given_or_configured_register_says_how_to_give_one() -> None:
    source = ShopifySource(name=SOURCE, kind="shopify", url="https://acme.myshopify.com", access_token=SecretStr("t"))
    configured = source.model_copy(update={"webhook_url": "https://hooks.example/webhooks/acme"})

    with pytest.raises(ConfigError, match="pass --url https://<your host>/webhooks/acme"):
        required_url(source, None)
    assert required_url(configured, None) == "https://hooks.example/webhooks/acme"


def test_the_sources_file_checks_a_configured_webhook_url() -> None:
    from config.sources import parse_sources

    shop = {"name": SOURCE, "kind": "shopify", "url": "https://acme.myshopify.com", "access_token": "t"}

    with pytest.raises(ConfigError, match="webhook_url: plain http://"):
        parse_sources({"sources": [{**shop, "webhook_url": "http://hooks.example/webhooks/acme"}]})
    with pytest.raises(ConfigError, match="webhook_url applies to kind"):
        parse_sources({"sources": [{"name": SOURCE, "kind": "feed", "url": "f.json", "webhook_url": URL}]})
    parsed = parse_sources({"sources": [{**shop, "webhook_url": " https://hooks.example/webhooks/acme "}]})
    configured = parsed[SOURCE]
    assert isinstance(configured, ShopifySource)
    assert configured.webhook_url == "https://hooks.example/webhooks/acme"
