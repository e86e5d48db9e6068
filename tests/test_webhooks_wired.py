"""Webhooks wired by one command, end to end: `catalog-sync run --embedded` serves webhooks, `catalog-sync webhooks
register` subscribes it in the Shopify and WooCommerce emulators, a product created in each shop is delivered, signed
with the registered secret, to the running server, and reaches the catalog emulator. All real processes and sockets.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from emulators import shopify as shopify_emulator
from emulators import woocommerce as woo_emulator
from emulators.server import free_port, running
from tests.sync_helpers import ext, process_env, run_cli, sync_world

# A guard against a hung process, not a performance assertion.
TIMEOUT = 90.0
COMMAND = [sys.executable, "-c", "from worker.cli import main; main()"]
WOO_SECRET = "woo-registered-secret"
IMAGE = "https://cdn.example/linen.jpg"


def sources(shopify_url: str, woo_url: str, port: int) -> str:
    # Scheduled syncs an hour apart: within the test, only webhooks bring products in.
    common = "check_images = false\nincremental_interval = 3600\nfull_interval = 86400\n"
    return (
        f'[[sources]]\nname = "shop"\nkind = "shopify"\nurl = "{shopify_url}"\n'
        f'access_token = "{shopify_emulator.DEFAULT_ACCESS_TOKEN}"\n'
        f'webhook_secret = "{shopify_emulator.DEFAULT_APP_SECRET}"\n{common}\n'
        f'[[sources]]\nname = "woo"\nkind = "woocommerce"\nurl = "{woo_url}"\n'
        f'consumer_key = "{woo_emulator.DEFAULT_CONSUMER_KEY}"\n'
        f'consumer_secret = "{woo_emulator.DEFAULT_CONSUMER_SECRET}"\n'
        f'webhook_secret = "{WOO_SECRET}"\nwebhook_url = "http://127.0.0.1:{port}/webhooks/woo"\n{common}'
    )


def wait_for(check: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_registered_webhooks_bring_a_new_product_of_each_shop_into_the_catalog(tmp_path: Path) -> None:
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    shopify_app = shopify_emulator.create_app(products=0)
    woo_app = woo_emulator.create_app(products=0, key_permissions="read_write")
    shop, store = shopify_app.state.shop, woo_app.state.store
    with (
        running(shopify_app) as shopify,
        running(woo_app) as woo,
        sync_world(tmp_path, sources=sources(shopify.url, woo.url, port)) as world,
        httpx.Client(base_url=shopify.url, timeout=10) as shopify_admin,
        httpx.Client(base_url=woo.url, timeout=10) as woo_admin,
    ):
        env = process_env(
            world, {"CATALOG_SYNC_CATALOG_RATE_LIMIT": "500", "CATALOG_SYNC_BROKER_URL": "redis://127.0.0.1:1/0"}
        )
        log = tmp_path / "embedded.log"
        with log.open("wb") as output:
            server = subprocess.Popen(
                [*COMMAND, "run", "--embedded", "--webhook-port", str(port)], env=env, stdout=output, stderr=output
            )
        try:
            wait_for(lambda: ready(receiver), server, log)

            # Given the webhooks registered by one command per shop (WooCommerce's from its webhook_url)
            registered_shop = run_cli(env, "webhooks", "register", "shop", "--url", f"{receiver}/webhooks/shop")
            registered_woo = run_cli(env, "webhooks", "register", "woo")
            listed = run_cli(env, "webhooks", "list", "shop", "--url", f"{receiver}/webhooks/shop")
            # WooCommerce pings a webhook it creates; the server must answer 200 or the store flags it.
            wait_for(lambda: len([d for d in store.stats.recent if d["topic"] == "ping"]) == 4, server, log)

            # When a product is created in each shop
            created = shopify_admin.post(
                "/_emulator/products", json={"title": "Linen shirt", "status": "active", "images": [IMAGE]}
            ).json()["product"]
            made = woo_admin.post("/_emulator/products", json={"name": "Linen dress", "images": [IMAGE]}).json()
            wanted = {ext(str(created["id"]), "shop"), ext(str(made["id"]), "woo")}

            # Then both reach the catalog, through signed deliveries the server accepted
            wait_for(lambda: wanted <= set(world.catalog_products()), server, log)
            products = world.catalog_products()
        finally:
            server.terminate()
            server.wait(timeout=30)

    assert registered_shop.returncode == 0, registered_shop.stderr
    assert registered_woo.returncode == 0, registered_woo.stderr
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [d["status"] for d in shop.webhooks.summary()["recent"]] == [200]
    assert [d["topic"] for d in shop.webhooks.summary()["recent"]] == ["products/create"]
    woo_deliveries = [(d["topic"], d["status"]) for d in store.stats.recent]
    assert woo_deliveries == [("ping", 200)] * 4 + [("product.created", 200)]
    assert products[ext(str(created["id"]), "shop")]["title"] == "Linen shirt"
    assert products[ext(str(made["id"]), "woo")]["title"] == "Linen dress"
