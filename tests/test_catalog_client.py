"""Unit tests of the catalog client against scripted `httpx.MockTransport` servers.

Sleeps and clocks are swapped: every retry is observed through the recorded delays, nothing waits.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from config.settings import Settings
from ground.errors import (
    AuthError,
    ConfigError,
    InsufficientCredits,
    PermanentError,
    RateLimited,
    RejectedError,
    RetryableError,
    SourceError,
    SyncError,
)
from ground.http import retry_after_seconds
from ground.version import __version__
from tests.conftest import FIXTURES
from worker.catalog import (
    BULK_MAX_WAIT,
    MAX_IMAGE_BYTES,
    CatalogClient,
    CatalogPage,
    ImageInput,
    ImageSource,
    MissingFileError,
    ProductUpsert,
)

BASE_URL = "https://catalog.test/tryon/v1"
API_KEY = "gk_live_unit_test_key_0123456789"
CATALOG_FIXTURES = FIXTURES / "catalog"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

Handler = Callable[[httpx.Request], httpx.Response]


def fixture_json(name: str) -> Any:
    return json.loads((CATALOG_FIXTURES / name).read_text(encoding="utf-8"))


def product_body(external_id: str = "shirt-42", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = fixture_json("upsert_response_v2.json")
    body["externalId"] = external_id
    body.update(overrides)
    return body


class ScriptedServer:
    """Answers requests from a script, in order, and fails the test on a request the script did not expect."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if not self.answers:
            pytest.fail(f"unexpected request {request.method} {request.url}")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    def assert_done(self) -> None:
        assert not self.answers, f"{len(self.answers)} scripted answer(s) never requested"


class RecordingSleep:
    """Records the delays instead of sleeping; advances a fake clock by them."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 1000.0

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class RecordingLimiter:
    def __init__(self, refuse_with: RateLimited | None = None) -> None:
        self.acquired: list[float | None] = []
        self.priorities: list[bool] = []
        self.cool_downs: list[float] = []
        self.refuse_with = refuse_with

    def acquire(self, max_wait: float | None = None, *, priority: bool = False) -> None:
        self.acquired.append(max_wait)
        self.priorities.append(priority)
        if self.refuse_with is not None:
            raise self.refuse_with

    def cool_down(self, seconds: float) -> None:
        self.cool_downs.append(seconds)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def error_response(status: int, code: str, message: str = "nope", headers: dict[str, str] | None = None) -> Any:
    return json_response(status, {"code": code, "message": message, "status": status}, headers)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_client(sleep: RecordingSleep) -> Iterator[Callable[..., CatalogClient]]:
    clients: list[CatalogClient] = []

    def build(server: ScriptedServer, **options: Any) -> CatalogClient:
        options.setdefault("sleep", sleep)
        options.setdefault("clock", sleep.clock)
        client = CatalogClient(BASE_URL, SecretStr(API_KEY), transport=httpx.MockTransport(server), **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def simple_product(external_id: str = "shirt-42") -> ProductUpsert:
    return ProductUpsert(
        external_id=external_id, title="Red tee", images=[ImageInput.from_url("https://cdn.example/front.jpg")]
    )


# ---------------------------------------------------------------------------------------------------------------
# Status → error table

ERROR_TABLE = [
    (400, error_response(400, "PRODUCT_IMAGES_REQUIRED"), RejectedError, "PRODUCT_IMAGES_REQUIRED"),
    (400, error_response(400, "VALIDATION_FAILED"), RejectedError, "VALIDATION_FAILED"),
    (400, error_response(400, "EXTERNAL_ID_REQUIRED"), RejectedError, "EXTERNAL_ID_REQUIRED"),
    (400, error_response(400, "MULTIPART_FILE_NOT_FOUND"), RejectedError, "MULTIPART_FILE_NOT_FOUND"),
    (400, error_response(400, "INVALID_IMAGE_INPUT"), RejectedError, "INVALID_IMAGE_INPUT"),
    (400, error_response(400, "INVALID_IMAGE"), RejectedError, "INVALID_IMAGE"),
    (401, error_response(401, "MISSING_API_KEY"), AuthError, "MISSING_API_KEY"),
    (401, error_response(401, "INVALID_API_KEY"), AuthError, "INVALID_API_KEY"),
    (402, error_response(402, "INSUFFICIENT_CREDITS"), InsufficientCredits, "INSUFFICIENT_CREDITS"),
    (403, error_response(403, "FORBIDDEN"), AuthError, "FORBIDDEN"),
    (404, error_response(404, "PRODUCT_NOT_FOUND"), RejectedError, "PRODUCT_NOT_FOUND"),
    (408, httpx.Response(408), RetryableError, None),
    (409, error_response(409, "RESERVED_EXTERNAL_ID"), RejectedError, "RESERVED_EXTERNAL_ID"),
    (413, error_response(413, "PAYLOAD_TOO_LARGE"), RejectedError, "PAYLOAD_TOO_LARGE"),
    (418, httpx.Response(418, text="I'm a teapot"), RejectedError, "HTTP_418"),
    (422, error_response(422, "UNPROCESSABLE"), RejectedError, "UNPROCESSABLE"),
    (429, error_response(429, "RATE_LIMITED", headers={"Retry-After": "3"}), RateLimited, None),
    (500, error_response(500, "INTERNAL"), RetryableError, None),
    (502, httpx.Response(502, text="<html><body>Bad gateway</body></html>"), RetryableError, None),
    (503, httpx.Response(503), RetryableError, None),
    (504, httpx.Response(504, text="upstream timed out"), RetryableError, None),
    (599, httpx.Response(599), RetryableError, None),
    (302, httpx.Response(302, headers={"Location": "https://elsewhere.test/"}), RejectedError, "HTTP_302"),
]


@pytest.mark.parametrize(
    ("status", "answer", "error_class", "code"),
    ERROR_TABLE,
    ids=[f"{row[0]}-{row[3] or row[2].__name__}" for row in ERROR_TABLE],
)
def test_each_status_maps_to_the_error_the_caller_acts_on(
    make_client: Callable[..., CatalogClient],
    status: int,
    answer: httpx.Response,
    error_class: type[SyncError],
    code: str | None,
) -> None:
    # Given a client that tries once, so the mapping is seen without retries
    server = ScriptedServer(answer)
    client = make_client(server, max_attempts=1)

    # When an upsert meets the status
    with pytest.raises(SyncError) as caught:
        client.upsert(simple_product())

    # Then the error class is the table's, with the status and the body's code (or an HTTP_ fallback)
    assert type(caught.value) is error_class
    assert caught.value.status == status  # type: ignore[attr-defined]
    if code is not None:
        assert caught.value.code == code  # type: ignore[attr-defined]
    assert f"{status}" in str(caught.value)
    assert "/tryon/v1/products" in str(caught.value)


def test_validation_details_are_kept_with_their_paths(make_client: Callable[..., CatalogClient]) -> None:
    details = [
        {"path": "images[0].source.url", "message": "must be an absolute http(s) URL."},
        {"path": "validForDays", "message": "must be an integer from 1 to 365"},
    ]
    body = {"code": "VALIDATION_FAILED", "message": "Validation failed", "status": 400, "details": details}
    client = make_client(ScriptedServer(json_response(400, body)), max_attempts=1)

    with pytest.raises(RejectedError) as caught:
        client.upsert(simple_product())

    assert caught.value.details == (
        ("images[0].source.url", "must be an absolute http(s) URL."),
        ("validForDays", "must be an integer from 1 to 365"),
    )
    assert "images[0].source.url: must be an absolute http(s) URL." in str(caught.value)


def test_an_error_body_message_is_carried_into_the_exception(make_client: Callable[..., CatalogClient]) -> None:
    body = fixture_json("error_409_reserved_external_id.json")
    client = make_client(ScriptedServer(json_response(409, body)))

    with pytest.raises(RejectedError) as caught:
        client.upsert(simple_product())

    assert caught.value.code == "RESERVED_EXTERNAL_ID"
    assert body["message"] in str(caught.value)


def test_non_json_error_bodies_fall_back_to_an_http_code_and_an_excerpt(
    make_client: Callable[..., CatalogClient],
) -> None:
    client = make_client(ScriptedServer(httpx.Response(400, text="<html>" + "x" * 5000 + "</html>")))

    with pytest.raises(RejectedError) as caught:
        client.upsert(simple_product())

    assert caught.value.code == "HTTP_400"
    assert "<html>" in str(caught.value)
    assert len(str(caught.value)) < 400


# ---------------------------------------------------------------------------------------------------------------
# Retry-After and rate limits


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 5, 13, 10, 0, tzinfo=UTC)
    in_ninety = format_datetime(now + timedelta(seconds=90), usegmt=True)
    in_the_past = format_datetime(now - timedelta(seconds=90), usegmt=True)

    assert retry_after_seconds("7", now=now.timestamp()) == 7.0
    assert retry_after_seconds(" 1.5 ", now=now.timestamp()) == 1.5
    assert retry_after_seconds(in_ninety, now=now.timestamp()) == 90.0
    assert retry_after_seconds(in_the_past, now=now.timestamp()) == 0.0
    assert retry_after_seconds("soon", now=now.timestamp()) is None
    assert retry_after_seconds(None) is None


def test_a_429_exposes_retry_after_and_the_rate_limit_headers(make_client: Callable[..., CatalogClient]) -> None:
    headers = {"Retry-After": "4", "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4"}
    client = make_client(ScriptedServer(error_response(429, "RATE_LIMITED", headers=headers)), max_attempts=1)

    with pytest.raises(RateLimited) as caught:
        client.get("shirt-42")

    assert caught.value.retry_after == 4.0
    assert (caught.value.limit, caught.value.remaining, caught.value.reset) == (100, 0, 4.0)


def test_a_429_with_an_http_date_retry_after_is_read_as_seconds_from_now(
    make_client: Callable[..., CatalogClient],
) -> None:
    # A date two minutes ahead, far beyond the cap: raised at once with the parsed wait
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    server = ScriptedServer(error_response(429, "RATE_LIMITED", headers={"Retry-After": when}))
    client = make_client(server, max_retry_after=10.0)

    with pytest.raises(RateLimited) as caught:
        client.get("shirt-42")

    assert caught.value.retry_after is not None
    assert 100.0 < caught.value.retry_after <= 120.0
    assert len(server.requests) == 1


def test_a_429_within_the_cap_is_waited_out_then_retried(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep
) -> None:
    server = ScriptedServer(
        error_response(429, "RATE_LIMITED", headers={"Retry-After": "2"}),
        json_response(200, product_body()),
    )
    client = make_client(server, max_retry_after=10.0)

    product = client.upsert(simple_product())

    assert product.external_id == "shirt-42"
    assert sleep.delays == [2.0]
    server.assert_done()


def test_a_429_beyond_the_cap_raises_at_once_for_the_caller_to_reschedule(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep
) -> None:
    server = ScriptedServer(error_response(429, "RATE_LIMITED", headers={"Retry-After": "30"}))
    client = make_client(server, max_retry_after=10.0)

    with pytest.raises(RateLimited) as caught:
        client.upsert(simple_product())

    assert caught.value.retry_after == 30.0
    assert sleep.delays == []
    assert len(server.requests) == 1


def test_the_limiter_is_asked_before_every_attempt_and_told_about_429s(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep
) -> None:
    limiter = RecordingLimiter()
    server = ScriptedServer(
        error_response(429, "RATE_LIMITED", headers={"Retry-After": "3"}),
        httpx.Response(429),
        json_response(200, product_body()),
    )
    client = make_client(server, limiter=limiter, max_retry_after=5.0)

    client.upsert(simple_product())

    # A bulk call waits for the budget no longer than BULK_MAX_WAIT, whatever the Retry-After cap.
    assert limiter.acquired == [BULK_MAX_WAIT] * 3
    # A 429 without Retry-After still pauses every worker a little
    assert limiter.cool_downs == [3.0, 1.0]
    # The cool-down is waited out by the limiter's acquire, not a second time by the retry loop
    assert sleep.delays[0] == 0.0
    server.assert_done()


def test_priority_calls_ask_the_limiter_for_the_reserve_and_bulk_calls_do_not(
    make_client: Callable[..., CatalogClient],
) -> None:
    limiter = RecordingLimiter()
    server = ScriptedServer(
        json_response(200, product_body()),
        json_response(200, product_body()),
        httpx.Response(204),
        httpx.Response(204),
    )
    client = make_client(server, limiter=limiter)

    client.upsert(simple_product(), priority=True)
    client.upsert(simple_product())
    client.delete("sku-1", priority=True)
    client.delete("sku-1")

    assert limiter.priorities == [True, False, True, False]
    # Priority calls may wait the full Retry-After cap for their slot; bulk ones give the worker back sooner.
    assert limiter.acquired == [client.max_retry_after, BULK_MAX_WAIT] * 2
    server.assert_done()


def test_a_bulk_call_waits_for_the_budget_as_long_as_its_pacing_allows_and_no_longer_than_the_cap(
    make_client: Callable[..., CatalogClient],
) -> None:
    limiter = RecordingLimiter()
    server = ScriptedServer(json_response(200, product_body()), json_response(200, product_body()))
    paced = make_client(server, limiter=limiter, bulk_max_wait=3.1, max_retry_after=10.0)
    capped = make_client(server, limiter=limiter, bulk_max_wait=3.1, max_retry_after=1.0)

    paced.upsert(simple_product())
    capped.upsert(simple_product())

    assert limiter.acquired == [3.1, 1.0]
    server.assert_done()


def test_a_negative_bulk_wait_is_refused(make_client: Callable[..., CatalogClient]) -> None:
    with pytest.raises(ValueError, match="bulk_max_wait"):
        make_client(ScriptedServer(), bulk_max_wait=-1.0)


def test_a_limiter_refusal_is_raised_without_sending_or_retrying(make_client: Callable[..., CatalogClient]) -> None:
    limiter = RecordingLimiter(refuse_with=RateLimited("global budget spent", retry_after=42.0))
    server = ScriptedServer()
    client = make_client(server, limiter=limiter)

    with pytest.raises(RateLimited) as caught:
        client.upsert(simple_product())

    assert caught.value.retry_after == 42.0
    assert server.requests == []
    assert limiter.acquired == [BULK_MAX_WAIT]


# ---------------------------------------------------------------------------------------------------------------
# Retries


def test_a_503_is_retried_with_growing_jittered_backoff_until_success(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep
) -> None:
    server = ScriptedServer(httpx.Response(503), httpx.Response(503), json_response(200, product_body()))
    client = make_client(server, max_attempts=4)

    product = client.upsert(simple_product())

    assert product.external_id == "shirt-42"
    assert len(sleep.delays) == 2
    # Full jitter: anywhere in [0, 0.5·2ⁿ]
    assert 0.0 <= sleep.delays[0] <= 0.5
    assert 0.0 <= sleep.delays[1] <= 1.0
    server.assert_done()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422], ids=lambda status: f"HTTP_{status}")
def test_client_errors_are_never_retried(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep, status: int
) -> None:
    server = ScriptedServer(error_response(status, "SOME_CODE"))
    client = make_client(server, max_attempts=4)

    with pytest.raises(PermanentError):
        client.upsert(simple_product())

    assert len(server.requests) == 1
    assert sleep.delays == []


def test_timeouts_become_retryable_after_the_last_attempt(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep
) -> None:
    server = ScriptedServer(*(httpx.ReadTimeout("timed out") for _ in range(3)))
    client = make_client(server, max_attempts=3)

    with pytest.raises(RetryableError) as caught:
        client.get("shirt-42")

    assert "ReadTimeout" in str(caught.value)
    assert len(server.requests) == 3
    assert len(sleep.delays) == 2


def test_a_dropped_connection_is_retried(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        json_response(200, product_body()),
    )
    client = make_client(server)

    assert client.upsert(simple_product()).external_id == "shirt-42"
    server.assert_done()


def test_retries_stop_before_a_wait_would_end_past_the_total_time_budget(
    make_client: Callable[..., CatalogClient], sleep: RecordingSleep
) -> None:
    # Given a server that keeps asking for 2 s and a 5 s budget (the fake clock advances with each sleep)
    server = ScriptedServer(*(error_response(429, "RATE_LIMITED", headers={"Retry-After": "2"}) for _ in range(3)))
    client = make_client(server, max_attempts=20, max_total_time=5.0)

    # When the call keeps failing
    with pytest.raises(RateLimited):
        client.upsert(simple_product())

    # Then it waited 2 + 2 and gave up rather than wait to second 6
    assert sleep.delays == [2.0, 2.0]
    server.assert_done()


def test_each_retry_is_logged_with_method_path_status_and_attempt(
    make_client: Callable[..., CatalogClient], caplog: pytest.LogCaptureFixture
) -> None:
    server = ScriptedServer(httpx.Response(503), json_response(200, product_body()))
    client = make_client(server)

    with caplog.at_level(logging.INFO, logger="worker.catalog"):
        client.upsert(simple_product())

    [record] = [r for r in caplog.records if r.name == "worker.catalog"]
    assert record.levelno == logging.WARNING
    assert "POST /tryon/v1/products" in record.getMessage()
    assert "503" in record.getMessage()
    assert "attempt 1 of 4" in record.getMessage()


# ---------------------------------------------------------------------------------------------------------------
# The key stays secret


def test_the_api_key_never_shows_in_reprs_errors_or_logs(
    make_client: Callable[..., CatalogClient], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a server that echoes the key back in its error messages
    server = ScriptedServer(
        error_response(503, "DOWN", f"backend refused key {API_KEY}"),
        httpx.ConnectError(f"cannot connect for {API_KEY}"),
        error_response(401, "INVALID_API_KEY", f"unknown key {API_KEY}"),
    )
    client = make_client(server)

    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as caught:
        client.upsert(simple_product())

    # Then the key was sent, but nowhere shown
    assert server.requests[0].headers["x-api-key"] == API_KEY
    shown = [repr(client), str(client), str(caught.value), repr(caught.value), caplog.text]
    for text in shown:
        assert API_KEY not in text
    assert "**********" in str(caught.value)


def test_requests_carry_the_key_and_the_user_agent(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(json_response(200, product_body()))
    client = make_client(server)

    client.upsert(simple_product())

    request = server.requests[0]
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["user-agent"] == f"catalog-sync/{__version__}"
    assert request.headers["content-type"] == "application/json"
    assert str(request.url) == f"{BASE_URL}/products"


# ---------------------------------------------------------------------------------------------------------------
# Request bodies


def test_an_omitted_field_is_not_sent_and_an_explicit_null_is(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(json_response(200, product_body()), json_response(200, product_body()))
    client = make_client(server)

    client.upsert(ProductUpsert(external_id="shirt-42", title="Red tee"))
    client.upsert(ProductUpsert(external_id="shirt-42", valid_for_days=None))

    assert json.loads(server.requests[0].content) == {"externalId": "shirt-42", "title": "Red tee"}
    assert json.loads(server.requests[1].content) == {"externalId": "shirt-42", "validForDays": None}


def test_images_are_sent_in_the_current_source_shape(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(json_response(200, product_body()))
    client = make_client(server)
    product = ProductUpsert(
        external_id="shirt-42",
        images=[
            ImageInput.from_url("https://cdn.example/front.jpg"),
            ImageInput(source=ImageSource(url="https://cdn.example/back.jpg", file_key=None), classifications=None),
            ImageInput.from_url("https://cdn.example/side.jpg", {"view": "side"}),
        ],
        valid_for_days=90,
        auto_detect_image_roles=True,
        metadata={"source": "shop", "tags": ["a", "b"]},
    )

    client.upsert(product)

    assert json.loads(server.requests[0].content) == {
        "externalId": "shirt-42",
        "images": [
            {"source": {"url": "https://cdn.example/front.jpg"}},
            {"source": {"url": "https://cdn.example/back.jpg"}},
            {"source": {"url": "https://cdn.example/side.jpg"}, "classifications": {"view": "side"}},
        ],
        "validForDays": 90,
        "autoDetectImageRoles": True,
        "metadata": {"source": "shop", "tags": ["a", "b"]},
    }


def test_image_bytes_are_shipped_as_multipart_with_a_data_field_and_one_file_per_key(
    make_client: Callable[..., CatalogClient],
) -> None:
    server = ScriptedServer(json_response(200, product_body()))
    client = make_client(server)
    product = ProductUpsert(
        external_id="shirt-42",
        title="Red tee",
        images=[
            ImageInput.from_url("https://cdn.example/front.jpg"),
            ImageInput.from_file("back"),
            ImageInput.from_file("side"),
        ],
    )

    client.upsert(product, files={"back": JPEG, "side": ("side.png", PNG, "image/png")})

    request = server.requests[0]
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.content, policy=email.policy.HTTP
    )
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    assert set(parts) == {"data", "back", "side"}
    assert parts["data"].get_content_type() == "text/plain"
    assert json.loads(parts["data"].get_content()) == product.payload()
    assert parts["back"].get_payload(decode=True) == JPEG
    assert parts["back"].get_filename() == "back"
    assert parts["back"].get_content_type() == "image/jpeg"
    assert parts["side"].get_payload(decode=True) == PNG
    assert parts["side"].get_filename() == "side.png"
    assert parts["side"].get_content_type() == "image/png"


def test_a_file_key_without_its_file_is_refused_before_sending(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer()
    client = make_client(server)
    product = ProductUpsert(external_id="shirt-42", images=[ImageInput.from_file("back")])

    with pytest.raises(MissingFileError, match="'back'"):
        client.upsert(product)
    with pytest.raises(MissingFileError, match="'back'"):
        client.upsert(product, files={"front": JPEG})
    assert server.requests == []


def test_a_file_no_image_references_is_refused_before_sending(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer()
    client = make_client(server)

    with pytest.raises(MissingFileError, match="'stray'"):
        client.upsert(simple_product(), files={"stray": JPEG})
    assert server.requests == []


def test_a_file_over_ten_megabytes_is_refused_before_sending(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer()
    client = make_client(server)
    product = ProductUpsert(external_id="shirt-42", images=[ImageInput.from_file("back")])

    with pytest.raises(ValueError, match=r"'back'.*at most"):
        client.upsert(product, files={"back": b"\xff\xd8\xff" + b"\x00" * MAX_IMAGE_BYTES})
    assert server.requests == []


# ---------------------------------------------------------------------------------------------------------------
# ProductUpsert validation

INVALID_UPSERTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty-external-id", {"externalId": ""}, "externalId"),
    ("blank-external-id", {"externalId": "   "}, "externalId"),
    ("missing-external-id", {"title": "Red tee"}, "externalId"),
    ("reserved-prefix", {"externalId": "_anon_123"}, "externalId"),
    ("no-images", {"externalId": "a", "images": []}, "images"),
    ("eleven-images", {"externalId": "a", "images": [{"source": {"url": "https://c.test/1.jpg"}}] * 11}, "images"),
    (
        "url-and-file-key",
        {"externalId": "a", "images": [{"source": {"url": "https://c.test/1.jpg", "fileKey": "f"}}]},
        "images.0.source",
    ),
    ("neither-url-nor-file-key", {"externalId": "a", "images": [{"source": {}}]}, "images.0.source"),
    ("flat-deprecated-shape", {"externalId": "a", "images": [{"url": "https://c.test/1.jpg"}]}, "images.0"),
    ("relative-url", {"externalId": "a", "images": [{"source": {"url": "/front.jpg"}}]}, "images.0.source.url"),
    ("empty-file-key", {"externalId": "a", "images": [{"source": {"fileKey": ""}}]}, "images.0.source.fileKey"),
    (
        "file-key-named-data",
        {"externalId": "a", "images": [{"source": {"fileKey": "data"}}]},
        "images.0.source.fileKey",
    ),
    ("valid-for-zero-days", {"externalId": "a", "validForDays": 0}, "validForDays"),
    ("valid-for-366-days", {"externalId": "a", "validForDays": 366}, "validForDays"),
    ("valid-for-days-as-text", {"externalId": "a", "validForDays": "30"}, "validForDays"),
    ("valid-for-days-as-bool", {"externalId": "a", "validForDays": True}, "validForDays"),
    ("null-title", {"externalId": "a", "title": None}, "title"),
    ("null-images", {"externalId": "a", "images": None}, "images"),
    ("legacy-image-urls", {"externalId": "a", "imageUrls": ["https://c.test/1.jpg"]}, "imageUrls"),
]


@pytest.mark.parametrize(
    ("payload", "field"), [(row[1], row[2]) for row in INVALID_UPSERTS], ids=[row[0] for row in INVALID_UPSERTS]
)
def test_an_invalid_upsert_is_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ProductUpsert.model_validate(payload)

    locations = {".".join(str(part) for part in error["loc"]) for error in caught.value.errors()}
    assert any(location.startswith(field) for location in locations), locations
    assert field.split(".")[0] in str(caught.value)


@pytest.mark.parametrize("days", [1, 365, None], ids=["one-day", "a-year", "kept-forever"])
def test_the_bounds_of_valid_for_days_are_accepted(days: int | None) -> None:
    assert ProductUpsert(external_id="a", valid_for_days=days).payload() == {"externalId": "a", "validForDays": days}


def test_ten_images_and_snake_case_names_are_accepted() -> None:
    product = ProductUpsert(external_id="a", images=[ImageInput.from_url(f"https://c.test/{n}.jpg") for n in range(10)])
    assert len(product.payload()["images"]) == 10


def test_content_hash_is_stable_across_field_order_and_changes_with_content() -> None:
    first = ProductUpsert.model_validate({"externalId": "a", "title": "T", "metadata": {"x": 1, "y": 2}})
    second = ProductUpsert.model_validate({"metadata": {"y": 2, "x": 1}, "title": "T", "externalId": "a"})
    changed = ProductUpsert.model_validate({"externalId": "a", "title": "T2", "metadata": {"x": 1, "y": 2}})

    assert first.payload_json() == '{"externalId":"a","metadata":{"x":1,"y":2},"title":"T"}'
    assert first.content_hash() == second.content_hash()
    assert first.content_hash() == hashlib.sha256(first.payload_json().encode()).hexdigest()
    assert first.content_hash() != changed.content_hash()


json_leaf = st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
urls = st.builds(
    "https://{}.test/{}.jpg".format,
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12),
    st.text(min_size=0, max_size=12).map(lambda text: text.encode().hex()),
)
file_keys = st.text(min_size=1, max_size=12).filter(lambda key: key.strip() and key != "data")
image_sources = st.one_of(st.builds(lambda url: {"url": url}, urls), st.builds(lambda key: {"fileKey": key}, file_keys))
images = st.builds(
    lambda source, classifications: {"source": source, **classifications},
    image_sources,
    st.just({}) | st.dictionaries(st.text(max_size=8), json_value, max_size=2).map(lambda c: {"classifications": c}),
)
external_ids = st.text(min_size=1, max_size=40).filter(lambda text: text.strip() and not text.startswith("_anon_"))
optional_fields = st.fixed_dictionaries(
    {},
    optional={
        "title": st.text(max_size=60),
        "description": st.text(max_size=200),
        "images": st.lists(images, min_size=1, max_size=10),
        "metadata": st.none() | st.dictionaries(st.text(max_size=10), json_value, max_size=4),
        "autoDetectImageRoles": st.booleans(),
        "validForDays": st.none() | st.integers(1, 365),
    },
)


@settings(max_examples=200, deadline=None)
@given(external_id=external_ids, fields=optional_fields)
def test_any_valid_upsert_round_trips_through_its_payload_json(external_id: str, fields: dict[str, Any]) -> None:
    wire = {"externalId": external_id, **fields}
    product = ProductUpsert.model_validate(wire)

    text = product.payload_json()
    again = ProductUpsert.model_validate_json(text)

    # Exactly the fields given are sent (omitted stays omitted, null stays null), and the trip changes nothing
    assert json.loads(text) == wire
    assert again == product
    assert again.payload_json() == text
    assert again.content_hash() == product.content_hash()


# ---------------------------------------------------------------------------------------------------------------
# Responses, get, delete, paging


@pytest.mark.parametrize("name", ["upsert_response_v1.json", "upsert_response_v2.json"], ids=["older", "newer"])
def test_both_documented_product_shapes_are_read(make_client: Callable[..., CatalogClient], name: str) -> None:
    body = fixture_json(name)
    body["images"][0]["someFutureField"] = 1
    body["someFutureField"] = {"x": 1}
    client = make_client(ScriptedServer(json_response(200, body)))

    product = client.upsert(simple_product())

    assert product.external_id == "shirt-42"
    assert product.title == "Red tee"
    assert product.images[0].source_url == "https://cdn.example/front.jpg"
    assert product.images[0].order == 0
    assert product.images[0].role is None
    assert product.valid_for_days is None
    assert product.expires_at is None
    assert product.created_at == datetime(2026, 5, 13, 10, 0, tzinfo=UTC)
    assert product.updated_at.utcoffset() == timedelta(0)
    assert product.auto_detect_image_roles is (False if name.endswith("v1.json") else None)


def test_a_list_page_reads_items_cursor_and_counts(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(json_response(200, fixture_json("list_response_v1.json")))
    client = make_client(server)

    page = client.list_page(limit=10)

    assert isinstance(page, CatalogPage)
    assert [item.external_id for item in page.items] == ["shirt-42"]
    assert page.items[0].last_used_at == datetime(2026, 5, 12, 14, 32, tzinfo=UTC)
    assert [image.order for image in page.items[0].images] == [0, 1]
    assert (page.next_cursor, page.has_more, page.count) == (None, False, 1)
    assert server.requests[0].url.params == httpx.QueryParams({"limit": "10"})


@pytest.mark.parametrize("limit", [0, 201, -1, True], ids=["zero", "above-200", "negative", "bool"])
def test_a_page_size_outside_1_to_200_is_refused_before_sending(
    make_client: Callable[..., CatalogClient], limit: int
) -> None:
    server = ScriptedServer()
    client = make_client(server)

    with pytest.raises(ValueError, match="limit"):
        client.list_page(limit=limit)
    assert server.requests == []


def test_get_returns_the_product_or_none_when_absent(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(
        json_response(200, product_body("a/b c?#")),
        json_response(404, fixture_json("error_404_product_not_found.json")),
    )
    client = make_client(server)

    found = client.get("a/b c?#")
    missing = client.get("shirt-42")

    assert found is not None
    assert found.external_id == "a/b c?#"
    assert missing is None
    assert server.requests[0].url.raw_path == b"/tryon/v1/products/a%2Fb%20c%3F%23"


def test_dot_segment_ids_are_escaped_rather_than_resolved(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(json_response(200, product_body("..")))
    client = make_client(server)

    client.get("..")

    assert server.requests[0].url.raw_path == b"/tryon/v1/products/%2E%2E"


def test_a_404_that_is_not_product_not_found_is_an_error_not_an_absence(
    make_client: Callable[..., CatalogClient],
) -> None:
    # A wrong base URL answers its own 404: deletes must not silently "succeed" against it
    server = ScriptedServer(httpx.Response(404, text="Not Found"), httpx.Response(404, text="Not Found"))
    client = make_client(server)

    with pytest.raises(RejectedError, match="HTTP_404"):
        client.get("shirt-42")
    with pytest.raises(RejectedError, match="HTTP_404"):
        client.delete("shirt-42")


def test_delete_reports_whether_the_product_existed(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(httpx.Response(204), json_response(404, fixture_json("error_404_product_not_found.json")))
    client = make_client(server)

    assert client.delete("shirt-42") is True
    assert client.delete("shirt-42") is False
    assert [request.method for request in server.requests] == ["DELETE", "DELETE"]


def test_an_empty_external_id_is_refused_before_sending(make_client: Callable[..., CatalogClient]) -> None:
    client = make_client(ScriptedServer())

    with pytest.raises(ValueError, match="externalId"):
        client.get("")
    with pytest.raises(ValueError, match="externalId"):
        client.delete("")


def _page(ids: list[str], next_cursor: str | None, **extra: Any) -> httpx.Response:
    items = [product_body(external_id) for external_id in ids]
    return json_response(200, {"items": items, "nextCursor": next_cursor, "count": len(items), **extra})


def test_iter_products_follows_cursors_until_the_last_page(make_client: Callable[..., CatalogClient]) -> None:
    server = ScriptedServer(
        _page(["a", "b"], "c1", hasMore=True),
        _page(["c", "d"], "c2", hasMore=True),
        _page(["e"], None, hasMore=False),
    )
    client = make_client(server)

    ids = [product.external_id for product in client.iter_products(limit=2)]

    assert ids == ["a", "b", "c", "d", "e"]
    assert [request.url.params.get("cursor") for request in server.requests] == [None, "c1", "c2"]
    assert {request.url.params["limit"] for request in server.requests} == {"2"}


def test_iter_products_stops_on_an_omitted_cursor_or_has_more_false(make_client: Callable[..., CatalogClient]) -> None:
    omitted = json_response(200, {"items": [product_body("a")], "count": 1})
    no_more = _page(["b"], "ignored-because-has-more-is-false", hasMore=False)
    client = make_client(ScriptedServer(omitted, no_more))

    assert [product.external_id for product in client.iter_products()] == ["a"]
    assert [product.external_id for product in client.iter_products()] == ["b"]


def test_iter_products_refuses_a_cursor_identical_to_the_previous_one(
    make_client: Callable[..., CatalogClient],
) -> None:
    server = ScriptedServer(_page(["a"], "same", hasMore=True), _page(["b"], "same", hasMore=True))
    client = make_client(server)

    with pytest.raises(SourceError, match="same cursor"):
        list(client.iter_products())
    server.assert_done()


def test_a_success_body_that_is_not_a_product_is_a_clear_error(make_client: Callable[..., CatalogClient]) -> None:
    client = make_client(ScriptedServer(httpx.Response(200, text="<html>maintenance</html>")))

    with pytest.raises(PermanentError, match="not a valid CatalogProduct"):
        client.upsert(simple_product())


# ---------------------------------------------------------------------------------------------------------------
# Construction


@pytest.mark.parametrize(
    ("base_url", "key", "options"),
    [
        ("catalog.test/tryon/v1", API_KEY, {}),
        ("ftp://catalog.test", API_KEY, {}),
        (BASE_URL + "?x=1", API_KEY, {}),
        (BASE_URL, "  ", {}),
        (BASE_URL, API_KEY, {"max_attempts": 0}),
        (BASE_URL, API_KEY, {"timeout": 0}),
        (BASE_URL, API_KEY, {"max_retry_after": -1}),
        (BASE_URL, API_KEY, {"max_total_time": 0}),
    ],
    ids=["no-scheme", "ftp", "query", "blank-key", "zero-attempts", "zero-timeout", "negative-cap", "zero-budget"],
)
def test_bad_construction_arguments_are_refused(base_url: str, key: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as caught:
        CatalogClient(base_url, key, **options)
    assert API_KEY not in str(caught.value)


def test_from_settings_needs_the_api_key(clean_env: None) -> None:
    with pytest.raises(ConfigError, match="CATALOG_SYNC_CATALOG_API_KEY"):
        CatalogClient.from_settings(Settings(catalog_api_key=None))

    with CatalogClient.from_settings(
        Settings(catalog_url=BASE_URL, catalog_api_key=SecretStr(API_KEY), catalog_max_attempts=7)
    ) as client:
        assert client.max_attempts == 7
        assert client.base_url == BASE_URL


def test_the_client_is_closed_by_its_context_manager() -> None:
    server = ScriptedServer(json_response(200, product_body()))
    with CatalogClient(BASE_URL, API_KEY, transport=httpx.MockTransport(server)) as client:
        assert client.get("shirt-42") is not None

    with pytest.raises(RuntimeError, match="closed"):
        client.get("shirt-42")
