"""The webhook server against bad clients, over real sockets: slow senders, idle connections, floods beyond the
limits on deliveries in flight, hostile signed bodies, and one bad delivery among good ones in a batch.

No assertion measures time: waits are generous upper bounds that only a hang would reach."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.sources import SourceConfig
from connectors.base import WebhookEvent
from emulators.server import BackgroundServer, running
from tests.webhooks_support import broker_url, make_runtime, make_sources, shopify_headers, shopify_product, woo_headers
from worker.http_guard import server_options
from worker.runtime import Runtime
from worker.webhook_batch import Pending
from worker.webhook_decision import Outcome
from worker.webhooks import Intake, create_app

# Upper bound for anything the server should do promptly; reached only if it hangs.
PATIENCE = 30.0


class GatedDispatcher:
    """Publishes nothing until `gate` is set, so deliveries stay in flight as long as a test needs."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool:
        self.gate.wait(PATIENCE)
        return True


@dataclass
class Server:
    runtime: Runtime
    server: BackgroundServer
    dispatcher: GatedDispatcher
    shop: str
    woo: str

    def post(self, source: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.server.url}/webhooks/{source}", content=body, headers=headers, timeout=PATIENCE)

    def product(self, product_id: int) -> httpx.Response:
        body = json.dumps(shopify_product(product_id, title=f"P{product_id}", updated_at="2025-01-01T00:00:00Z"))
        return self.post(self.shop, body.encode(), shopify_headers(body.encode(), event_id=f"e-{product_id}"))

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=PATIENCE)


@contextmanager
def webhook_server(database_url: str, tmp_path: Path, unique: str, **settings: Any) -> Iterator[Server]:
    sources = make_sources(unique)
    runtime = make_runtime(database_url, sources, broker_url(), tmp_path, **settings)
    dispatcher = GatedDispatcher()
    app = create_app(runtime, dispatcher, fetch=lambda source, product_id: None, broker_check=lambda: None)
    with ExitStack() as stack:
        stack.callback(runtime.close)
        stack.callback(dispatcher.gate.set)
        server = stack.enter_context(running(app, **server_options(runtime.settings)))
        yield Server(runtime, server, dispatcher, f"shop-{unique}", f"woo-{unique}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from worker import schema
    from worker.state import make_engine

    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    return url


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF or reset) rather than leaving it open until PATIENCE."""
    sock.settimeout(PATIENCE)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# ---- slow and idle clients ---------------------------------------------------------------------------------------


def test_a_client_that_never_finishes_its_headers_is_disconnected_while_others_are_served(
    clean_env: None, sqlite_url: str, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    with webhook_server(sqlite_url, tmp_path, unique, webhook_header_timeout=0.5) as server:
        slow = server.connect()
        slow.sendall(b"POST /webhooks/" + server.shop.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        silent = server.connect()

        answered = server.product(1)

        assert answered.status_code == 200
        assert closed_by_server(slow)
        assert closed_by_server(silent)
    assert not [record for record in caplog.records if record.exc_info]


def test_a_body_that_trickles_in_is_answered_408_and_the_connection_closed(
    clean_env: None, sqlite_url: str, tmp_path: Path, unique: str
) -> None:
    with webhook_server(sqlite_url, tmp_path, unique, webhook_body_timeout=0.5) as server:
        sock = server.connect()
        sock.sendall(
            f"POST /webhooks/{server.shop} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"{"
        )
        sock.settimeout(PATIENCE)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk

        assert answer.startswith(b"HTTP/1.1 408")
        assert b"connection: close" in answer.lower()
        assert server.product(2).status_code == 200


def test_connections_beyond_the_cap_are_closed_on_arrival_and_deliveries_resume_when_idle_ones_are_reaped(
    clean_env: None, sqlite_url: str, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    with webhook_server(sqlite_url, tmp_path, unique, webhook_max_connections=16, webhook_header_timeout=1.0) as server:
        idle = [server.connect() for _ in range(16)]
        extra = [server.connect() for _ in range(40)]

        assert all(closed_by_server(sock) for sock in extra)
        assert all(closed_by_server(sock) for sock in idle)  # reaped by the header deadline
        assert server.product(3).status_code == 200
        for sock in idle + extra:
            sock.close()
    assert not [record for record in caplog.records if record.exc_info]
    refusals = [record for record in caplog.records if "closed on arrival" in record.getMessage()]
    assert len(refusals) <= 1


# ---- limits on deliveries in flight ------------------------------------------------------------------------------


def test_deliveries_beyond_the_per_source_and_global_limits_are_refused_with_retry_after(
    clean_env: None, sqlite_url: str, tmp_path: Path, unique: str
) -> None:
    with (
        webhook_server(
            sqlite_url, tmp_path, unique, webhook_max_in_flight=3, webhook_max_in_flight_per_source=2
        ) as server,
        ThreadPoolExecutor(4) as pool,
    ):
        server.dispatcher.gate.clear()
        held = [pool.submit(server.product, n) for n in (10, 11)]
        woo_body = json.dumps({"id": 5, "name": "W", "date_modified_gmt": "2025-01-01T00:00:00"}).encode()
        held.append(pool.submit(server.post, server.woo, woo_body, woo_headers(woo_body, delivery_id="w-1")))
        wait_for_in_flight(server, 3)

        per_source = server.product(12)
        woo_second = server.post(server.woo, woo_body, woo_headers(woo_body, delivery_id="w-2"))
        server.dispatcher.gate.set()

        assert per_source.status_code == 429
        assert woo_second.status_code == 503
        assert per_source.headers["Retry-After"] == woo_second.headers["Retry-After"] == "5"
        assert [future.result().status_code for future in held] == [200, 200, 200]
        assert server.product(12).status_code == 200


def wait_for_in_flight(server: Server, count: int) -> None:
    """Until `count` deliveries are in flight (held by the gated publisher)."""
    pause = threading.Event()
    for _ in range(int(PATIENCE / 0.05)):
        if server.server.app.state.admission.total >= count:
            return
        pause.wait(0.05)
    pytest.fail(f"{count} deliveries were never in flight at once")


# ---- hostile signed bodies ---------------------------------------------------------------------------------------

HOSTILE = {
    "nested-100000": b'{"id": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "id-10000-digits": b'{"id": ' + b"9" * 10_000 + b"}",
    "id-superscript-two": '{"id": "²"}'.encode(),
    "id-string-300-digits": b'{"id": "' + b"9" * 300 + b'"}',
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("kind", ["shopify-update", "shopify-delete", "woocommerce-update", "woocommerce-delete"])
def test_hostile_signed_bodies_are_answered_400(
    clean_env: None, sqlite_url: str, tmp_path: Path, unique: str, body: bytes, kind: str
) -> None:
    with webhook_server(sqlite_url, tmp_path, unique) as server:
        if kind.startswith("shopify"):
            topic = "products/delete" if kind.endswith("delete") else "products/update"
            response = server.post(server.shop, body, shopify_headers(body, topic=topic, event_id="h-1"))
        else:
            topic = "product.deleted" if kind.endswith("delete") else "product.updated"
            response = server.post(server.woo, body, woo_headers(body, topic=topic, delivery_id="h-1"))

        assert response.status_code == 400
        assert server.product(4).status_code == 200


# ---- one bad delivery in a batch ---------------------------------------------------------------------------------


def test_one_delivery_the_database_refuses_does_not_fail_its_neighbours_in_a_batch(
    clean_env: None, database_url: str, tmp_path: Path, unique: str
) -> None:
    runtime = make_runtime(database_url, make_sources(unique), broker_url(), tmp_path)
    intake = Intake(runtime, GatedDispatcher(), fetch=lambda source, product_id: None)
    shop: SourceConfig = runtime.sources[f"shop-{unique}"]
    try:
        events = [intake.verify(shop, *signed(n)) for n in range(1, 6)]
        good = [event for event in events if isinstance(event, WebhookEvent)]
        assert len(good) == 5
        # A row the database cannot hold (an id longer than its column), as a bug upstream might let through.
        bad = WebhookEvent(source=shop.name, topic="delete", product_id="7" * 300, event_id="bad")
        group = [Pending(shop, event) for event in [*good[:2], bad, *good[2:]]]

        applied = intake.batcher.commit(group)

        outcomes = [result.outcome for result in applied.results]
        # Applied, whether by the batch's first attempt (then "unchanged" the second time) or by the second.
        assert set(outcomes[:2] + outcomes[3:]) <= {Outcome.UPDATED, Outcome.UNCHANGED}
        # PostgreSQL refuses the row (400 for that delivery alone); SQLite does not check lengths.
        assert outcomes[2] in (Outcome.MALFORMED, Outcome.DELETED)
        assert {event.product_id for event in good} <= set(applied.pushes)
        assert all(runtime.store.get(shop.name, event.product_id) is not None for event in good if event.product_id)
    finally:
        intake.close()
        runtime.close()


def signed(product_id: int) -> tuple[dict[str, str], bytes]:
    body = json.dumps(shopify_product(product_id, title=f"B{product_id}", updated_at="2025-01-01T00:00:00Z")).encode()
    headers = {key.lower(): value for key, value in shopify_headers(body, event_id=f"b-{product_id}").items()}
    return headers, body
