"""Redis databases of this test run's own, so two runs on one machine never consume each other's messages.

Tests that put Celery messages in Redis need a database they may flush. Which ones is one setting,
`CATALOG_SYNC_TEST_REDIS_DBS` (for example `12,14`); without it the run claims two free databases among 1..15 with a
`SET NX` key in database 0 that expires on its own if the run dies, and releases them at exit.
"""

from __future__ import annotations

import atexit
import functools
import os
import socket

import pytest
import redis

CLAIM_PREFIX = "catalog-sync:test-claim:"
# Longer than any test run; a run killed with -9 frees its databases after this.
CLAIM_SECONDS = 4 * 3600
CANDIDATES = range(1, 16)
ROLES = ("e2e", "webhooks")


def _server_url() -> str:
    from tests.conftest import REDIS_URL

    return REDIS_URL.rsplit("/", 1)[0]


@functools.cache
def _claimed() -> dict[str, int]:
    configured = os.environ.get("CATALOG_SYNC_TEST_REDIS_DBS", "").strip()
    if configured:
        numbers = [int(part) for part in configured.split(",") if part.strip()]
        if len(numbers) < len(ROLES):
            pytest.fail(f"CATALOG_SYNC_TEST_REDIS_DBS needs {len(ROLES)} database numbers, got {configured!r}")
        return dict(zip(ROLES, numbers, strict=False))
    client = redis.Redis.from_url(f"{_server_url()}/0", socket_connect_timeout=2)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    claimed: list[int] = []
    try:
        for number in CANDIDATES:
            if client.set(f"{CLAIM_PREFIX}{number}", owner, nx=True, ex=CLAIM_SECONDS):
                claimed.append(number)
                if len(claimed) == len(ROLES):
                    break
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {_server_url()} and did not answer: {exc}", pytrace=False)
    if len(claimed) < len(ROLES):
        _release(client, claimed, owner)
        pytest.fail(
            "no free Redis database for this test run (others hold catalog-sync:test-claim:* keys in db 0); "
            "set CATALOG_SYNC_TEST_REDIS_DBS=N,M to choose",
            pytrace=False,
        )
    atexit.register(_release, client, claimed, owner)
    return dict(zip(ROLES, claimed, strict=True))


def _release(client: redis.Redis, numbers: list[int], owner: str) -> None:
    for number in numbers:
        key = f"{CLAIM_PREFIX}{number}"
        try:
            if client.get(key) == owner.encode():
                client.delete(key)
        except redis.RedisError:
            pass


def db_for(role: str) -> int:
    """This run's Redis database number for `role` (`e2e` or `webhooks`)."""
    return _claimed()[role]
