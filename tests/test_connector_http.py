"""The connectors' HTTP base: one status → error table, one retry loop, one owner of the client.

Unit tests of single functions over `httpx.MockTransport`; the connectors' own tests drive the same code against
the emulators over sockets.
"""

from __future__ import annotations

import httpx
import pytest

from connectors.http import (
    MAX_ATTEMPTS,
    MAX_RETRY_AFTER,
    MAX_TOTAL_WAIT,
    HttpConnector,
    Target,
    error_class,
    error_for_status,
    send,
)
from ground.errors import AuthError, RateLimited, RetryableError, SourceError, SyncError

URL = "https://shop.example/admin/products.json?key=hidden"
WHAT = "source 'demo'"


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.Client, list[httpx.Request]]:
    """A client whose server answers `answers` in order; the test fails if it is asked more often."""
    remaining = list(answers)
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        assert remaining, f"request {len(asked)} was not scripted"
        answer = remaining.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.Client(transport=httpx.MockTransport(handler)), asked


STATUS_TABLE = [
    pytest.param(300, SourceError, id="300-unfollowed-redirect-fails-the-read"),
    pytest.param(302, SourceError, id="302-unfollowed-redirect-fails-the-read"),
    pytest.param(400, SourceError, id="400-bad-request-fails-the-read"),
    pytest.param(401, AuthError, id="401-credentials-refused"),
    pytest.param(403, AuthError, id="403-access-refused"),
    pytest.param(404, SourceError, id="404-not-found-fails-the-read"),
    pytest.param(408, SourceError, id="408-fails-the-read"),
    pytest.param(410, SourceError, id="410-gone-fails-the-read"),
    pytest.param(422, SourceError, id="422-fails-the-read"),
    pytest.param(429, RateLimited, id="429-rate-limited"),
    pytest.param(500, RetryableError, id="500-transient"),
    pytest.param(502, RetryableError, id="502-transient"),
    pytest.param(503, RetryableError, id="503-transient"),
    pytest.param(504, RetryableError, id="504-transient"),
    pytest.param(599, RetryableError, id="599-unlisted-5xx-transient"),
]


@pytest.mark.parametrize(("status", "expected"), STATUS_TABLE)
def test_each_status_maps_to_the_error_that_says_what_to_do(status: int, expected: type[SyncError]) -> None:
    # Given a status, when it is mapped, then the class is the table's and the built error is exactly that class.
    assert error_class(status) is expected
    error = error_for_status(status, Target(WHAT, where="https://shop.example/x"), excerpt="body", retry_after=3.0)
    assert type(error) is expected
    assert str(error).startswith(WHAT)


def test_a_refusal_names_the_status_and_the_fix() -> None:
    target = Target(WHAT, refused="the shop refused our credentials ({status}); check the token")
    error = error_for_status(403, target)
    assert isinstance(error, AuthError)
    assert error.status == 403
    assert str(error) == f"{WHAT}: the shop refused our credentials (403); check the token"


def test_transient_faults_are_retried_with_backoff_then_the_answer_is_returned() -> None:
    client, asked = scripted(
        httpx.ConnectError("refused"), httpx.Response(502), httpx.Response(503), httpx.Response(200, json=[])
    )
    sleeps: list[float] = []
    response = send(client, "GET", URL, what=WHAT, sleep=sleeps.append)
    assert response.status_code == 200
    assert len(asked) == 4
    # Full jitter: each wait is drawn from 0 up to the doubling window (0.5, 1, 2 seconds).
    assert len(sleeps) == 3
    assert all(0 <= wait <= window for wait, window in zip(sleeps, (0.5, 1.0, 2.0), strict=True))


def test_retry_after_is_honoured_in_seconds_or_as_an_http_date() -> None:
    client, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        httpx.Response(200),
    )
    sleeps: list[float] = []
    send(client, "GET", URL, what=WHAT, sleep=sleeps.append)
    # A date in the past means "now".
    assert sleeps == [7.0, 0.0]


def test_a_retry_after_above_the_cap_fails_at_once_as_rate_limited() -> None:
    client, asked = scripted(httpx.Response(429, headers={"Retry-After": str(MAX_RETRY_AFTER + 1)}))
    sleeps: list[float] = []
    with pytest.raises(RateLimited, match=r"answered 429 1 time\(s\); giving up") as caught:
        send(client, "GET", URL, what=WHAT, sleep=sleeps.append)
    assert caught.value.retry_after == MAX_RETRY_AFTER + 1
    assert sleeps == []
    assert len(asked) == 1


def test_attempts_are_bounded_and_the_give_up_names_the_status_not_the_query_string() -> None:
    client, asked = scripted(*[httpx.Response(500)] * MAX_ATTEMPTS)
    sleeps: list[float] = []
    with pytest.raises(SourceError) as caught:
        send(client, "GET", URL, what=WHAT, sleep=sleeps.append)
    assert str(caught.value) == (
        f"{WHAT}: https://shop.example/admin/products.json answered 500 {MAX_ATTEMPTS} time(s); giving up for this run"
    )
    assert isinstance(caught.value.__cause__, RetryableError)
    assert "hidden" not in str(caught.value)
    assert len(asked) == MAX_ATTEMPTS
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_the_total_wait_is_bounded_whatever_the_attempt_budget() -> None:
    # Given a shop that asks for the longest pause it may every time, when the waits would pass the total budget,
    # then the read stops before the wait that would cross it.
    longest = {"Retry-After": str(MAX_RETRY_AFTER)}
    client, asked = scripted(*[httpx.Response(429, headers=longest)] * 3)
    sleeps: list[float] = []
    with pytest.raises(RateLimited, match=r"answered 429 3 time\(s\)"):
        send(client, "GET", URL, what=WHAT, sleep=sleeps.append, max_attempts=10)
    assert sum(sleeps) <= MAX_TOTAL_WAIT
    assert sleeps == [MAX_RETRY_AFTER, MAX_RETRY_AFTER]
    assert len(asked) == 3


def test_an_unreachable_shop_fails_the_read_after_the_attempts() -> None:
    client, asked = scripted(*[httpx.ConnectError("refused")] * MAX_ATTEMPTS)
    with pytest.raises(SourceError, match=r"cannot reach https://shop.example/admin/products.json: ConnectError"):
        send(client, "GET", URL, what=WHAT, sleep=lambda _: None)
    assert len(asked) == MAX_ATTEMPTS


@pytest.mark.parametrize("status", [401, 404], ids=["401-refusal", "404-not-asked-to-accept"])
def test_permanent_answers_are_not_retried(status: int) -> None:
    client, asked = scripted(httpx.Response(status, text="nope"))
    with pytest.raises((AuthError, SourceError)):
        send(client, "GET", URL, what=WHAT, sleep=lambda _: pytest.fail("slept before a permanent error"))
    assert len(asked) == 1


def test_statuses_the_caller_accepts_are_returned_not_raised() -> None:
    client, asked = scripted(httpx.Response(404))
    assert send(client, "GET", URL, what=WHAT, ok_statuses=(404,)).status_code == 404
    assert len(asked) == 1


class _Probe(HttpConnector):
    def fetch(self) -> int:
        return self._client.get("https://shop.example/").status_code


def test_a_given_client_stays_open_after_the_connector_closes() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204)))
    with _Probe(client, timeout=5.0) as probe:
        assert probe.fetch() == 204
    assert not client.is_closed


def test_a_connector_makes_its_own_client_on_first_use_and_closes_it() -> None:
    probe = _Probe(None, timeout=5.0)
    # Nothing is opened until a request needs it.
    assert probe._open_client is None
    made = probe._client
    assert made.timeout == httpx.Timeout(5.0)
    probe.close()
    assert made.is_closed
    assert probe._open_client is None
