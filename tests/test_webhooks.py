"""Webhook intake over real HTTP: the app under uvicorn, the state database (SQLite and PostgreSQL), Celery
publishing to a real Redis, signed bodies from the shared fixtures and built the way the shops build them."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from config.sources import ShopifySource
from connectors.base import Connector, ImageRef, SourceProduct
from emulators.server import BackgroundServer, running
from tests.webhooks_support import (
    SHOPIFY_PREVIOUS_SECRET,
    Queues,
    broker_url,
    fixture_bytes,
    fixture_product,
    make_runtime,
    make_sources,
    shopify_headers,
    shopify_product,
    use_broker,
    woo_headers,
)
from worker import schema
from worker.logs import Throttle
from worker.plan import RunReport, plan_source
from worker.runtime import Runtime
from worker.state import DELETED, make_engine
from worker.webhooks import create_app

# The body limit in these tests: small, so oversize bodies are cheap to send (the setting's floor is 1 KiB).
MAX_BODY = 16 * 1024


@dataclass
class Env:
    runtime: Runtime
    server: BackgroundServer
    client: httpx.Client
    queues: Queues
    shop: str
    woo: str
    suffix: str

    def post(self, source: str, body: bytes, headers: Mapping[str, str] | Mapping[bytes, bytes]) -> httpx.Response:
        return self.client.post(f"/webhooks/{source}", content=body, headers=headers)

    def shopify(self, body: bytes, **kwargs: Any) -> httpx.Response:
        return self.post(self.shop, body, shopify_headers(body, **kwargs))

    def row(self, source: str, product_id: str) -> Any:
        return self.runtime.store.get(source, product_id)

    def pushed(self) -> list[tuple[str, str]]:
        return self.queues.pushed()


def serve_env(database_url: str, tmp_path: Path, unique: str) -> Iterator[Env]:
    sources = make_sources(unique)
    runtime = make_runtime(database_url, sources, broker_url(), tmp_path, webhook_max_body=MAX_BODY)
    use_broker(runtime)
    queues = Queues(broker_url(), sources)
    try:
        with running(create_app(runtime)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            yield Env(runtime, server, client, queues, f"shop-{unique}", f"woo-{unique}", unique)
    finally:
        queues.clear()
        queues.close()
        runtime.close()


@pytest.fixture
def env(clean_env: None, database_url: str, redis_url: str, tmp_path: Path, unique: str) -> Iterator[Env]:
    """The server on SQLite and on PostgreSQL: for everything that reads or writes state."""
    yield from serve_env(database_url, tmp_path, unique)


@pytest.fixture
def sqlite_env(clean_env: None, redis_url: str, tmp_path: Path, unique: str) -> Iterator[Env]:
    """The server on SQLite only: for refusals that never reach the state database."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    yield from serve_env(url, tmp_path, unique)


def body_of(product: dict[str, Any]) -> bytes:
    return json.dumps(product).encode()


# ------------------------------------------------------------------------------------------------ applying updates


def test_a_full_shopify_product_becomes_the_desired_row_and_a_priority_push(env: Env) -> None:
    body = fixture_product("shopify", "test_9__GET_632910392.json")

    response = env.shopify(body, event_id="e-1")

    assert response.status_code == 200
    assert response.json() == {"outcome": "updated"}
    row = env.row(env.shop, "632910392")
    assert row.status == "pending"
    assert row.desired_payload["title"] == "IPod Nano - 8GB"
    # The fixture lists one image twice; the repeat is dropped.
    assert len(row.desired_payload["images"]) == 2
    assert row.source_updated_at == datetime(2024, 4, 2, 13, 59, 11, tzinfo=UTC)
    assert env.pushed() == [(env.shop, "632910392")]


def test_a_product_without_images_is_recorded_as_skipped_and_still_pushed(env: Env) -> None:
    body = fixture_bytes("shopify", "shopify__new-product-created__test-event.products_create.json")

    response = env.shopify(body, topic="products/create", event_id="e-1")

    assert response.json() == {"outcome": "updated"}
    row = env.row(env.shop, "9674076979480")
    assert (row.status, row.skip_reason, row.desired_hash) == ("skipped", "no_images", DELETED)
    # The push converges the catalog: a product that lost its images leaves it.
    assert env.pushed() == [(env.shop, "9674076979480")]


def test_a_payload_the_connector_cannot_classify_is_fetched_from_the_shop(env: Env) -> None:
    # A status this version does not know: the shop's own read decides what the product is.
    body = body_of(shopify_product(20, title="Kilt", updated_at="2024-05-01T10:00:00Z", status="in_review"))

    response = env.shopify(body, event_id="e-1")

    assert response.json() == {"outcome": "fetch"}
    messages = env.queues.messages()
    assert [(m.task, m.args) for m in messages] == [("catalog_sync.sync_product", [env.shop, "20"])]
    assert env.row(env.shop, "20") is None


def test_a_woocommerce_product_update_becomes_the_desired_row(env: Env) -> None:
    body = fixture_bytes("woocommerce", "wp-api-v3_products__03_retrieve_a_product.json")

    response = env.post(env.woo, body, woo_headers(body, delivery_id="d-1"))

    assert response.json() == {"outcome": "updated"}
    row = env.row(env.woo, "794")
    assert row.desired_payload["title"] == "Premium Quality"
    assert env.pushed() == [(env.woo, "794")]


def test_a_woocommerce_variable_product_is_partial_and_triggers_sync_product(env: Env) -> None:
    product = json.loads(fixture_bytes("woocommerce", "wp-api-v3_products__03_retrieve_a_product.json"))
    product.update(type="variable", variations=[795, 796])
    body = body_of(product)

    response = env.post(env.woo, body, woo_headers(body, delivery_id="d-1"))

    assert response.json() == {"outcome": "fetch"}
    assert [(m.task, m.args) for m in env.queues.messages()] == [("catalog_sync.sync_product", [env.woo, "794"])]
    assert env.row(env.woo, "794") is None


def test_the_same_content_again_under_a_new_event_id_changes_nothing(env: Env) -> None:
    body = body_of(shopify_product(1, title="Shirt", updated_at="2024-05-01T10:00:00Z"))
    env.shopify(body, event_id="e-1")

    response = env.shopify(body, event_id="e-2")

    assert response.json() == {"outcome": "unchanged"}
    assert env.pushed() == [(env.shop, "1")]


# ----------------------------------------------------------------------------------------------------- deletions


def test_a_deletion_marks_the_product_deleted_and_pushes_it(env: Env) -> None:
    env.shopify(body_of(shopify_product(5, title="Hat", updated_at="2024-05-01T10:00:00Z")), event_id="e-1")

    deleted_at = datetime(2024, 5, 2, tzinfo=UTC)
    response = env.shopify(b'{"id":5}', topic="products/delete", event_id="e-2", triggered_at=deleted_at)

    assert response.json() == {"outcome": "deleted"}
    row = env.row(env.shop, "5")
    assert (row.desired_hash, row.source_updated_at) == (DELETED, deleted_at)
    assert env.pushed() == [(env.shop, "5"), (env.shop, "5")]


def test_a_late_update_after_a_deletion_is_dropped(env: Env) -> None:
    deleted_at = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
    env.shopify(b'{"id":6}', topic="products/delete", event_id="e-del", triggered_at=deleted_at)

    late = body_of(shopify_product(6, title="Back from the dead", updated_at="2024-05-02T11:59:00Z"))
    response = env.shopify(late, event_id="e-upd", triggered_at=deleted_at - timedelta(seconds=59))

    assert response.json() == {"outcome": "stale"}
    assert env.row(env.shop, "6").desired_hash == DELETED
    # The tombstone of a product we never knew is pushed (the catalog may hold it from elsewhere); the late
    # update is not.
    assert env.pushed() == [(env.shop, "6")]


def test_a_woocommerce_deletion_is_dated_on_arrival_so_an_older_update_cannot_undo_it(env: Env) -> None:
    updated = fixture_bytes("woocommerce", "wp-api-v3_products__03_retrieve_a_product.json")
    env.post(env.woo, updated, woo_headers(updated, delivery_id="d-1"))
    deleted = b'{"id":794}'  # what WooCommerce sends for a deletion (WC_Webhook::build_payload)

    assert env.post(env.woo, deleted, woo_headers(deleted, topic="product.deleted", delivery_id="d-2")).json() == {
        "outcome": "deleted"
    }
    replayed_late = env.post(env.woo, updated, woo_headers(updated, delivery_id="d-3"))

    assert replayed_late.json() == {"outcome": "stale"}
    assert env.row(env.woo, "794").desired_hash == DELETED


def test_a_woocommerce_deletion_follows_an_update_stamped_by_a_shop_clock_ahead_of_ours(env: Env) -> None:
    product = json.loads(fixture_bytes("woocommerce", "wp-api-v3_products__03_retrieve_a_product.json"))
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    product["date_modified_gmt"] = ahead.strftime("%Y-%m-%dT%H:%M:%S")
    updated = body_of(product)
    env.post(env.woo, updated, woo_headers(updated, delivery_id="d-1"))
    deleted = b'{"id":794}'

    response = env.post(env.woo, deleted, woo_headers(deleted, topic="product.deleted", delivery_id="d-2"))

    assert response.json() == {"outcome": "deleted"}
    row = env.row(env.woo, "794")
    assert row.desired_hash == DELETED
    assert row.source_updated_at > ahead.replace(microsecond=0)


def test_a_deletion_triggered_before_the_stored_update_is_dropped(env: Env) -> None:
    env.shopify(body_of(shopify_product(7, title="Scarf", updated_at="2024-05-03T10:00:00Z")), event_id="e-1")

    response = env.shopify(
        b'{"id":7}', topic="products/delete", event_id="e-2", triggered_at=datetime(2024, 5, 3, 9, tzinfo=UTC)
    )

    assert response.json() == {"outcome": "stale"}
    assert env.row(env.shop, "7").desired_payload["title"] == "Scarf"


# ------------------------------------------------------------------------------------------ order and repetition


def test_an_older_update_arriving_after_a_newer_one_is_dropped(env: Env) -> None:
    newer = body_of(shopify_product(2, title="Blue shirt", updated_at="2024-05-01T10:00:05Z"))
    older = body_of(shopify_product(2, title="Red shirt", updated_at="2024-05-01T10:00:01Z"))

    assert env.shopify(newer, event_id="e-new").json() == {"outcome": "updated"}
    response = env.shopify(older, event_id="e-old")

    assert response.status_code == 200
    assert response.json() == {"outcome": "stale"}
    assert env.row(env.shop, "2").desired_payload["title"] == "Blue shirt"
    assert env.pushed() == [(env.shop, "2")]


def test_the_shops_own_before_and_after_payloads_delivered_out_of_order_keep_the_after(env: Env) -> None:
    after = fixture_product("shopify", "shopify-api-node__res_update.json")
    before = fixture_product("shopify", "shopify-api-node__res_get.json")

    assert env.shopify(after, event_id="e-2").json() == {"outcome": "updated"}
    assert env.shopify(before, event_id="e-1").json() == {"outcome": "stale"}

    row = env.row(env.shop, "632910392")
    assert row.desired_payload["title"] == json.loads(after)["title"]
    assert row.source_updated_at == datetime(2015, 9, 2, 18, 50, 57, tzinfo=UTC)


def test_a_replayed_delivery_is_acknowledged_without_work(env: Env) -> None:
    body = body_of(shopify_product(3, title="Socks", updated_at="2024-05-01T10:00:00Z"))
    env.shopify(body, event_id="e-1")
    changed_at = env.row(env.shop, "3").changed_at

    response = env.shopify(body, event_id="e-1")

    assert response.status_code == 200
    assert response.json() == {"outcome": "replay"}
    assert env.row(env.shop, "3").changed_at == changed_at
    assert env.pushed() == [(env.shop, "3")]


def test_a_replay_is_recognized_even_when_the_shop_since_changed_the_product(env: Env) -> None:
    first = body_of(shopify_product(4, title="Coat", updated_at="2024-05-01T10:00:00Z"))
    env.shopify(first, event_id="e-1")
    env.shopify(body_of(shopify_product(4, title="Long coat", updated_at="2024-05-01T11:00:00Z")), event_id="e-2")

    assert env.shopify(first, event_id="e-1").json() == {"outcome": "replay"}
    assert env.row(env.shop, "4").desired_payload["title"] == "Long coat"


def test_a_delivery_that_failed_on_the_database_is_processed_when_the_shop_retries(env: Env) -> None:
    # Given a database that refuses the write (a trigger stands in for a full disk or a failover)
    with env.runtime.store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text("CREATE TRIGGER refuse BEFORE INSERT ON products BEGIN SELECT RAISE(ABORT, 'disk full'); END")
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
                )
            )
            conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION refuse()"))
    body = body_of(shopify_product(8, title="Boots", updated_at="2024-05-01T10:00:00Z"))

    # When the delivery comes, fails, and comes again once the database is healthy
    failed = env.shopify(body, event_id="e-1")
    with env.runtime.store.engine.begin() as conn:
        conn.execute(
            text("DROP TRIGGER refuse" if conn.dialect.name == "sqlite" else "DROP TRIGGER refuse ON products")
        )
    retried = env.shopify(body, event_id="e-1")

    # Then the first answer asked for the retry and the retry was processed, not dropped as a replay
    assert failed.status_code == 503
    assert retried.json() == {"outcome": "updated"}
    assert env.row(env.shop, "8").desired_payload["title"] == "Boots"
    assert env.shopify(body, event_id="e-1").json() == {"outcome": "replay"}


# ------------------------------------------------------------------------------------------------- verification


def test_missing_wrong_and_tampered_signatures_get_the_same_401(env: Env) -> None:
    body = body_of(shopify_product(9, title="Belt", updated_at="2024-05-01T10:00:00Z"))
    flipped = bytearray(body)
    flipped[10] ^= 0x01
    tampered_headers = shopify_headers(body, event_id="e-1")

    answers = [
        env.shopify(body, secret=None),
        env.shopify(body, secret="not-the-secret"),
        env.post(env.shop, bytes(flipped), tampered_headers),
        env.post(env.shop, body, {**shopify_headers(body, secret=None), "X-Shopify-Hmac-Sha256": ""}),
        env.post(
            env.shop,
            body,
            {
                **{name.encode(): value.encode() for name, value in shopify_headers(body, secret=None).items()},
                b"X-Shopify-Hmac-Sha256": "é".encode("latin-1"),
            },
        ),
        env.post(env.woo, body, woo_headers(body, secret=None)),
        env.post(env.woo, body, woo_headers(body, secret="wrong")),
    ]

    assert [a.status_code for a in answers] == [401] * len(answers)
    assert len({a.content for a in answers}) == 1
    assert env.row(env.shop, "9") is None
    assert env.queues.messages() == []


def test_the_previous_secret_is_still_accepted_during_rotation(sqlite_env: Env) -> None:
    body = body_of(shopify_product(10, title="Tie", updated_at="2024-05-01T10:00:00Z"))

    response = sqlite_env.shopify(body, event_id="e-1", secret=SHOPIFY_PREVIOUS_SECRET)

    assert response.json() == {"outcome": "updated"}


def test_the_shopify_api_js_vector_verifies_and_its_body_is_then_rejected_as_malformed(
    sqlite_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    vector = next(v for v in json.loads(fixture_bytes("hmac", "vectors.json")) if v["platform"] == "shopify")
    body = fixture_bytes("hmac", vector["body_file"])
    name = f"vector-{sqlite_env.suffix}"
    sqlite_env.runtime.sources[name] = ShopifySource(
        name=name,
        kind="shopify",
        url="https://shop1.myshopify.io",
        access_token="t",
        webhook_secret=vector["secret"],
    )
    headers = {**vector["headers_in_test"], vector["header"]: vector["expected"], "Content-Type": "application/json"}
    caplog.set_level(logging.WARNING, logger="worker.webhooks")

    verified = sqlite_env.post(name, body, headers)
    forged = sqlite_env.post(name, body.replace(b"bar", b"baz"), headers)

    # `{"foo": "bar"}` is signed correctly but is no product: 400, and a log line names the source and reason.
    assert verified.status_code == 400
    assert verified.json() == {"error": "missing_id"}
    assert forged.status_code == 401
    assert any(name in r.getMessage() and "missing_id" in r.getMessage() for r in caplog.records)


def test_malformed_json_is_400_with_a_log_line(sqlite_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="worker.webhooks")
    body = b'{"id": 11, "title": '

    response = sqlite_env.shopify(body, event_id="e-1")

    assert response.status_code == 400
    assert response.json() == {"error": "malformed_payload"}
    assert any(sqlite_env.shop in r.getMessage() and "malformed_payload" in r.getMessage() for r in caplog.records)


def test_an_unknown_topic_is_acknowledged_and_ignored(sqlite_env: Env) -> None:
    body = b'{"id": 450789469, "total_price": "409.94"}'

    response = sqlite_env.shopify(body, topic="orders/create", event_id="e-1")

    assert response.status_code == 200
    assert response.json() == {"outcome": "ignored"}
    assert sqlite_env.queues.messages() == []


def test_the_woocommerce_creation_ping_is_200(sqlite_env: Env) -> None:
    response = sqlite_env.post(
        sqlite_env.woo, b"webhook_id=12", {"Content-Type": "application/x-www-form-urlencoded", "X-WC-Webhook-ID": "12"}
    )

    assert response.status_code == 200
    assert response.json() == {"outcome": "ping"}


# ------------------------------------------------------------------------------------------------- the endpoint


def test_unknown_sources_sources_without_a_secret_and_feeds_have_no_endpoint(sqlite_env: Env) -> None:
    body = body_of(shopify_product(12, title="Cap", updated_at="2024-05-01T10:00:00Z"))
    headers = shopify_headers(body)

    answers = [
        sqlite_env.post(name, body, headers)
        for name in ("nobody", f"nosecret-{sqlite_env.suffix}", f"feed-{sqlite_env.suffix}")
    ]

    assert [a.status_code for a in answers] == [404, 404, 404]
    assert len({a.content for a in answers}) == 1
    assert sqlite_env.client.get(f"/webhooks/{sqlite_env.shop}").status_code == 405


def test_a_body_at_the_limit_is_accepted(sqlite_env: Env) -> None:
    body = body_of(shopify_product(13, title="Gloves", updated_at="2024-05-01T10:00:00Z"))
    # JSON allows trailing whitespace: pad the body to exactly the limit.
    body += b" " * (MAX_BODY - len(body))

    assert sqlite_env.shopify(body, event_id="e-1").json() == {"outcome": "updated"}


def raw_exchange(server: BackgroundServer, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request by hand (headers, then whatever body parts the server still takes) and read the answer.

    A server that waited for the rest of the body would never answer: the socket timeout then fails the test."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b'"}' in answer:
                break
        return answer


def test_an_oversize_content_length_is_refused_before_the_body_is_read(sqlite_env: Env) -> None:
    head = (
        f"POST /webhooks/{sqlite_env.shop} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"X-Shopify-Topic: products/update\r\nX-Shopify-Hmac-Sha256: x\r\nContent-Length: {50 * MAX_BODY}\r\n\r\n"
    ).encode()

    answer = raw_exchange(sqlite_env.server, head, [])

    assert answer.startswith(b"HTTP/1.1 413")


def test_an_oversize_chunked_stream_is_cut_off_once_past_the_limit(sqlite_env: Env) -> None:
    head = (
        f"POST /webhooks/{sqlite_env.shop} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "X-Shopify-Topic: products/update\r\nX-Shopify-Hmac-Sha256: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 1000
    # More than the limit, and never the closing zero-length chunk: only counting can end this request.
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 2)]

    answer = raw_exchange(sqlite_env.server, head, parts)

    assert answer.startswith(b"HTTP/1.1 413")


def test_an_oversize_body_sent_by_an_ordinary_client_gets_413(sqlite_env: Env) -> None:
    body = body_of(shopify_product(14, title="Big", updated_at="2024-05-01T10:00:00Z")) + b" " * MAX_BODY
    try:
        response = sqlite_env.shopify(body, event_id="e-1")
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        # The server may close before a client that insists on sending everything has finished; what matters is
        # that nothing was accepted.
        response = None
    if response is not None:
        assert response.status_code == 413
    assert sqlite_env.row(sqlite_env.shop, "14") is None


# ----------------------------------------------------------------------------------------- health and metrics


def test_healthz_says_the_process_serves_and_readyz_reports_the_database_and_the_broker(sqlite_env: Env) -> None:
    live = sqlite_env.client.get("/healthz")
    ready = sqlite_env.client.get("/readyz")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_each_delivery_gets_an_access_line_and_refused_signatures_a_throttled_warning(
    clean_env: None, redis_url: str, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    sources = make_sources(unique)
    runtime = make_runtime(url, sources, broker_url(), tmp_path)
    use_broker(runtime)
    clock = FakeClock()
    throttle = Throttle(rate=1.0, burst=3, clock=clock)
    queues = Queues(broker_url(), sources)
    shop = f"shop-{unique}"
    body = body_of(shopify_product(17, title="Coat", updated_at="2024-05-01T10:00:00Z"))
    caplog.set_level(logging.INFO)
    try:
        app = create_app(runtime, refusal_throttle=throttle)
        with running(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            good = client.post(f"/webhooks/{shop}", content=body, headers=shopify_headers(body, event_id="e-1"))
            # Given a flood of deliveries signed with the wrong secret
            refused = [
                client.post(f"/webhooks/{shop}", content=body, headers=shopify_headers(body, secret="wrong"))
                for _ in range(6)
            ]
            clock.now += 1.0
            after_a_second = client.post(
                f"/webhooks/{shop}", content=body, headers=shopify_headers(body, secret="wrong")
            )
    finally:
        queues.clear()
        queues.close()
        runtime.close()

    assert good.status_code == 200
    assert [r.status_code for r in [*refused, after_a_second]] == [401] * 7
    access = [r for r in caplog.records if r.name == "catalog_sync.access"]
    assert len(access) == 8
    # The access line's fields travel as LogRecord extras.
    fields = [(getattr(r, "source", None), getattr(r, "outcome", None), getattr(r, "status", None)) for r in access]
    assert fields[0] == (shop, "updated", 200)
    assert access[0].getMessage().startswith(f"POST /webhooks/{shop} 200 updated")
    assert {(outcome, status) for _, outcome, status in fields[1:]} == {("unauthorized", 401)}
    warnings = [r for r in caplog.records if r.name == "worker.webhooks" and "signature" in r.getMessage()]
    # ... three warnings in the burst, the other three counted, and the next one allowed says so
    assert len(warnings) == 4
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert "3 more refusal(s) not logged" in warnings[-1].getMessage()
    assert all("wrong" not in r.getMessage() for r in caplog.records)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_metrics_count_deliveries_by_source_topic_and_outcome_and_show_rows_by_status(env: Env) -> None:
    body = body_of(shopify_product(15, title="Vest", updated_at="2024-05-01T10:00:00Z"))
    env.shopify(body, event_id="e-1")
    env.shopify(body, event_id="e-1")
    env.shopify(body, secret="wrong")
    env.post("nobody", body, shopify_headers(body))

    response = env.client.get("/metrics")

    assert response.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }

    def delivered(source: str, topic: str, outcome: str) -> float:
        key = (
            "catalog_sync_webhook_deliveries_total",
            (("outcome", outcome), ("source", source), ("topic", topic)),
        )
        return samples.get(key, 0)

    assert delivered(env.shop, "upsert", "updated") == 1
    assert delivered(env.shop, "upsert", "replay") == 1
    assert delivered(env.shop, "unverified", "unauthorized") == 1
    assert delivered("_unknown", "unverified", "not_found") == 1
    assert samples[("catalog_sync_http_request_duration_seconds_count", (("endpoint", "webhook"),))] == 4
    assert samples[("catalog_sync_products", (("source", env.shop), ("status", "pending")))] == 1
    assert samples[("catalog_sync_state_database_up", ())] == 1


def test_metrics_show_each_sources_last_run_pause_held_deletions_and_the_queue_depths(env: Env) -> None:
    store = env.runtime.store
    held = store.start_run(env.shop, "full")
    store.finish_run(held, outcome="deletion_blocked", counts={"deletion_blocked": 7})
    done = store.start_run(env.woo, "incremental")
    store.finish_run(done, outcome="completed", counts={"synced": 3})
    store.pause_source(env.woo, until=datetime.now(UTC) + timedelta(minutes=5), reason="AuthError: key refused")
    body = body_of(shopify_product(18, title="Scarf", updated_at="2024-05-01T10:00:00Z"))
    assert env.shopify(body, event_id="e-1").json() == {"outcome": "updated"}  # one push waits on push.priority
    waiting = env.queues.client.llen("push.priority")

    response = env.client.get("/metrics")

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    run = store.get_run(done)
    assert run is not None and run.finished_at is not None
    finished = run.finished_at.timestamp()
    last_run = "catalog_sync_last_run_timestamp_seconds"
    woo_run = (last_run, (("mode", "incremental"), ("outcome", "completed"), ("source", env.woo)))
    assert samples[woo_run] == pytest.approx(finished)
    assert (last_run, (("mode", "full"), ("outcome", "deletion_blocked"), ("source", env.shop))) in samples
    assert samples[("catalog_sync_deletions_held", (("source", env.shop),))] == 7
    assert samples[("catalog_sync_deletions_held", (("source", env.woo),))] == 0
    assert samples[("catalog_sync_source_paused", (("source", env.woo),))] == 1
    assert samples[("catalog_sync_source_paused", (("source", env.shop),))] == 0
    assert samples[("catalog_sync_queue_messages", (("queue", "push.priority"),))] == waiting >= 1
    assert {q for (name, labels), _ in samples.items() if name == "catalog_sync_queue_messages" for _, q in labels} == {
        "push.priority",
        "push",
        "sync",
    }
    assert samples[("catalog_sync_broker_up", ())] == 1


def test_a_broker_that_does_not_answer_gives_broker_up_0_and_no_queue_depths(
    clean_env: None, redis_url: str, tmp_path: Path, unique: str
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    runtime = make_runtime(url, make_sources(unique), broker_url(), tmp_path)

    def dead_broker() -> dict[str, int]:
        raise ConnectionRefusedError(111, "Connection refused")

    try:
        with running(create_app(runtime, queue_depths=dead_broker)) as server:
            text_body = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        runtime.close()

    assert "catalog_sync_broker_up 0.0" in text_body
    assert "catalog_sync_queue_messages" not in text_body


# ------------------------------------------------------------------------------------------- database unavailable


def test_a_database_that_is_down_answers_503_and_readyz_says_so_while_healthz_stays_live(
    clean_env: None, redis_url: str, tmp_path: Path, unique: str
) -> None:
    sources = make_sources(unique)
    # A port nothing listens on: connections are refused at once.
    runtime = make_runtime("postgresql+psycopg://postgres@127.0.0.1:9/test", sources, broker_url(), tmp_path)
    use_broker(runtime)
    body = body_of(shopify_product(16, title="Robe", updated_at="2024-05-01T10:00:00Z"))
    queues = Queues(broker_url(), sources)
    try:
        with running(create_app(runtime)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            delivery = client.post(
                f"/webhooks/shop-{unique}", content=body, headers=shopify_headers(body, event_id="e-1")
            )
            health = client.get("/readyz")
            live = client.get("/healthz")
            metrics = client.get("/metrics")
        published = queues.messages()
    finally:
        queues.clear()
        queues.close()
        runtime.close()

    assert delivery.status_code == 503
    assert delivery.json() == {"error": "state database unavailable"}
    assert health.status_code == 503
    assert health.json()["database"].startswith("unavailable")
    assert health.json()["broker"] == "ok"
    assert live.status_code == 200
    assert "catalog_sync_state_database_up 0.0" in metrics.text
    assert published == []


def test_a_signed_update_body_replayed_as_a_deletion_is_read_as_the_update_it_proves(env: Env) -> None:
    body = body_of(shopify_product(8, title="Coat", updated_at="2024-05-03T10:00:00Z"))
    env.shopify(body, event_id="e-1")

    replayed = env.shopify(body, topic="products/delete", event_id="e-2", triggered_at=datetime(2099, 1, 1, tzinfo=UTC))

    assert replayed.json() == {"outcome": "unchanged"}
    row = env.row(env.shop, "8")
    assert row.desired_hash != DELETED and row.desired_payload["title"] == "Coat"


def test_a_deletion_triggered_in_the_future_does_not_make_later_updates_stale(env: Env) -> None:
    env.shopify(body_of(shopify_product(9, title="Hat", updated_at="2024-05-03T10:00:00Z")), event_id="e-1")
    env.shopify(b'{"id":9}', topic="products/delete", event_id="e-2", triggered_at=datetime(2099, 1, 1, tzinfo=UTC))
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()

    response = env.shopify(body_of(shopify_product(9, title="Hat again", updated_at=later)), event_id="e-3")

    assert response.json() == {"outcome": "updated"}
    assert env.row(env.shop, "9").desired_payload["title"] == "Hat again"


# ------------------------------------------------------------------------- a full run corrects a forged deletion


class Listing:
    """A shop whose full listing is `products`: a fake that behaves, for the run that reads it."""

    def __init__(self, products: list[SourceProduct]) -> None:
        self.products = products

    def iter_products(self, since: datetime | None) -> Iterator[SourceProduct]:
        yield from self.products

    def close(self) -> None:
        pass


def listed(source: str, product_id: str, updated_at: datetime, title: str = "Listed") -> SourceProduct:
    return SourceProduct(
        source=source,
        product_id=product_id,
        updated_at=updated_at,
        status="active",
        title=title,
        images=(ImageRef(f"https://cdn.example/{product_id}.jpg"),),
    )


def full_run(env: Env, source: str, products: list[SourceProduct]) -> RunReport:
    return plan_source(
        env.runtime.store,
        cast(Connector, Listing(products)),
        env.runtime.source(source),
        mode="full",
        on_changed=lambda *_: None,
        mass_delete_share=1.0,
    )


def delivered_earlier(env: Env, source: str, product_id: str, *, ago: timedelta) -> None:
    """Date the row's last change `ago` back: the delivery that wrote it came that long before the full run."""
    with env.runtime.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE products SET changed_at = :at WHERE source = :source AND product_id = :pid"),
            {"at": (datetime.now(UTC) - ago).replace(tzinfo=None), "source": source, "pid": product_id},
        )


def test_a_signed_woocommerce_update_body_replayed_as_a_deletion_is_read_as_the_update(env: Env) -> None:
    body = fixture_bytes("woocommerce", "wp-api-v3_products__03_retrieve_a_product.json")
    env.post(env.woo, body, woo_headers(body, delivery_id="d-1"))

    replayed = env.post(env.woo, body, woo_headers(body, topic="product.deleted", delivery_id="d-2"))

    assert replayed.json() == {"outcome": "unchanged"}
    assert env.row(env.woo, "794").desired_payload["title"] == "Premium Quality"


@pytest.mark.parametrize("shop", ["shopify", "woocommerce"])
def test_a_full_run_restores_a_product_a_replayed_deletion_removed(env: Env, shop: str) -> None:
    edited = datetime(2024, 5, 3, 10, 0, tzinfo=UTC)
    if shop == "shopify":
        source, pid = env.shop, "9"
        env.shopify(body_of(shopify_product(9, title="Hat", updated_at=edited.isoformat())), event_id="e-1")
        # A delete body replayed under a fresh delivery id, its trigger time forged (clamped to now on arrival).
        forged = env.shopify(
            b'{"id":9}', topic="products/delete", event_id="e-9", triggered_at=datetime(2099, 1, 1, tzinfo=UTC)
        )
    else:
        source, pid = env.woo, "794"
        body = fixture_bytes("woocommerce", "wp-api-v3_products__03_retrieve_a_product.json")
        env.post(env.woo, body, woo_headers(body, delivery_id="d-1"))
        deleted = b'{"id":794}'
        forged = env.post(env.woo, deleted, woo_headers(deleted, topic="product.deleted", delivery_id="d-9"))
    assert forged.json() == {"outcome": "deleted"}
    delivered_earlier(env, source, pid, ago=timedelta(hours=1))

    # The shop still lists the product, last edited before the forged deletion's date.
    report = full_run(env, source, [listed(source, pid, edited, title="Still sold")])

    assert report.counts["restored"] == 1
    row = env.row(source, pid)
    assert row.desired_hash != DELETED and row.desired_payload["title"] == "Still sold"


def test_a_full_run_right_after_a_genuine_deletion_does_not_bring_it_back(env: Env) -> None:
    edited = datetime(2024, 5, 3, 10, 0, tzinfo=UTC)
    env.shopify(body_of(shopify_product(7, title="Scarf", updated_at=edited.isoformat())), event_id="e-1")
    env.shopify(b'{"id":7}', topic="products/delete", event_id="e-2", triggered_at=datetime.now(UTC))

    # The shop's listing lags behind its deletion: the product is still listed, with its last edit's date.
    report = full_run(env, env.shop, [listed(env.shop, "7", edited)])

    assert report.counts["restored"] == 0 and report.counts["stale"] == 1
    assert env.row(env.shop, "7").desired_hash == DELETED
