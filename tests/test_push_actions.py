"""What a push does about each exception: `worker.push.ACTIONS` as a table, then the holes it closes, against real
servers (a catalog that answers 2xx garbage, a Redis that is not there)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from emulators.server import running
from ground.errors import (
    AuthError,
    InfrastructureError,
    InsufficientCredits,
    PermanentError,
    RateLimited,
    RejectedError,
    RetryableError,
)
from tests.sync_helpers import SOURCE, SyncWorld, feed_item, sync_world, write_feed
from worker.catalog import CatalogClient, ProductUpsert, error_for_response
from worker.operations import run_sync
from worker.push import ACTIONS, Outcome, PushSettings, action_for, push
from worker.ratelimit import RedisLimiter
from worker.state import DesiredRow, Store, utcnow


def _validation_error() -> ValidationError:
    try:
        ProductUpsert.model_validate({"externalId": "x", "images": [{"source": {"url": "ftp://cdn.example/a.jpg"}}]})
    except ValidationError as exc:
        return exc
    raise AssertionError("the payload was expected to be invalid")


class RaisingCatalog:
    """A catalog whose every call raises `error`; counts the calls."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def upsert(self, product: ProductUpsert, **options: Any) -> None:
        self.calls += 1
        raise self.error

    def delete(self, external_id: str, **options: Any) -> bool:
        self.calls += 1
        raise self.error


def _row(product_id: str = "1") -> DesiredRow:
    payload = {"externalId": product_id, "images": [{"source": {"url": "https://cdn.example/a.jpg"}}]}
    upsert = ProductUpsert.model_validate(payload)
    return DesiredRow(SOURCE, product_id, product_id, upsert.payload(), upsert.content_hash(), utcnow())


# exception, outcome with max_attempts=1, attempts counted, row status, recorded code (None: nothing recorded),
# source paused
TABLE: list[tuple[str, BaseException, Outcome, int, str, str | None, bool]] = [
    ("429", RateLimited("slow down", retry_after=5), Outcome.RATE_LIMITED, 0, "pending", "RATE_LIMITED", False),
    ("own-redis", InfrastructureError("rate limiter: Redis down"), Outcome.RETRY, 0, "pending", None, False),
    ("own-db", OperationalError("UPDATE", {}, Exception("down")), Outcome.RETRY, 0, "pending", None, False),
    ("redis-error", redis.ConnectionError("refused"), Outcome.RETRY, 0, "pending", None, False),
    ("5xx", RetryableError("503", status=503), Outcome.FAILED, 1, "failed", "HTTP_503", False),
    ("timeout", RetryableError("timed out"), Outcome.FAILED, 1, "failed", "UNAVAILABLE", False),
    ("401", AuthError("refused", status=401, code="INVALID_API_KEY"), Outcome.PAUSED, 0, "pending", None, True),
    ("402", InsufficientCredits("no credits", code="INSUFFICIENT_CREDITS"), Outcome.PAUSED, 0, "pending", None, True),
    (
        "400",
        RejectedError("bad", status=400, code="VALIDATION_FAILED", details=(("title", "required"),)),
        Outcome.FAILED,
        1,
        "failed",
        "VALIDATION_FAILED",
        False,
    ),
    ("2xx-garbage", PermanentError("not a CatalogProduct"), Outcome.FAILED, 1, "failed", "INVALID_RESPONSE", False),
    ("stale-payload", _validation_error(), Outcome.FAILED, 1, "failed", "INVALID_PAYLOAD", False),
    ("bug", RuntimeError("boom"), Outcome.FAILED, 1, "failed", "INTERNAL_ERROR", False),
]


@pytest.fixture
def one_row(database_url: str) -> Iterator[Store]:
    store = Store.from_url(database_url)
    store.write_desired([_row()])
    yield store
    store.close()


@pytest.mark.parametrize(
    ("error", "outcome", "attempts", "status", "code", "paused"),
    [case[1:] for case in TABLE],
    ids=[c[0] for c in TABLE],
)
def test_each_exception_does_what_the_table_says(
    one_row: Store,
    error: BaseException,
    outcome: Outcome,
    attempts: int,
    status: str,
    code: str | None,
    paused: bool,
) -> None:
    # Given a product whose push meets `error`, and one attempt allowed before `failed`
    catalog: Any = RaisingCatalog(error)

    # When it is pushed
    result = push(one_row, catalog, SOURCE, "1", settings=PushSettings(max_attempts=1))

    # Then the outcome, the attempts counted, the status and the recorded reason are the table's
    row = one_row.get(SOURCE, "1")
    assert row is not None
    assert (result, row.attempts, row.status, row.last_error_code) == (outcome, attempts, status, code)
    assert (one_row.source_pause(SOURCE) is not None) is paused
    assert row.lease_token is None, "the lease is always given back"
    if status == "pending":
        assert row.next_attempt_at is not None or paused, "a row that is not failed comes back when it is due"


def test_the_table_has_a_row_for_anything_but_an_interrupt() -> None:
    assert action_for(ValueError("x")) is not None
    assert action_for(KeyboardInterrupt()) is None
    assert ACTIONS[-1][0] is Exception


def test_a_rejection_keeps_the_vendors_detail_paths_in_the_message(one_row: Store) -> None:
    body = {
        "code": "VALIDATION_FAILED",
        "message": "Validation failed",
        "status": 400,
        "details": [{"path": "images[0].source.url", "message": "must be an absolute http(s) URL."}],
    }
    answer = httpx.Response(400, json=body, request=httpx.Request("POST", "https://api.test/tryon/v1/products"))
    catalog: Any = RaisingCatalog(error_for_response(answer))

    push(one_row, catalog, SOURCE, "1")

    row = one_row.get(SOURCE, "1")
    assert row is not None and (row.status, row.last_error_code) == ("failed", "VALIDATION_FAILED")
    assert "images[0].source.url: must be an absolute http(s) URL." in (row.last_error_message or "")


# ---------------------------------------------------------------------------------------------- the two holes


def _garbage_catalog() -> Starlette:
    async def products(request: Request) -> PlainTextResponse:
        return PlainTextResponse("<html>maintenance</html>", status_code=200)

    return Starlette(routes=[Route("/tryon/v1/products", products, methods=["POST"])])


def test_a_2xx_answer_that_cannot_be_parsed_fails_after_the_usual_attempts(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'state.db'}")
    from worker import schema

    schema.upgrade(store.engine)
    store.write_desired([_row()])
    settings = PushSettings(max_attempts=3)
    with running(_garbage_catalog()) as server, CatalogClient(server.url + "/tryon/v1", "k", max_attempts=1) as catalog:
        outcomes = [push(store, catalog, SOURCE, "1", settings=settings, force=True) for _ in range(3)]
    row = store.get(SOURCE, "1")
    store.close()

    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.FAILED]
    assert row is not None and (row.status, row.attempts, row.last_error_code) == ("failed", 3, "INVALID_RESPONSE")
    assert "CatalogProduct" in (row.last_error_message or "")


def test_a_stored_payload_that_no_longer_validates_fails_with_a_reason_and_no_call(world_one: SyncWorld) -> None:
    store = world_one.runtime.store
    bad = {"externalId": "1", "images": [{"source": {"url": "ftp://cdn.example/a.jpg"}}]}
    store.write_desired([DesiredRow(SOURCE, "1", "1", bad, "h-bad", utcnow(), None)], force=True)
    world_one.reset_stats()

    outcome = push(store, world_one.runtime.catalog(), SOURCE, "1", settings=PushSettings(max_attempts=1), force=True)

    row = store.get(SOURCE, "1")
    assert outcome is Outcome.FAILED
    assert row is not None and row.last_error_code == "INVALID_PAYLOAD"
    assert "images[0].source.url" in (row.last_error_message or "")
    assert world_one.stats()["total_requests"] == 0


def test_our_own_redis_being_down_never_counts_against_a_product(world_one: SyncWorld) -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    settings = world_one.runtime.settings
    catalog = CatalogClient(
        settings.catalog_url,
        settings.catalog_api_key or "",
        max_attempts=1,
        limiter=RedisLimiter(dead, key="t", rate=10, burst=1),
    )
    store = world_one.runtime.store

    outcomes = [push(store, catalog, SOURCE, "1", settings=PushSettings(max_attempts=2), force=True) for _ in range(5)]
    catalog.close()

    row = store.get(SOURCE, "1")
    assert outcomes == [Outcome.RETRY] * 5
    assert row is not None and (row.status, row.attempts) == ("pending", 0)
    assert world_one.stats()["upserts"] == 0


@pytest.fixture
def world_one(tmp_path: Path) -> Iterator[SyncWorld]:
    """A world whose feed holds product 1, planned (not pushed)."""

    class _Hold:
        def push(self, source: str, product_ids: object, *, priority: bool = False, force: bool = False) -> bool:
            return True

    with sync_world(tmp_path) as world:
        write_feed(world.feed, [feed_item("1")])
        run_sync(world.runtime, SOURCE, "full", _Hold())
        yield world
