"""The catalog client against the catalog emulator over real sockets (uvicorn on a free port).

The emulator's rate limiter reads the same fake clock the client's swapped sleep advances, so a 429 with
`Retry-After` is waited out in fake time: nothing here waits for real.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from emulators.catalog import Faults, create_app
from emulators.server import BackgroundServer, running
from ground.errors import AuthError, RateLimited, RejectedError
from worker.catalog import CatalogClient, ImageInput, ProductUpsert

API_KEY = "test-key"
OTHER_KEY = "other-account-key"
JPEG = b"\xff\xd8\xff\xe0" + hashlib.sha256(b"back").digest() * 64
PNG = b"\x89PNG\r\n\x1a\n" + hashlib.sha256(b"side").digest() * 64


class FakeTime:
    """A monotonic clock that only moves when a swapped sleep says so; read by the emulator's rate limiter."""

    def __init__(self) -> None:
        self._now = 10_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class RecordingSleep:
    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.time.advance(seconds)


@pytest.fixture(scope="module")
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture(scope="module")
def emulator(fake_time: FakeTime) -> Iterator[BackgroundServer]:
    app = create_app(api_keys=(API_KEY, OTHER_KEY), faults=Faults(account_limit=None), monotonic=fake_time)
    with running(app) as server:
        yield server


@pytest.fixture
def admin(emulator: BackgroundServer) -> Iterator[httpx.Client]:
    """The emulator's administration endpoints; every test starts from an empty catalog without faults."""
    with httpx.Client(base_url=emulator.url + "/_emulator") as client:
        client.post("/reset").raise_for_status()
        yield client


@pytest.fixture
def sleep(fake_time: FakeTime) -> RecordingSleep:
    return RecordingSleep(fake_time)


@pytest.fixture
def make_client(
    emulator: BackgroundServer, admin: httpx.Client, sleep: RecordingSleep, fake_time: FakeTime
) -> Iterator[Callable[..., CatalogClient]]:
    clients: list[CatalogClient] = []

    def build(api_key: str = API_KEY, **options: Any) -> CatalogClient:
        options.setdefault("sleep", sleep)
        options.setdefault("clock", fake_time)
        options.setdefault("timeout", 10.0)
        client = CatalogClient(emulator.url + "/tryon/v1", api_key, **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., CatalogClient]) -> CatalogClient:
    return make_client()


def configure(admin: httpx.Client, **faults: Any) -> None:
    admin.post("/config", json=faults).raise_for_status()


def stats(admin: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = admin.get("/stats").json()
    return body


def product(external_id: str, **fields: Any) -> ProductUpsert:
    fields.setdefault("title", f"Product {external_id}")
    fields.setdefault("images", [ImageInput.from_url(f"https://cdn.example/{external_id}.jpg")])
    return ProductUpsert(external_id=external_id, **fields)


# ---------------------------------------------------------------------------------------------------------------
# Endpoints


def test_upsert_creates_then_get_reads_it_back(client: CatalogClient) -> None:
    sent = product(
        "shirt-42",
        description="Soft cotton regular fit",
        images=[
            ImageInput.from_url("https://cdn.example/front.jpg"),
            ImageInput.from_url("https://cdn.example/back.jpg", {"view": "back"}),
        ],
        metadata={"source": "shop", "tags": ["tee"]},
        valid_for_days=30,
    )

    created = client.upsert(sent)
    fetched = client.get("shirt-42")

    assert fetched == created
    assert created.external_id == "shirt-42"
    assert created.title == "Product shirt-42"
    assert created.description == "Soft cotton regular fit"
    assert [(image.source_url, image.order) for image in created.images] == [
        ("https://cdn.example/front.jpg", 0),
        ("https://cdn.example/back.jpg", 1),
    ]
    assert created.metadata == {"source": "shop", "tags": ["tee"]}
    assert created.valid_for_days == 30
    assert created.expires_at is not None
    assert created.created_at.utcoffset() is not None
    assert created.expires_at > created.created_at
    assert created.last_used_at is None


def test_partial_updates_keep_what_they_omit(client: CatalogClient) -> None:
    first = client.upsert(
        product("shirt-42", description="Soft cotton", metadata={"vendor": "Acme"}, valid_for_days=30)
    )

    # Only the title: everything else stays
    retitled = client.upsert(ProductUpsert(external_id="shirt-42", title="Red tee — restocked"))
    assert retitled.title == "Red tee — restocked"
    assert retitled.description == "Soft cotton"
    assert retitled.images == first.images
    assert retitled.metadata == {"vendor": "Acme"}
    assert (retitled.valid_for_days, retitled.expires_at) == (30, first.expires_at)
    assert retitled.created_at == first.created_at

    # An explicit null TTL means kept forever
    forever = client.upsert(ProductUpsert(external_id="shirt-42", valid_for_days=None))
    assert (forever.valid_for_days, forever.expires_at) == (None, None)
    assert forever.title == "Red tee — restocked"

    # images replaces the whole list
    replaced = client.upsert(
        ProductUpsert(external_id="shirt-42", images=[ImageInput.from_url("https://cdn.example/new.jpg")])
    )
    assert [image.source_url for image in replaced.images] == ["https://cdn.example/new.jpg"]
    assert replaced.description == "Soft cotton"


def test_multipart_upsert_ships_real_bytes(client: CatalogClient) -> None:
    sent = ProductUpsert(
        external_id="shirt-42",
        title="Red tee",
        images=[
            ImageInput.from_url("https://cdn.example/front.jpg"),
            ImageInput.from_file("back"),
            ImageInput.from_file("side"),
        ],
    )

    created = client.upsert(sent, files={"back": JPEG, "side": ("side.png", PNG, "image/png")})
    again = client.upsert(sent, files={"back": JPEG, "side": ("side.png", PNG, "image/png")})

    urls = [image.source_url for image in created.images]
    assert urls[0] == "https://cdn.example/front.jpg"
    assert urls[1].startswith("upload://")
    assert urls[2].startswith("upload://")
    assert urls[1] != urls[2]
    # The same bytes give the same opaque reference, so a re-sync is recognisably unchanged
    assert [image.source_url for image in again.images] == urls


def test_get_of_an_absent_product_is_none(client: CatalogClient) -> None:
    assert client.get("never-created") is None


def test_ids_that_need_quoting_reach_the_api_intact(client: CatalogClient) -> None:
    awkward = ["a/b", "sp ace", "q?x=1#frag", "100%", "..", "ünï-çødé"]

    for external_id in awkward:
        client.upsert(product(external_id))

    for external_id in awkward:
        fetched = client.get(external_id)
        assert fetched is not None
        assert fetched.external_id == external_id
    assert sorted(item.external_id for item in client.iter_products()) == sorted(awkward)
    for external_id in awkward:
        assert client.delete(external_id) is True


def test_delete_is_idempotent_and_says_whether_the_product_existed(client: CatalogClient) -> None:
    client.upsert(product("shirt-42"))

    assert client.delete("shirt-42") is True
    assert client.delete("shirt-42") is False
    assert client.get("shirt-42") is None


def test_list_page_reads_items_cursor_and_count(client: CatalogClient) -> None:
    for number in range(3):
        client.upsert(product(f"p-{number}"))

    first = client.list_page(limit=2)
    second = client.list_page(limit=2, cursor=first.next_cursor)

    assert ([item.external_id for item in first.items], first.has_more, first.count) == (["p-0", "p-1"], True, 2)
    assert first.next_cursor
    assert ([item.external_id for item in second.items], second.has_more, second.next_cursor) == (["p-2"], False, None)


def test_accounts_are_isolated(make_client: Callable[..., CatalogClient]) -> None:
    mine, theirs = make_client(API_KEY), make_client(OTHER_KEY)
    mine.upsert(product("shirt-42"))

    assert theirs.get("shirt-42") is None
    assert list(theirs.iter_products()) == []


# ---------------------------------------------------------------------------------------------------------------
# Documented errors


def test_an_unknown_key_is_an_auth_error_that_does_not_show_the_key(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep
) -> None:
    wrong_key = "gk_wrong_key_that_must_stay_secret"
    client = make_client(wrong_key)

    with pytest.raises(AuthError) as caught:
        client.get("shirt-42")

    assert caught.value.status == 401
    assert caught.value.code == "INVALID_API_KEY"
    assert wrong_key not in str(caught.value)
    assert sleep.delays == []


def test_a_reserved_external_id_is_refused_by_the_api_with_409(client: CatalogClient) -> None:
    # The model refuses `_anon_` itself; built unvalidated here to see the API's own answer through the client
    reserved = ProductUpsert.model_construct(
        external_id="_anon_foo", images=[ImageInput.from_url("https://cdn.example/front.jpg")]
    )

    with pytest.raises(RejectedError) as caught:
        client.upsert(reserved)

    assert (caught.value.status, caught.value.code) == (409, "RESERVED_EXTERNAL_ID")
    assert "_anon_foo" in str(caught.value)


def test_creating_without_images_is_refused_with_product_images_required(
    client: CatalogClient, admin: httpx.Client
) -> None:
    with pytest.raises(RejectedError) as caught:
        client.upsert(ProductUpsert(external_id="shirt-42", title="No pictures yet"))

    assert (caught.value.status, caught.value.code) == (400, "PRODUCT_IMAGES_REQUIRED")
    # A 4xx is never retried
    assert stats(admin)["requests"]["POST /tryon/v1/products"] == {"400": 1}


def test_a_cursor_the_api_never_issued_is_rejected(client: CatalogClient) -> None:
    with pytest.raises(RejectedError) as caught:
        client.list_page(cursor="bm90LWEtY3Vyc29y")

    assert (caught.value.status, caught.value.code) == (400, "VALIDATION_FAILED")


def test_a_wrong_base_url_is_an_error_rather_than_an_absent_product(emulator: BackgroundServer) -> None:
    # Its 404 is the server's own, not PRODUCT_NOT_FOUND: a delete must not pass for done
    with CatalogClient(emulator.url + "/tryon/v2", API_KEY) as client, pytest.raises(RejectedError) as caught:
        client.delete("shirt-42")

    assert caught.value.status == 404
    assert caught.value.code != "PRODUCT_NOT_FOUND"


# ---------------------------------------------------------------------------------------------------------------
# Paging while the catalog changes


def test_iterating_1000_products_while_others_come_and_go_skips_and_repeats_nothing(client: CatalogClient) -> None:
    # Given 1,000 products that stay, interleaved with 300 that will be deleted during the iteration
    stable = [f"stable-{number:04d}" for number in range(1000)]
    doomed = [f"doomed-{number:04d}" for number in range(300)]
    for number, external_id in enumerate(stable):
        client.upsert(product(external_id))
        if number % 10 < 3:
            client.upsert(product(doomed[(number // 10) * 3 + number % 10]))
    to_delete = iter(doomed)
    inserted: list[str] = []
    seen: list[str] = []

    # When the catalog is iterated page by page while products are inserted, updated and deleted between pages
    for index, item in enumerate(client.iter_products(limit=50)):
        seen.append(item.external_id)
        if index % 50 == 49:
            for _ in range(10):
                client.delete(next(to_delete))
            for _ in range(5):
                inserted.append(f"new-{len(inserted):04d}")
                client.upsert(product(inserted[-1]))
            client.upsert(ProductUpsert(external_id=stable[index // 2], title="updated mid-iteration"))

    # Then every product present throughout was seen exactly once, and nothing was seen twice
    counts = Counter(seen)
    assert [external_id for external_id, count in counts.items() if count > 1] == []
    assert [external_id for external_id in stable if counts[external_id] != 1] == []
    assert set(seen) <= set(stable) | set(doomed) | set(inserted)
    assert len(inserted) >= 100


# ---------------------------------------------------------------------------------------------------------------
# Retries driven by the emulator's faults


def test_two_injected_503s_are_retried_then_the_upsert_succeeds(
    client: CatalogClient, admin: httpx.Client, sleep: RecordingSleep
) -> None:
    configure(admin, fail_next=2)

    created = client.upsert(product("shirt-42"))

    assert created.external_id == "shirt-42"
    assert len(sleep.delays) == 2
    assert stats(admin)["requests"]["POST /tryon/v1/products"] == {"503": 2, "201": 1}


def test_a_429_retry_after_is_honoured_through_the_swapped_sleep(
    client: CatalogClient, admin: httpx.Client, sleep: RecordingSleep
) -> None:
    # One request every 2 s, no burst: the second request is told to come back in 2 s
    configure(admin, rate_limit=0.5, burst=1)
    client.upsert(product("first"))

    second = client.upsert(product("second"))

    assert second.external_id == "second"
    assert sleep.delays == [2.0]
    assert stats(admin)["rate_limited"] == 1


def test_a_429_beyond_the_cap_is_raised_for_the_caller_to_reschedule(
    make_client: Callable[..., CatalogClient], admin: httpx.Client, sleep: RecordingSleep
) -> None:
    client = make_client(max_retry_after=5.0)
    configure(admin, rate_limit=0.05, burst=1)
    client.upsert(product("first"))

    with pytest.raises(RateLimited) as caught:
        client.upsert(product("second"))

    assert caught.value.retry_after == 20.0
    assert caught.value.limit == 1
    assert caught.value.remaining == 0
    assert sleep.delays == []
    assert stats(admin)["rate_limited"] == 1


def test_a_dropped_connection_is_retried(client: CatalogClient, admin: httpx.Client, sleep: RecordingSleep) -> None:
    client.upsert(product("shirt-42"))
    configure(admin, drop_next=1)

    fetched = client.get("shirt-42")

    assert fetched is not None
    assert len(sleep.delays) == 1
    assert stats(admin)["requests"]["GET /tryon/v1/products/{externalId}"] == {"dropped": 1, "200": 1}
