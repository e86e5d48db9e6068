"""`catalog-sync webhooks register` and `list` as an operator runs them: a real process against the shop emulators,
one line per topic, JSON on stdout, exit 2 for configuration mistakes and 1 for failures, never a traceback, never
a secret."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emulators import shopify as shopify_emulator
from emulators import woocommerce as woo_emulator
from emulators.server import running
from tests.sync_helpers import SyncWorld, process_env, run_cli, sync_world

WOO_SECRET = "woo-hook-secret-do-not-print"
WRONG_TOKEN = "shpat_wrong_token_do_not_print"


def url_for(source: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:9/webhooks/{source}"


@dataclass
class Shops:
    world: SyncWorld
    shopify: Any  # the Shopify emulator's Shop
    woo: Any  # the WooCommerce emulator's WooStore

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(process_env(self.world), "webhooks", *args)


def sources_file(shopify_url: str, woo_url: str) -> str:
    shopify = f'url = "{shopify_url}"\naccess_token = "{shopify_emulator.DEFAULT_ACCESS_TOKEN}"\n'
    woo = (
        f'url = "{woo_url}"\nconsumer_key = "{woo_emulator.DEFAULT_CONSUMER_KEY}"\n'
        f'consumer_secret = "{woo_emulator.DEFAULT_CONSUMER_SECRET}"\n'
    )
    secret = f'webhook_secret = "{shopify_emulator.DEFAULT_APP_SECRET}"\n'
    return "\n".join(
        (
            f'[[sources]]\nname = "shop"\nkind = "shopify"\n{shopify}{secret}',
            f'[[sources]]\nname = "legacy"\nkind = "shopify-rest"\n{shopify}{secret}',
            f'[[sources]]\nname = "woo"\nkind = "woocommerce"\n{woo}webhook_secret = "{WOO_SECRET}"\n'
            f'webhook_url = "{url_for("woo")}"\n',
            f'[[sources]]\nname = "nosecret"\nkind = "woocommerce"\n{woo}',
            f'[[sources]]\nname = "wrong"\nkind = "shopify"\nurl = "{shopify_url}"\naccess_token = "{WRONG_TOKEN}"\n'
            f"{secret}",
            '[[sources]]\nname = "front"\nkind = "shopify-storefront"\nurl = "https://front.example"\n',
            '[[sources]]\nname = "feed"\nkind = "feed"\nurl = "feed.json"\n',
        )
    )


@pytest.fixture
def shops(tmp_path: Path) -> Iterator[Shops]:
    shopify_app = shopify_emulator.create_app(products=1)
    woo_app = woo_emulator.create_app(products=1, key_permissions="read_write")
    with (
        running(shopify_app) as shopify,
        running(woo_app) as woo,
        sync_world(tmp_path, sources=sources_file(shopify.url, woo.url)) as world,
    ):
        yield Shops(world, shopify_app.state.shop, woo_app.state.store)


def no_trace(result: subprocess.CompletedProcess[str]) -> str:
    """Everything the command printed, checked for tracebacks and secrets."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    for secret in (WOO_SECRET, WRONG_TOKEN, shopify_emulator.DEFAULT_APP_SECRET, shopify_emulator.DEFAULT_ACCESS_TOKEN):
        assert secret not in text
    return text


def test_register_prints_one_line_per_topic_and_a_second_run_creates_nothing(shops: Shops) -> None:
    first = shops.cli("register", "shop", "--url", url_for("shop"))
    second = shops.cli("register", "shop", "--url", url_for("shop"))

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[:3] == [
        "products/create: created",
        "products/update: created",
        "products/delete: created",
    ]
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[:3] == [
        "products/create: unchanged",
        "products/update: unchanged",
        "products/delete: unchanged",
    ]
    assert len(shops.shopify.webhooks.app_subscriptions()) == 3
    no_trace(first)


def test_a_new_url_updates_the_legacy_rest_subscriptions(shops: Shops) -> None:
    shops.cli("register", "legacy", "--url", url_for("legacy"))

    moved = shops.cli("register", "legacy", "--url", url_for("legacy", "localhost"), "--json")

    assert moved.returncode == 0, moved.stderr
    body = json.loads(moved.stdout)
    assert [(t["topic"], t["action"], t["url"]) for t in body["topics"]] == [
        (topic, "updated", url_for("legacy", "localhost")) for topic in shopify_emulator.WEBHOOK_TOPICS
    ]
    assert {s.url for s in shops.shopify.webhooks.app_subscriptions()} == {url_for("legacy", "localhost")}


def test_list_matches_the_configured_url_and_names_each_topic_that_does_not(shops: Shops) -> None:
    registered = shops.cli("register", "woo")  # the source's webhook_url
    matching = shops.cli("list", "woo", "--json")
    shops.woo.webhooks[1].status = "paused"
    other = shops.cli("list", "woo", "--url", url_for("woo", "localhost"))
    paused = shops.cli("list", "woo")

    assert registered.returncode == 0, registered.stderr
    assert [line.split(": ")[1] for line in registered.stdout.splitlines()[:4]] == ["created"] * 4
    assert matching.returncode == 0, matching.stderr
    listing = json.loads(matching.stdout)
    assert listing["ok"] is True
    assert [(s["topic"], s["status"], s["matches"]) for s in listing["subscriptions"]] == [
        (topic, "active", True) for topic in woo_emulator.PRODUCT_TOPICS
    ]
    assert other.returncode == 1
    assert no_trace(other).count("does not match:") == 4
    assert f"product.created: registered for {url_for('woo')} (active), not for {url_for('woo', 'localhost')}" in (
        " ".join(other.stderr.split())
    )
    assert paused.returncode == 1
    problems = [line for line in paused.stderr.splitlines() if line.startswith("does not match:")]
    assert problems == [
        "does not match: product.updated: paused, so it delivers nothing; `register` switches it back on"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("register", "feed", "--url", url_for("feed")), "source 'feed': a feed has no webhook API"),
        (("list", "front"), "the public storefront has no webhook API"),
        (("register", "shop", "--url", "http://hooks.example/webhooks/shop"), "plain http://"),
        (("register", "shop", "--url", "https://hooks.example/webhooks/other"), "does not end with /webhooks/shop"),
        (("register", "shop"), "no webhook URL: pass --url"),
        (("register", "nosecret", "--url", url_for("nosecret")), "webhook_secret is not set"),
        (("register", "nobody", "--url", url_for("nobody")), "unknown source 'nobody'"),
    ],
    ids=["feed", "storefront", "plain-http", "wrong-path", "no-url", "no-secret", "unknown-source"],
)
def test_configuration_mistakes_exit_2_with_one_clear_line(shops: Shops, args: tuple[str, ...], message: str) -> None:
    result = shops.cli(*args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())
    assert no_trace(result).strip().startswith("configuration error:")
    assert shops.shopify.webhooks.app_subscriptions() == []
    assert shops.woo.webhooks == []


def test_a_refused_token_exits_1_with_one_line_and_no_secret(shops: Shops) -> None:
    result = shops.cli("register", "wrong", "--url", url_for("wrong"), "--json")

    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["outcome"] == "failed"
    assert "refused our credentials (401)" in body["error"]
    assert len(no_trace(result).strip().splitlines()) > 0
    assert result.stderr.startswith("failed:")
