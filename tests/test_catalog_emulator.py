"""The catalog API emulator over real sockets, driven with raw httpx (the client has its own tests).

Time never passes for real here: the emulator's wall clock, monotonic clock and sleep are swapped for fakes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import typer
from typer.testing import CliRunner

import emulators.server
from emulators.catalog import MAX_IMAGE_BYTES, Faults, account_id, create_app
from emulators.cli import emulate
from emulators.server import running

KEY = "test-key"
OTHER_KEY = "other-key"
PRODUCTS = "/tryon/v1/products"
START = datetime(2026, 5, 13, 10, 0, tzinfo=UTC)
# Most tests here are about something else than the vendor's 100 requests a minute; the limit has tests of its own.
UNLIMITED = Faults(account_limit=None)


class FakeClock:
    """The emulator's wall clock: moves only when the test says so."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class FakeMonotonic:
    value: float = 1000.0

    def __call__(self) -> float:
        return self.value


@dataclass
class SleepRecorder:
    calls: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@dataclass
class Emulator:
    """One running emulator with fake clocks and a client per API key (building an httpx client costs ~30 ms, so they
    are made once per module)."""

    url: str
    clock: FakeClock
    monotonic: FakeMonotonic
    sleeps: SleepRecorder
    clients: dict[str | None, httpx.Client] = field(default_factory=dict)

    def as_key(self, key: str | None) -> httpx.Client:
        """A client sending `key` as x-api-key (None: no key header)."""
        if key not in self.clients:
            headers = {"x-api-key": key} if key is not None else {}
            self.clients[key] = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        return self.clients[key]

    @property
    def client(self) -> httpx.Client:
        return self.as_key(KEY)

    def configure(self, **faults: Any) -> dict[str, Any]:
        response = self.as_key(None).post("/_emulator/config", json=faults)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = self.as_key(None).get("/_emulator/stats").json()
        return body


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    """One server for the module (starting and stopping uvicorn is not free); each test resets it."""
    clock, monotonic, sleeps = FakeClock(START), FakeMonotonic(), SleepRecorder()
    app = create_app([KEY, OTHER_KEY], UNLIMITED, clock=clock, monotonic=monotonic, sleep=sleeps)
    with running(app) as server:
        emulator = Emulator(server.url, clock, monotonic, sleeps)
        yield emulator
        for client in emulator.clients.values():
            client.close()


@pytest.fixture
def emulator(running_emulator: Emulator) -> Emulator:
    assert running_emulator.as_key(None).post("/_emulator/reset").status_code == 200
    running_emulator.clock.now, running_emulator.monotonic.value = START, 1000.0
    running_emulator.sleeps.calls.clear()
    return running_emulator


def url_image(url: str) -> dict[str, Any]:
    return {"source": {"url": url}}


def create(client: httpx.Client, external_id: str, **fields: Any) -> dict[str, Any]:
    body = {"externalId": external_id, "images": [url_image(f"https://cdn.example/{external_id}.jpg")], **fields}
    response = client.post(PRODUCTS, json=body)
    assert response.status_code in (200, 201), response.text
    product: dict[str, Any] = response.json()
    return product


def source_urls(product: dict[str, Any]) -> list[str]:
    return [image["sourceUrl"] for image in product["images"]]


def upload_ref(data: bytes) -> str:
    return "upload://" + hashlib.sha256(data).hexdigest()[:32]


def multipart(payload: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "data": {"data": json.dumps(payload)},
        "files": {key: (f"{key}.jpg", data, "image/jpeg") for key, data in files.items()},
    }


# ---- upsert ------------------------------------------------------------------------------------------------------


def test_create_answers_201_with_the_full_documented_product(emulator: Emulator) -> None:
    response = emulator.client.post(
        PRODUCTS,
        json={
            "externalId": "shirt-42",
            "title": "Red tee",
            "description": "Soft cotton regular fit",
            "images": [url_image("https://cdn.example/front.jpg"), url_image("https://cdn.example/back.jpg")],
        },
    )

    assert response.status_code == 201
    assert response.json() == {
        "externalId": "shirt-42",
        "title": "Red tee",
        "description": "Soft cotton regular fit",
        "images": [
            {"sourceUrl": "https://cdn.example/front.jpg", "order": 0},
            {"sourceUrl": "https://cdn.example/back.jpg", "order": 1},
        ],
        "metadata": None,
        "autoDetectImageRoles": False,
        "validForDays": None,
        "expiresAt": None,
        "lastUsedAt": None,
        "createdAt": "2026-05-13T10:00:00.000Z",
        "updatedAt": "2026-05-13T10:00:00.000Z",
    }


def test_description_and_title_are_empty_strings_when_never_given(emulator: Emulator) -> None:
    product = create(emulator.client, "bare")

    assert (product["title"], product["description"]) == ("", "")


def test_update_answers_200_and_preserves_every_omitted_field(emulator: Emulator) -> None:
    create(
        emulator.client,
        "shirt-42",
        title="Red tee",
        description="Soft cotton",
        metadata={"vendor": "Acme", "tags": ["red"]},
        autoDetectImageRoles=True,
        validForDays=30,
    )
    emulator.clock.advance(timedelta(minutes=5, milliseconds=7))

    response = emulator.client.post(PRODUCTS, json={"externalId": "shirt-42", "title": "Red tee — restocked"})

    assert response.status_code == 200
    product = response.json()
    assert product["title"] == "Red tee — restocked"
    assert product["description"] == "Soft cotton"
    assert source_urls(product) == ["https://cdn.example/shirt-42.jpg"]
    assert product["metadata"] == {"vendor": "Acme", "tags": ["red"]}
    assert product["autoDetectImageRoles"] is True
    assert product["validForDays"] == 30
    assert product["expiresAt"] == "2026-06-12T10:00:00.000Z"
    assert product["createdAt"] == "2026-05-13T10:00:00.000Z"
    assert product["updatedAt"] == "2026-05-13T10:05:00.007Z"
    assert emulator.client.get(f"{PRODUCTS}/shirt-42").json() == product


def test_images_replace_the_whole_list_and_metadata_can_be_cleared(emulator: Emulator) -> None:
    create(
        emulator.client, "p", metadata={"a": 1}, images=[url_image(f"https://cdn.example/{n}.jpg") for n in range(3)]
    )

    product = emulator.client.post(
        PRODUCTS, json={"externalId": "p", "images": [url_image("https://cdn.example/new.jpg")], "metadata": None}
    ).json()

    assert product["images"] == [{"sourceUrl": "https://cdn.example/new.jpg", "order": 0}]
    assert product["metadata"] is None


@pytest.mark.parametrize(
    "images",
    [
        {"images": [url_image("https://cdn.example/front.jpg"), url_image("https://cdn.example/back.jpg")]},
        {
            "images": [
                {"source": {"url": "https://cdn.example/front.jpg"}, "classifications": {"view": "front"}},
                {"source": {"url": "https://cdn.example/back.jpg"}, "classifications": None},
            ]
        },
        {
            "images": [
                {"url": "https://cdn.example/front.jpg"},
                {"url": "https://cdn.example/back.jpg", "role": "top-back"},
            ]
        },
        {"imageUrls": ["https://cdn.example/front.jpg", "https://cdn.example/back.jpg"]},
    ],
    ids=["current", "current-with-classifications", "deprecated-flat", "legacy-imageUrls"],
)
def test_every_documented_image_shape_is_accepted(emulator: Emulator, images: dict[str, Any]) -> None:
    response = emulator.client.post(PRODUCTS, json={"externalId": "shirt-42", **images})

    assert response.status_code == 201, response.text
    assert response.json()["images"] == [
        {"sourceUrl": "https://cdn.example/front.jpg", "order": 0},
        {"sourceUrl": "https://cdn.example/back.jpg", "order": 1},
    ]


def test_multipart_uploads_become_stable_upload_references(emulator: Emulator) -> None:
    back, other = b"\xff\xd8\xff back of the shirt", b"\xff\xd8\xff another picture"
    payload = {
        "externalId": "shirt-42",
        "title": "Red tee",
        "images": [url_image("https://cdn.example/front.jpg"), {"source": {"fileKey": "back"}}],
    }

    first = emulator.client.post(PRODUCTS, **multipart(payload, {"back": back}))
    again = emulator.client.post(PRODUCTS, **multipart({**payload, "externalId": "shirt-43"}, {"back": back}))
    flat = emulator.client.post(
        PRODUCTS,
        **multipart(
            {"externalId": "shirt-44", "images": [{"fileKey": "pic", "classifications": {"view": "back"}}]},
            {"pic": other, "unused": b"ignored"},
        ),
    )

    assert first.status_code == 201, first.text
    assert source_urls(first.json()) == ["https://cdn.example/front.jpg", upload_ref(back)]
    assert first.json()["title"] == "Red tee"
    assert source_urls(again.json())[1] == upload_ref(back)
    assert source_urls(flat.json()) == [upload_ref(other)]
    assert upload_ref(other) != upload_ref(back)


def test_one_uploaded_file_may_back_several_images(emulator: Emulator) -> None:
    payload = {"externalId": "twice", "images": [{"source": {"fileKey": "f"}}, {"source": {"fileKey": "f"}}]}

    product = emulator.client.post(PRODUCTS, **multipart(payload, {"f": b"bytes"})).json()

    assert source_urls(product) == [upload_ref(b"bytes")] * 2


def test_an_upload_of_exactly_10_mb_is_accepted(emulator: Emulator) -> None:
    data = b"\x00" * MAX_IMAGE_BYTES
    payload = {"externalId": "big", "images": [{"source": {"fileKey": "f"}}]}

    response = emulator.client.post(PRODUCTS, **multipart(payload, {"f": data}))

    assert response.status_code == 201, response.text
    assert source_urls(response.json()) == [upload_ref(data)]


# ---- validForDays ------------------------------------------------------------------------------------------------


def test_valid_for_days_sets_expires_at_and_null_means_kept_forever(emulator: Emulator) -> None:
    created = create(emulator.client, "seasonal-001", validForDays=90)
    emulator.clock.advance(timedelta(days=1))
    preserved = emulator.client.post(PRODUCTS, json={"externalId": "seasonal-001", "title": "Summer"}).json()
    renewed = emulator.client.post(PRODUCTS, json={"externalId": "seasonal-001", "validForDays": 365}).json()
    forever = emulator.client.post(PRODUCTS, json={"externalId": "seasonal-001", "validForDays": None}).json()

    assert (created["validForDays"], created["expiresAt"]) == (90, "2026-08-11T10:00:00.000Z")
    assert (preserved["validForDays"], preserved["expiresAt"]) == (90, "2026-08-11T10:00:00.000Z")
    assert (renewed["validForDays"], renewed["expiresAt"]) == (365, "2027-05-14T10:00:00.000Z")
    assert (forever["validForDays"], forever["expiresAt"]) == (None, None)


def test_a_product_past_its_expiry_is_gone(emulator: Emulator) -> None:
    create(emulator.client, "short", validForDays=1)
    create(emulator.client, "forever")
    emulator.clock.advance(timedelta(days=1))

    listed = emulator.client.get(PRODUCTS).json()
    fetched = emulator.client.get(f"{PRODUCTS}/short")
    recreate_without_images = emulator.client.post(PRODUCTS, json={"externalId": "short", "title": "t"})

    assert [item["externalId"] for item in listed["items"]] == ["forever"]
    assert fetched.status_code == 404
    assert recreate_without_images.json()["code"] == "PRODUCT_IMAGES_REQUIRED"


# ---- get, delete, list -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("external_id", ["shirt/42", "a b?c#d", "chemise-été", "gid://shopify/Product/1"])
def test_external_ids_with_reserved_url_characters_round_trip(emulator: Emulator, external_id: str) -> None:
    create(emulator.client, external_id)
    path = f"{PRODUCTS}/{quote(external_id, safe='')}"

    fetched = emulator.client.get(path)
    deleted = emulator.client.delete(path)

    assert fetched.status_code == 200
    assert fetched.json()["externalId"] == external_id
    assert deleted.status_code == 204


def test_delete_answers_204_then_404_and_the_product_is_gone(emulator: Emulator) -> None:
    create(emulator.client, "shirt-42")

    first = emulator.client.delete(f"{PRODUCTS}/shirt-42")
    second = emulator.client.delete(f"{PRODUCTS}/shirt-42")
    fetched = emulator.client.get(f"{PRODUCTS}/shirt-42")

    assert first.status_code == 204
    assert first.content == b""
    assert second.status_code == 404
    assert fetched.json() == {"code": "PRODUCT_NOT_FOUND", "message": "Product 'shirt-42' not found.", "status": 404}


def test_list_defaults_to_50_and_pages_to_the_end(emulator: Emulator) -> None:
    for n in range(120):
        create(emulator.client, f"p{n:03d}")

    first = emulator.client.get(PRODUCTS).json()
    second = emulator.client.get(PRODUCTS, params={"limit": 200, "cursor": first["nextCursor"]}).json()

    assert (first["count"], first["hasMore"], len(first["items"])) == (50, True, 50)
    assert [item["externalId"] for item in first["items"]] == [f"p{n:03d}" for n in range(50)]
    assert (second["count"], second["hasMore"], second["nextCursor"]) == (70, False, None)
    assert second["items"][-1]["externalId"] == "p119"


def test_a_full_last_page_says_there_is_nothing_more(emulator: Emulator) -> None:
    for n in range(4):
        create(emulator.client, f"p{n}")

    page = emulator.client.get(PRODUCTS, params={"limit": 4}).json()
    empty = emulator.as_key(OTHER_KEY).get(PRODUCTS).json()

    assert (page["count"], page["hasMore"], page["nextCursor"]) == (4, False, None)
    assert empty == {"items": [], "nextCursor": None, "hasMore": False, "count": 0}


def test_the_cursor_neither_skips_nor_repeats_while_products_come_and_go(emulator: Emulator) -> None:
    # Given 1,000 products, and a churn of deletions (seen and unseen) and insertions between pages
    client, rng = emulator.client, random.Random(7)
    alive = {f"p{n:04d}" for n in range(1000)}
    for external_id in sorted(alive):
        create(client, external_id)
    initial = set(alive)
    seen: list[str] = []
    deleted_unseen: set[str] = set()
    created_during: set[str] = set()
    cursor: str | None = None

    # When iterating page by page
    for page_number in range(1000):
        params: dict[str, Any] = {"limit": 37}
        if cursor:
            params["cursor"] = cursor
        page = client.get(PRODUCTS, params=params).json()
        assert page["count"] == len(page["items"])
        seen.extend(item["externalId"] for item in page["items"])
        seen_once = set(seen)
        if not page["hasMore"]:
            assert page["nextCursor"] is None
            break
        cursor = page["nextCursor"]
        for victim in rng.sample(sorted(alive), 3):
            assert client.delete(f"{PRODUCTS}/{victim}").status_code == 204
            alive.discard(victim)
            if victim not in seen_once:
                deleted_unseen.add(victim)
        for n in range(2):
            new_id = f"new-{page_number}-{n}"
            create(client, new_id)
            alive.add(new_id)
            created_during.add(new_id)
    else:
        pytest.fail("the iteration never ended")

    # Then nothing is repeated, every survivor and every newcomer is seen, and nothing deleted unseen shows up
    assert len(seen) == len(set(seen))
    assert (initial - deleted_unseen) <= set(seen)
    assert (created_during - deleted_unseen) <= set(seen)
    assert not deleted_unseen & set(seen)
    assert deleted_unseen, "the churn should have deleted some products before they were seen"
    assert (initial - alive) - deleted_unseen, "and some after they were seen"


def test_a_cursor_only_works_for_the_account_that_got_it(emulator: Emulator) -> None:
    for n in range(3):
        create(emulator.client, f"p{n}")
    cursor = emulator.client.get(PRODUCTS, params={"limit": 1}).json()["nextCursor"]

    foreign = emulator.as_key(OTHER_KEY).get(PRODUCTS, params={"cursor": cursor})

    assert foreign.status_code == 400
    assert foreign.json()["code"] == "INVALID_CURSOR"


def test_accounts_are_isolated(emulator: Emulator) -> None:
    create(emulator.client, "shirt-42", title="Mine")
    other = emulator.as_key(OTHER_KEY)

    assert other.get(f"{PRODUCTS}/shirt-42").status_code == 404
    assert other.get(PRODUCTS).json()["count"] == 0
    assert other.delete(f"{PRODUCTS}/shirt-42").status_code == 404
    theirs = other.post(PRODUCTS, json={"externalId": "shirt-42", "title": "Theirs", "imageUrls": ["https://x.io/a"]})
    assert theirs.status_code == 201
    assert emulator.client.get(f"{PRODUCTS}/shirt-42").json()["title"] == "Mine"


# ---- errors ------------------------------------------------------------------------------------------------------


def _images(count: int) -> list[dict[str, Any]]:
    return [url_image(f"https://cdn.example/{n}.jpg") for n in range(count)]


ONE = _images(1)
ERROR_CASES: list[tuple[str, str | None, str, str, dict[str, Any], int, str]] = [
    # id, api key, method, path, httpx request arguments, status, code
    ("no-key", None, "GET", PRODUCTS, {}, 401, "UNAUTHORIZED"),
    ("unknown-key", "nope", "GET", PRODUCTS, {}, 401, "UNAUTHORIZED"),
    ("unknown-key-upsert", "nope", "POST", PRODUCTS, {"json": {"externalId": "a", "images": ONE}}, 401, "UNAUTHORIZED"),
    ("create-without-images", KEY, "POST", PRODUCTS, {"json": {"externalId": "a"}}, 400, "PRODUCT_IMAGES_REQUIRED"),
    (
        "empty-images",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": []}},
        400,
        "PRODUCT_IMAGES_REQUIRED",
    ),
    (
        "reserved-id",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "_anon_foo", "images": ONE}},
        409,
        "RESERVED_EXTERNAL_ID",
    ),
    (
        "eleven-images",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": _images(11)}},
        400,
        "TOO_MANY_IMAGES",
    ),
    (
        "eleven-image-urls",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "imageUrls": [f"https://x.io/{n}" for n in range(11)]}},
        400,
        "TOO_MANY_IMAGES",
    ),
    (
        "url-and-file-key",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": [{"source": {"url": "https://x.io/a", "fileKey": "f"}}]}},
        400,
        "INVALID_IMAGE",
    ),
    (
        "neither-url-nor-file-key",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": [{"source": {}}]}},
        400,
        "INVALID_IMAGE",
    ),
    (
        "flat-url-and-file-key",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": [{"url": "https://x.io/a", "fileKey": "f"}]}},
        400,
        "INVALID_IMAGE",
    ),
    (
        "relative-url",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": [{"url": "/a.jpg"}]}},
        400,
        "INVALID_IMAGE",
    ),
    (
        "unknown-role",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": [{"url": "https://x.io/a", "role": "side"}]}},
        400,
        "INVALID_IMAGE",
    ),
    (
        "file-key-in-json",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": [{"source": {"fileKey": "f"}}]}},
        400,
        "MISSING_FILE",
    ),
    (
        "file-key-without-file",
        KEY,
        "POST",
        PRODUCTS,
        multipart({"externalId": "a", "images": [{"source": {"fileKey": "back"}}]}, {"front": b"x"}),
        400,
        "MISSING_FILE",
    ),
    (
        "file-key-naming-a-text-field",
        KEY,
        "POST",
        PRODUCTS,
        {
            "data": {"data": json.dumps({"externalId": "a", "images": [{"fileKey": "f"}]}), "f": "text"},
            "files": {"x": b"1"},
        },
        400,
        "MISSING_FILE",
    ),
    (
        "valid-for-days-zero",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "validForDays": 0}},
        400,
        "INVALID_VALID_FOR_DAYS",
    ),
    (
        "valid-for-days-366",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "validForDays": 366}},
        400,
        "INVALID_VALID_FOR_DAYS",
    ),
    (
        "valid-for-days-string",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "validForDays": "30"}},
        400,
        "INVALID_VALID_FOR_DAYS",
    ),
    (
        "valid-for-days-float",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "validForDays": 1.5}},
        400,
        "INVALID_VALID_FOR_DAYS",
    ),
    (
        "valid-for-days-bool",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "validForDays": True}},
        400,
        "INVALID_VALID_FOR_DAYS",
    ),
    ("limit-zero", KEY, "GET", PRODUCTS, {"params": {"limit": "0"}}, 400, "INVALID_LIMIT"),
    ("limit-201", KEY, "GET", PRODUCTS, {"params": {"limit": "201"}}, 400, "INVALID_LIMIT"),
    ("limit-not-a-number", KEY, "GET", PRODUCTS, {"params": {"limit": "ten"}}, 400, "INVALID_LIMIT"),
    ("limit-negative", KEY, "GET", PRODUCTS, {"params": {"limit": "-5"}}, 400, "INVALID_LIMIT"),
    ("cursor-garbage", KEY, "GET", PRODUCTS, {"params": {"cursor": "not a cursor!"}}, 400, "INVALID_CURSOR"),
    (
        "cursor-forged",
        KEY,
        "GET",
        PRODUCTS,
        {"params": {"cursor": "eyJ2IjoxLCJhZnRlciI6MSwic3VtIjoiMDAwMDAwMDAwMDAwMDAwMCJ9"}},
        400,
        "INVALID_CURSOR",
    ),
    (
        "malformed-json",
        KEY,
        "POST",
        PRODUCTS,
        {"content": b'{"externalId": ', "headers": {"content-type": "application/json"}},
        400,
        "INVALID_JSON",
    ),
    (
        "malformed-data-field",
        KEY,
        "POST",
        PRODUCTS,
        {"data": {"data": "{nope"}, "files": {"f": b"1"}},
        400,
        "INVALID_JSON",
    ),
    ("multipart-without-data", KEY, "POST", PRODUCTS, {"files": {"f": b"1"}}, 400, "INVALID_MULTIPART"),
    ("missing-external-id", KEY, "POST", PRODUCTS, {"json": {"images": ONE}}, 400, "VALIDATION_ERROR"),
    ("empty-external-id", KEY, "POST", PRODUCTS, {"json": {"externalId": " ", "images": ONE}}, 400, "VALIDATION_ERROR"),
    (
        "numeric-external-id",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": 42, "images": ONE}},
        400,
        "VALIDATION_ERROR",
    ),
    (
        "title-not-a-string",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "title": 5}},
        400,
        "VALIDATION_ERROR",
    ),
    (
        "metadata-a-list",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "metadata": [1]}},
        400,
        "VALIDATION_ERROR",
    ),
    (
        "auto-detect-a-string",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "autoDetectImageRoles": "yes"}},
        400,
        "VALIDATION_ERROR",
    ),
    (
        "images-and-image-urls",
        KEY,
        "POST",
        PRODUCTS,
        {"json": {"externalId": "a", "images": ONE, "imageUrls": ["https://x.io/a"]}},
        400,
        "VALIDATION_ERROR",
    ),
    ("body-not-an-object", KEY, "POST", PRODUCTS, {"json": ["externalId"]}, 400, "VALIDATION_ERROR"),
    ("form-urlencoded", KEY, "POST", PRODUCTS, {"data": {"externalId": "a"}}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("get-missing", KEY, "GET", f"{PRODUCTS}/nope", {}, 404, "PRODUCT_NOT_FOUND"),
    ("delete-missing", KEY, "DELETE", f"{PRODUCTS}/nope", {}, 404, "PRODUCT_NOT_FOUND"),
]


@pytest.mark.parametrize(
    ("api_key", "method", "path", "arguments", "status", "code"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_errors_answer_the_documented_status_and_body(
    emulator: Emulator, api_key: str | None, method: str, path: str, arguments: dict[str, Any], status: int, code: str
) -> None:
    response = emulator.as_key(api_key).request(method, path, **arguments)

    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "status"}
    assert (body["code"], body["status"]) == (code, status)
    assert body["message"]
    assert emulator.client.get(PRODUCTS).json()["count"] == 0, "a refused upsert must not store anything"


def test_documented_error_messages_match_the_vendor_pages(emulator: Emulator) -> None:
    reserved = emulator.client.post(PRODUCTS, json={"externalId": "_anon_foo", "images": ONE}).json()
    no_images = emulator.client.post(PRODUCTS, json={"externalId": "shirt-42"}).json()

    assert (
        reserved["message"] == "externalId '_anon_foo' is reserved — the '_anon_' prefix is for server-generated IDs."
    )
    assert no_images["message"] == (
        "Product 'shirt-42' does not exist yet; at least one image is required to create it."
    )


def test_an_upload_over_10_mb_is_413(emulator: Emulator) -> None:
    payload = {"externalId": "huge", "images": [{"source": {"fileKey": "f"}}]}

    response = emulator.client.post(PRODUCTS, **multipart(payload, {"f": b"\x00" * (MAX_IMAGE_BYTES + 1)}))

    assert response.status_code == 413
    assert response.json()["code"] == "IMAGE_TOO_LARGE"
    assert emulator.client.get(f"{PRODUCTS}/huge").status_code == 404


def test_the_api_key_never_appears_in_an_answer(emulator: Emulator) -> None:
    secret_key = "sk-live-please-do-not-echo"

    refused = emulator.as_key(secret_key).get(PRODUCTS)
    create(emulator.client, "p")
    stats = emulator.as_key(None).get("/_emulator/stats")

    assert secret_key not in refused.text
    assert KEY not in stats.text


# ---- faults ------------------------------------------------------------------------------------------------------


def test_the_rate_limit_answers_429_with_retry_after_and_refills_on_the_monotonic_clock(emulator: Emulator) -> None:
    emulator.configure(rate_limit=1, burst=2)

    allowed = [emulator.client.get(PRODUCTS) for _ in range(2)]
    limited = emulator.client.get(PRODUCTS)
    emulator.monotonic.value += 1.0
    refilled = emulator.client.get(PRODUCTS)

    assert [r.status_code for r in allowed] == [200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in allowed] == ["1", "0"]
    assert allowed[0].headers["X-RateLimit-Limit"] == "2"
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.json()["code"] == "RATE_LIMITED"
    assert refilled.status_code == 200
    assert emulator.stats()["rate_limited"] == 1


def test_retry_after_is_rounded_up_to_whole_seconds(emulator: Emulator) -> None:
    emulator.configure(rate_limit=0.4)  # one token every 2.5 s, bucket of 1

    emulator.client.get(PRODUCTS)
    emulator.monotonic.value += 0.5
    limited = emulator.client.get(PRODUCTS)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert limited.headers["X-RateLimit-Reset"] == "2"


def test_admin_routes_are_neither_rate_limited_nor_faulty(emulator: Emulator) -> None:
    emulator.configure(rate_limit=1, burst=1, error_rate=1.0, latency_ms=100)

    answers = [emulator.as_key(None).get("/_emulator/stats").status_code for _ in range(5)]

    assert answers == [200] * 5
    assert emulator.sleeps.calls == []


def test_fail_next_answers_503_that_many_times_then_recovers(emulator: Emulator) -> None:
    emulator.configure(fail_next=2)

    answers = [emulator.client.get(PRODUCTS) for _ in range(3)]

    assert [r.status_code for r in answers] == [503, 503, 200]
    assert answers[0].json()["code"] == "SERVICE_UNAVAILABLE"
    assert emulator.configure()["fail_next"] == 0


def test_drop_rate_one_drops_every_connection_without_an_answer(emulator: Emulator) -> None:
    emulator.configure(drop_rate=1.0)

    for _ in range(3):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            emulator.as_key(KEY).post(PRODUCTS, json={"externalId": "a", "images": ONE})
    emulator.configure(drop_rate=0.0)

    assert emulator.client.get(f"{PRODUCTS}/a").status_code == 404
    stats = emulator.stats()
    assert stats["dropped"] == 3
    assert stats["requests"][f"POST {PRODUCTS}"] == {"dropped": 3}


def test_drop_next_drops_that_many_requests_then_serves(emulator: Emulator) -> None:
    emulator.configure(drop_next=1)

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        emulator.as_key(KEY).get(PRODUCTS)
    served = emulator.client.get(PRODUCTS)

    assert served.status_code == 200


def test_error_rate_one_answers_500_or_503_with_a_json_body_reproducibly(emulator: Emulator) -> None:
    def run() -> list[int]:
        emulator.configure(error_rate=1.0, seed=42)
        answers = [emulator.client.get(PRODUCTS) for _ in range(20)]
        assert all(set(r.json()) == {"code", "message", "status"} for r in answers)
        return [r.status_code for r in answers]

    first, second = run(), run()

    assert set(first) == {500, 503}
    assert first == second


def test_latency_is_added_to_every_api_response_through_the_sleep(emulator: Emulator) -> None:
    emulator.configure(latency_ms=250)

    emulator.client.get(PRODUCTS)
    emulator.client.get(f"{PRODUCTS}/missing")

    assert emulator.sleeps.calls == [0.25, 0.25]


def test_bad_fault_settings_are_refused_and_change_nothing(emulator: Emulator) -> None:
    before = emulator.configure()

    for bad in ({"error_rate": 1.5}, {"rate_limit": 0}, {"burst": 0}, {"fail_next": -1}, {"typo": 1}, {"seed": "x"}):
        response = emulator.as_key(None).post("/_emulator/config", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["code"] == "VALIDATION_ERROR"
    assert emulator.as_key(None).get("/_emulator/config").json() == before


def test_faults_given_at_creation_apply_from_the_first_request() -> None:
    app = create_app(faults=Faults(fail_next=1))
    with running(app) as server:
        first = httpx.get(f"{server.url}{PRODUCTS}", headers={"x-api-key": KEY})
        second = httpx.get(f"{server.url}{PRODUCTS}", headers={"x-api-key": KEY})

    assert (first.status_code, second.status_code) == (503, 200)


def test_an_app_without_api_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one API key"):
        create_app([])


# ---- stats and reset ---------------------------------------------------------------------------------------------


def test_stats_count_requests_by_endpoint_and_status_and_products_per_account(emulator: Emulator) -> None:
    create(emulator.client, "a")
    create(emulator.client, "a")
    create(emulator.client, "b")
    emulator.client.get(f"{PRODUCTS}/a")
    emulator.client.get(f"{PRODUCTS}/zzz")
    emulator.client.delete(f"{PRODUCTS}/b")
    emulator.client.get(PRODUCTS)
    emulator.as_key(None).get(PRODUCTS)

    stats = emulator.stats()

    assert stats["requests"] == {
        f"POST {PRODUCTS}": {"201": 2, "200": 1},
        f"GET {PRODUCTS}/{{externalId}}": {"200": 1, "404": 1},
        f"DELETE {PRODUCTS}/{{externalId}}": {"204": 1},
        f"GET {PRODUCTS}": {"200": 1, "401": 1},
    }
    assert stats["total_requests"] == 8
    assert (stats["upserts"], stats["creates"], stats["updates"]) == (3, 2, 1)
    assert (stats["gets"], stats["deletes"], stats["lists"]) == (2, 1, 1)
    assert stats["products"] == {account_id(KEY): 1, account_id(OTHER_KEY): 0}


def test_reset_stats_only_keeps_products_and_a_full_reset_clears_everything(emulator: Emulator) -> None:
    create(emulator.client, "a")
    emulator.configure(latency_ms=5)

    stats_only = emulator.as_key(None).post("/_emulator/reset", json={"stats_only": True})
    after_stats_reset = emulator.stats()
    kept = emulator.client.get(f"{PRODUCTS}/a").status_code
    full = emulator.as_key(None).post("/_emulator/reset")

    assert stats_only.status_code == full.status_code == 200
    assert after_stats_reset["total_requests"] == 0
    assert after_stats_reset["products"][account_id(KEY)] == 1
    assert kept == 200
    assert emulator.client.get(f"{PRODUCTS}/a").status_code == 404
    # A full reset returns to the faults the server was started with (this module's: no account limit).
    assert emulator.configure() == UNLIMITED.model_dump()
    assert emulator.stats()["products"][account_id(KEY)] == 0


# ---- the command -------------------------------------------------------------------------------------------------

# Mounted the way `catalog-sync` mounts it, without importing the whole admin command.
cli_app = typer.Typer()
cli_app.add_typer(emulate, name="emulate")


def test_the_cli_command_serves_with_its_keys_and_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}

    def capture(app: Any, *, host: str, port: int) -> None:
        started.update(app=app, host=host, port=port)

    monkeypatch.setattr(emulators.server, "serve_forever", capture)
    arguments = ["catalog", "--port", "8123", "--api-key", "k1", "--api-key", "k2", "--rate-limit", "5", "--seed", "3"]

    result = CliRunner().invoke(cli_app, ["emulate", *arguments, "--error-rate", "0.25", "--latency-ms", "0"])

    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8123/tryon/v1" in result.output
    assert "k1, k2" in result.output
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    with running(started["app"]) as server:
        faults = httpx.get(f"{server.url}/_emulator/config").json()
        httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 0.0})
        accepted = httpx.get(f"{server.url}{PRODUCTS}", headers={"x-api-key": "k2"})
        refused = httpx.get(f"{server.url}{PRODUCTS}", headers={"x-api-key": KEY})
    assert (faults["rate_limit"], faults["burst"], faults["error_rate"], faults["seed"]) == (5.0, None, 0.25, 3)
    assert accepted.status_code == 200
    assert refused.status_code == 401


def test_the_cli_command_refuses_a_bad_fault_flag() -> None:
    result = CliRunner().invoke(cli_app, ["emulate", "catalog", "--drop-rate", "2"])

    assert result.exit_code != 0
    assert "--drop-rate" in result.output


# --- the vendor's account limit -------------------------------------------------------------------------------------


def test_by_default_an_account_gets_100_requests_a_minute_then_the_documented_429() -> None:
    monotonic = FakeMonotonic(value=120.0)
    with running(create_app([KEY, OTHER_KEY], monotonic=monotonic)) as server:
        client = httpx.Client(base_url=server.url, headers={"x-api-key": KEY}, timeout=30)
        other = httpx.Client(base_url=server.url, headers={"x-api-key": OTHER_KEY}, timeout=30)
        allowed = [client.get(PRODUCTS).status_code for _ in range(100)]
        refused = client.get(PRODUCTS)
        other_account = other.get(PRODUCTS).status_code
        monotonic.value += 60
        next_window = client.get(PRODUCTS).status_code
        client.close()
        other.close()

    assert allowed == [200] * 100
    assert refused.status_code == 429
    assert refused.json() == {
        "code": "RATE_LIMITED",
        "message": "Rate limit exceeded: 100 requests per 60 s.",
        "status": 429,
    }
    # The vendor documents no rate-limit headers.
    assert not {"retry-after", "x-ratelimit-limit", "x-ratelimit-remaining"} & set(refused.headers)
    assert other_account == 200, "each account has its own budget"
    assert next_window == 200


def test_the_account_limit_counts_in_fixed_windows_aligned_on_the_clock(emulator: Emulator) -> None:
    emulator.configure(account_limit=3, account_window=60)
    emulator.monotonic.value = 1019.0  # one second before a window boundary (1020 = 17 x 60)

    end_of_window = [emulator.client.get(PRODUCTS).status_code for _ in range(4)]
    emulator.monotonic.value = 1020.0
    start_of_next = [emulator.client.get(PRODUCTS).status_code for _ in range(4)]

    assert end_of_window == [200, 200, 200, 429]
    assert start_of_next == [200, 200, 200, 429]
    assert emulator.stats()["rate_limited"] == 2


def test_requests_without_a_known_key_do_not_spend_an_accounts_budget(emulator: Emulator) -> None:
    emulator.configure(account_limit=2)

    unauthorized = [emulator.as_key("nobody").get(PRODUCTS).status_code for _ in range(3)]
    own = [emulator.client.get(PRODUCTS).status_code for _ in range(2)]

    assert unauthorized == [401, 401, 401]
    assert own == [200, 200]


def test_the_cli_turns_the_account_limit_off_with_zero() -> None:
    captured: dict[str, Any] = {}

    def fake_serve(host: str, port: int, keys: list[str], faults: Faults) -> None:
        captured["faults"] = faults

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("emulators.catalog.serve", fake_serve)
        off = CliRunner().invoke(cli_app, ["emulate", "catalog", "--account-limit", "0"])
        off_faults = captured["faults"]
        default = CliRunner().invoke(cli_app, ["emulate", "catalog"])

    assert off.exit_code == 0, off.output
    assert off_faults.account_limit is None
    assert default.exit_code == 0, default.output
    assert captured["faults"].account_limit == 100
    assert "100 requests per 60 s per account" in default.output
