"""No secret is ever shown: the main commands and a sync run as real processes at DEBUG log level with known
secret values (the catalog key, shop tokens and consumer keys, webhook secrets, a feed's password and access key, a
database password), and none of them may appear in stdout, stderr, logs, `status --json`, `/metrics`, an answer
to a rejected webhook or an exception message. Reprs and configuration errors are checked the same way."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config.settings import Settings
from config.sources import FeedSource, ShopifySource, SourceConfig, parse_sources
from emulators import catalog as catalog_emulator
from emulators import shopify as shopify_emulator
from emulators import woocommerce as woo_emulator
from emulators.server import running
from ground.errors import ConfigError
from tests.redis_dbs import db_for
from worker.ratelimit import build_limiter
from worker.runtime import Runtime
from worker.state import Store

CATALOG_KEY = "catkey-S3CRET-catalog"
SHOP_TOKEN = "shpat-S3CRET-token"
SHOP_WEBHOOK = "whsec-S3CRET-shopify"
WOO_KEY = "ck_S3CRET-consumer-key"
WOO_SECRET = "cs_S3CRET-consumer-secret"
WOO_WEBHOOK = "wcwh-S3CRET-woo"
FEED_PASSWORD = "feedpw-S3CRET-password"
FEED_KEY = "feedkey-S3CRET-query"
WRONG_FEED_PASSWORD = "wrongpw-S3CRET-password"
DB_PASSWORD = "dbpw-S3CRET-database"
BROKER_PASSWORD = "brokerpw-S3CRET-redis"
SECRETS = (
    CATALOG_KEY,
    SHOP_TOKEN,
    SHOP_WEBHOOK,
    WOO_KEY,
    WOO_SECRET,
    WOO_WEBHOOK,
    FEED_PASSWORD,
    FEED_KEY,
    WRONG_FEED_PASSWORD,
    DB_PASSWORD,
    BROKER_PASSWORD,
)
FEED_USER = "merchant"
FEED = (
    '<?xml version="1.0"?><rss version="2.0" xmlns:g="http://base.google.com/ns/1.0"><channel>'
    + "".join(
        f"<item><g:id>f-{n}</g:id><g:title>Feed {n}</g:title><g:image_link>https://cdn.example/{n}.jpg</g:image_link>"
        "</item>"
        for n in range(3)
    )
    + "</channel></rss>"
)


def leaked(text: str) -> list[str]:
    """The secrets found in `text`, in clear or in the encodings a URL or a header would give them."""
    found = []
    for secret in SECRETS:
        forms = {secret, base64.b64encode(secret.encode()).decode(), secret.replace("-", "%2D")}
        if any(form in text for form in forms):
            found.append(secret)
    return found


# ---- reprs and configuration errors ------------------------------------------------------------------------------


def test_the_reprs_of_settings_runtime_and_sources_show_no_password(clean_env: None, tmp_path: Path) -> None:
    settings = Settings(
        config=tmp_path / "none.toml",
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        broker_url=f"redis://:{BROKER_PASSWORD}@127.0.0.1:6379/0",
        redis_url=f"redis://user:{BROKER_PASSWORD}@127.0.0.1:6379/1",
        catalog_api_key=SecretStr(CATALOG_KEY),
    )
    pg = Settings(database_url=f"postgresql+psycopg://catalog:{DB_PASSWORD}@db.example/catalog")
    source = FeedSource(
        name="feed",
        kind="feed",
        url=f"https://{FEED_USER}:{FEED_PASSWORD}@feeds.example/f.xml?key={FEED_KEY}",
    )
    shop = ShopifySource(
        name="shop",
        kind="shopify",
        url="https://s.example",
        access_token=SecretStr(SHOP_TOKEN),
        webhook_secret=SecretStr(SHOP_WEBHOOK),
    )
    sources: dict[str, SourceConfig] = {"feed": source, "shop": shop}
    runtime = Runtime(settings, sources, Store.from_url(settings.database_url), build_limiter(settings))
    try:
        shown = " ".join(
            [repr(settings), str(settings), repr(pg), repr(runtime), repr(source), str(source), repr(shop), str(shop)]
        )
    finally:
        runtime.close()

    assert leaked(shown) == []
    assert "feeds.example/f.xml" in shown and "db.example" in shown


@pytest.mark.parametrize("field", ["acces_token", "webhook_secert", "consumer_secrte"])
def test_a_misspelled_secret_field_is_named_without_its_value(field: str) -> None:
    table = {
        "name": "shop",
        "kind": "shopify",
        "url": "https://s.example",
        "access_token": SHOP_TOKEN,
        field: WOO_SECRET,
    }
    if field == "acces_token":
        del table["access_token"]

    with pytest.raises(ConfigError) as caught:
        parse_sources({"sources": [table]})

    assert field in str(caught.value)
    assert leaked(str(caught.value)) == []


def test_a_feed_url_with_a_bad_value_is_reported_redacted(clean_env: None) -> None:
    table = {"name": "f", "kind": "feed", "url": f"https://u:{FEED_PASSWORD}@x.example/f.xml", "timeout": -1}

    with pytest.raises(ConfigError) as caught:
        parse_sources({"sources": [table]})

    assert "timeout" in str(caught.value)
    assert leaked(str(caught.value)) == []


# ---- the commands, as an operator runs them --------------------------------------------------------------------


class FeedSite:
    """A feed behind HTTP Basic auth and a query-string key, as merchants' platforms publish them."""

    async def serve(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{FEED_USER}:{FEED_PASSWORD}".encode()).decode()
        if request.headers.get("authorization") != expected or request.query_params.get("key") != FEED_KEY:
            return Response("denied", status_code=401)
        return Response(FEED, media_type="application/rss+xml")


@pytest.fixture
def pg_with_password(postgres_url: str, unique: str) -> Iterator[str]:
    """A throwaway schema, reached through a URL that carries a password (the test server trusts local
    connections, so it is sent nowhere, but every place that could show the URL sees it)."""
    schema = f"s_{unique}"
    admin = sqlalchemy.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    user_at = postgres_url.split("://", 1)[1].split("@", 1)[0]
    url = postgres_url.replace(f"{user_at}@", f"{user_at}:{DB_PASSWORD}@", 1)
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_no_command_log_metric_or_error_shows_a_secret(
    clean_env: None, pg_with_password: str, redis_url: str, tmp_path: Path
) -> None:
    feed_app = Starlette(routes=[Route("/feed.xml", FeedSite().serve)])
    with contextlib.ExitStack() as stack:
        catalog = stack.enter_context(running(catalog_emulator.create_app([CATALOG_KEY])))
        feeds = stack.enter_context(running(feed_app))
        shop = stack.enter_context(running(shopify_emulator.create_app(products=3, access_token=SHOP_TOKEN)))
        woo = stack.enter_context(
            running(woo_emulator.create_app(products=3, consumer_key=WOO_KEY, consumer_secret=WOO_SECRET))
        )
        feed_url = f"http://{FEED_USER}:{{password}}@127.0.0.1:{feeds.port}/feed.xml?key={FEED_KEY}"
        config = tmp_path / "catalog-sync.toml"
        config.write_text(
            f'[[sources]]\nname = "feed"\nkind = "feed"\nurl = "{feed_url.format(password=FEED_PASSWORD)}"\n\n'
            f'[[sources]]\nname = "feed-denied"\nkind = "feed"\n'
            f'url = "{feed_url.format(password=WRONG_FEED_PASSWORD)}"\n\n'
            f'[[sources]]\nname = "shop"\nkind = "shopify"\nurl = "{shop.url}"\naccess_token = "env:SHOP_TOKEN"\n'
            f'webhook_secret = "{SHOP_WEBHOOK}"\n\n'
            f'[[sources]]\nname = "woo"\nkind = "woocommerce"\nurl = "{woo.url}"\nconsumer_key = "{WOO_KEY}"\n'
            f'consumer_secret = "env:WOO_SECRET"\nwebhook_secret = "{WOO_WEBHOOK}"\n',
            encoding="utf-8",
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CATALOG_SYNC_")},
            "CATALOG_SYNC_CONFIG": str(config),
            "CATALOG_SYNC_DATABASE_URL": pg_with_password,
            "CATALOG_SYNC_BROKER_URL": f"{redis_url.rsplit('/', 1)[0]}/{db_for('webhooks')}",
            "CATALOG_SYNC_CATALOG_URL": f"{catalog.url}/tryon/v1",
            "CATALOG_SYNC_CATALOG_API_KEY": CATALOG_KEY,
            "CATALOG_SYNC_CATALOG_RATE_LIMIT": "500",
            "CATALOG_SYNC_CATALOG_MAX_ATTEMPTS": "1",
            "CATALOG_SYNC_LOG_LEVEL": "DEBUG",
            "SHOP_TOKEN": SHOP_TOKEN,
            "WOO_SECRET": WOO_SECRET,
            "COLUMNS": "250",
        }
        outputs: dict[str, str] = {}

        def command(*args: str) -> subprocess.CompletedProcess[str]:
            result = subprocess.run(
                [sys.executable, "-c", "from worker.cli import main; main()", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            outputs[" ".join(args)] = result.stdout + result.stderr
            return result

        assert command("db", "upgrade").returncode == 0
        assert command("sources").returncode == 1  # feed-denied cannot be read
        for name in ("feed", "shop", "woo"):
            result = command("resync", name, "--full", "--inline", "--json", "--timeout", "60")
            assert json.loads(result.stdout)["outcome"] == "converged", outputs
        assert command("resync", "feed-denied", "--full", "--inline", "--json", "--timeout", "30").returncode == 1
        status = command("status", "--json")
        assert status.returncode == 0, status.stderr
        command("failures")
        command("failures", "--json")
        outputs["webhook server"] = webhook_server_session(env)

    everything = "\n".join(f"--- {name}\n{text}" for name, text in outputs.items())
    assert leaked(everything) == [], everything[-3000:]
    # The logs really were at DEBUG, requests included: the check above was not made against silence.
    assert "DEBUG" in everything and "HTTP Request" in everything
    assert "feed-denied" in outputs["status --json"]


def webhook_server_session(env: dict[str, str]) -> str:
    """Run `catalog-sync serve`, scrape /metrics and /healthz, send a webhook with a wrong signature; return
    everything seen: answers and the server's own output."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from worker.cli import main; main()", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{base}/healthz", timeout=5)
                break
            time.sleep(0.1)
        seen.append(httpx.get(f"{base}/metrics", timeout=30).text)
        seen.append(httpx.get(f"{base}/healthz", timeout=30).text)
        body = b'{"id": 1, "title": "x"}'
        rejected = httpx.post(
            f"{base}/webhooks/shop",
            content=body,
            headers={
                "X-Shopify-Hmac-Sha256": base64.b64encode(b"forged").decode(),
                "X-Shopify-Topic": "products/update",
            },
            timeout=30,
        )
        assert rejected.status_code == 401
        seen.append(rejected.text)
        seen.append(httpx.get(f"{base}/metrics", timeout=30).text)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    seen.append(output)
    return "\n".join(seen)
