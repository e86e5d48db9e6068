"""The catalog's global rate limit: one budget shared by every worker process on every host.

Why not Celery's `rate_limit`: it is enforced per worker instance (each prefork child keeps its own token bucket),
so N processes on M hosts send N x M times the configured rate. The catalog's limit is per API key, hence global.

`RedisLimiter` keeps the budget in Redis as a GCRA (generic cell rate algorithm): a single "theoretical arrival
time" (TAT) per key, advanced by one emission interval (1/rate) for every request allowed. A request is allowed
when the TAT it would leave behind is at most `burst` intervals ahead of now; otherwise the answer is how long to
wait, and nothing is consumed, so a caller that gives up costs the others nothing. The check, the shared 429
cool-down and the update happen in ONE Lua script, which Redis runs atomically: one round trip tells the caller
whether it may send, and no two processes can take the same slot.

Why the Redis server's clock (`TIME` inside the script): every host reads the same clock, so workers whose own
clocks are skewed by seconds still agree on the schedule; only one clock has to be right. A server clock stepped
backwards (NTP) costs at most one interval, because the script never lets the stored TAT run further ahead of the
server's now than a full burst.

Priority: webhooks and admin single-product pushes must not wait behind a full sync's bulk pushes. Two rules,
both inside the same script: `reserve` slots of the burst are kept for priority callers (a bulk caller is refused
when it would leave fewer than `reserve` slots free), so a webhook arriving while bulk work saturates the budget
finds a slot at once; and a priority caller that must wait anyway marks `<key>:priority` for the length of its wait,
during which bulk callers are refused, so a flood of webhooks is served before bulk work resumes.

The cool-down (`<key>:cooldown`, the server-time epoch millisecond until which everyone pauses) is set when the
catalog answers 429 with `Retry-After`; it only ever moves later, and expires on its own.

`LocalLimiter` is the in-process twin (same algorithm and answers, a lock instead of Redis) for the embedded mode
and tests. `build_limiter(settings)` picks one. We write this ourselves rather than add a dependency: the script is
twenty lines, and the available libraries either count per process or lack a shared cool-down.

Keys: for Redis Cluster, put the key in a hash tag (`"{catalog-sync}:ratelimit"`) so the budget and cool-down keys
share a slot; the script touches both.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.accounts import DEFAULT_ACCOUNT, Account, resolve_accounts
from config.rates import format_rate
from ground.errors import ConfigError, InfrastructureError, RateLimited

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

# The budget key shared by every process that talks to the default account's catalog.
DEFAULT_KEY = "catalog-sync:ratelimit:catalog"
# Budget keys of the accounts named in the sources file: the prefix, then the account's name.
ACCOUNT_KEY_PREFIX = "catalog-sync:ratelimit:account:"
# Suffix of the shared 429 cool-down key.
COOLDOWN_SUFFIX = ":cooldown"
# Suffix of the marker a waiting priority caller sets: bulk callers step aside while it lives.
PRIORITY_SUFFIX = ":priority"
# Suffix of the hash counting requests allowed per minute of server time, for `status`.
GRANTS_SUFFIX = ":grants"
# Minutes of grant counts kept; older ones are dropped as new minutes are counted.
GRANTS_KEPT_MINUTES = 3
# How much longer than its own wait a priority caller's marker lives: it must outlast the caller's sleep and the round
# trip that follows, or a bulk caller could take the slot the priority caller was waiting for.
PRIORITY_MARK_MARGIN = 0.05
# A limiter round trip takes well under a millisecond; this much silence means Redis is gone and the caller reschedules.
REDIS_SOCKET_TIMEOUT = 2.0
# One immediate retry re-opens a pooled connection Redis closed (restart, idle timeout); more would stack on the
# caller's own retry loop (one retry loop per layer).
REDIS_RETRIES = 1
# A Retry-After beyond an hour is more likely a broken header than a plan; a longer pause would idle every worker.
MAX_COOL_DOWN = 3600.0
# Float sums of many intervals drift by femtoseconds; a slot that late is on time (Redis works in whole µs instead).
LOCAL_TOLERANCE = 1e-9
# About how long a finished bulk push takes to hand the next one on (state database, broker, a worker picking it up)
# on a busy host: an account's lead never covers less time than this, or its budget idles in between.
HAND_ON_SECONDS = 0.5
# URL schemes of a Celery broker that is itself a Redis the limiter can share.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class Grants:
    """Requests the limiter allowed: in the current minute (`seconds_into` it so far) and in the whole previous one."""

    current: int
    previous: int
    seconds_into: float


class Limiter(Protocol):
    """Paces catalog calls across every worker process and host.

    `acquire(max_wait)` blocks until one request may be sent (the steady budget and any shared cool-down);
    when that would take longer than `max_wait` seconds it raises `RateLimited(retry_after=...)` instead, so the
    caller can reschedule rather than hold a worker. `priority=True` (webhooks, admin commands) may take the
    reserved slots and makes bulk callers wait while it waits. `cool_down(seconds)` is called when the API answered
    429: every process pauses for that long.
    """

    def acquire(self, max_wait: float | None = None, *, priority: bool = False) -> None: ...

    def cool_down(self, seconds: float) -> None: ...

    def grants(self) -> Grants: ...


# KEYS[1]: the TAT, server microseconds. KEYS[2]: the cool-down end, server epoch milliseconds. KEYS[3]: the
# priority marker. KEYS[4]: the grants per minute (a hash: minute number -> requests allowed).
# ARGV[1]: emission interval (1/rate) in microseconds. ARGV[2]: burst. ARGV[3]: slots of the burst
# reserved for priority callers. ARGV[4]: 1 for a priority caller. ARGV[5]: margin of the priority marker, in ms.
# ARGV[6]: minutes of grant counts kept.
# Returns {0, 0} when allowed (one slot consumed), else {wait in microseconds, 1 if the wait is the cool-down}.
_ACQUIRE_LUA = """
-- Redis < 5 replicates scripts verbatim, which forbids writes after TIME; since 5 this is a no-op.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cooldown = tonumber(redis.call('GET', KEYS[2]))
if cooldown and cooldown * 1000 > now then
  return {math.ceil(cooldown * 1000 - now), 1}
end
local priority = ARGV[4] == '1'
if not priority then
  local marked = redis.call('PTTL', KEYS[3])
  if marked > 0 then
    return {marked * 1000, 0}
  end
end
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
-- A server clock stepped back, or a burst lowered since the TAT was written, must not stall everyone.
if tat > now + window then tat = now + window end
local new_tat = tat + interval
local limit = window
if not priority then limit = window - tonumber(ARGV[3]) * interval end
local wait = new_tat - limit - now
if wait > 0 then
  if priority then
    redis.call('SET', KEYS[3], '1', 'PX', math.ceil(wait / 1000) + tonumber(ARGV[5]))
  end
  return {math.ceil(wait), 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
local minute = math.floor(now / 60000000)
local kept = tonumber(ARGV[6])
if redis.call('HINCRBY', KEYS[4], minute, 1) == 1 then
  -- A new minute: drop the counts too old to show (a few fields, so reading them all is cheap).
  for _, field in ipairs(redis.call('HKEYS', KEYS[4])) do
    if tonumber(field) <= minute - kept then redis.call('HDEL', KEYS[4], field) end
  end
end
redis.call('EXPIRE', KEYS[4], 60 * (kept + 1))
return {0, 0}
"""

# KEYS[1]: the grants hash. Returns {server minute number, seconds into it, allowed this minute, allowed last minute}.
_GRANTS_LUA = """
local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
local current = tonumber(redis.call('HGET', KEYS[1], minute)) or 0
local previous = tonumber(redis.call('HGET', KEYS[1], minute - 1)) or 0
return {minute, tonumber(t[1]) % 60, current, previous}
"""

# KEYS[1]: the cool-down key, KEYS[2]: the budget (TAT) key. ARGV[1]: the pause in milliseconds (>= 1), ARGV[2]:
# the emission interval in microseconds, ARGV[3]: the burst.
# Sets the end to max(existing, now + pause) with a TTL to match; returns the remaining pause in milliseconds.
# It also moves the budget's TAT so that, when the pause ends, requests resume one interval apart instead of as a
# burst banked during the pause: that burst would find the API's bucket empty and earn the next 429 at once.
_COOL_DOWN_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_ms = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2])) / 1000)
local pause = tonumber(ARGV[1])
local existing = tonumber(redis.call('GET', KEYS[1]))
if existing and existing >= now_ms + pause then
  return existing - now_ms
end
local end_ms = now_ms + pause
redis.call('SET', KEYS[1], string.format('%.0f', end_ms), 'PX', pause)
local interval = tonumber(ARGV[2])
local resume_tat = end_ms * 1000 + (tonumber(ARGV[3]) - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[2]))
if not tat or tat < resume_tat then
  local ttl = pause + math.ceil(tonumber(ARGV[3]) * interval / 1000)
  redis.call('SET', KEYS[2], string.format('%.0f', resume_tat), 'PX', ttl)
end
return pause
"""

# KEYS[1]: the cool-down key. Returns the remaining pause in microseconds of server time (0 when none).
_COOLDOWN_REMAINING_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cooldown = tonumber(redis.call('GET', KEYS[1]))
if cooldown and cooldown * 1000 > now then
  return math.ceil(cooldown * 1000 - now)
end
return 0
"""


class RedisLimiter:
    """The global limiter: a GCRA budget and a shared cool-down in Redis, checked by one atomic script.

        `redis` should have socket timeouts (as `build_limiter` sets): a Redis that stops answering then surfaces as
        `InfrastructureError` instead of a hung worker. Every Redis failure is raised as `InfrastructureError` (a
    `RetryableError` that no product is blamed for).
    """

    def __init__(
        self,
        redis: redis.Redis,
        *,
        key: str = DEFAULT_KEY,
        rate: float,
        burst: int,
        reserve: int = 0,
        sleep: Sleep = time.sleep,
    ) -> None:
        _check_budget(rate, burst, reserve)
        if not key:
            raise ValueError("the rate limit key must be a non-empty string")
        self.key = key
        self.cooldown_key = key + COOLDOWN_SUFFIX
        self.priority_key = key + PRIORITY_SUFFIX
        self.grants_key = key + GRANTS_SUFFIX
        self.rate = float(rate)
        self.burst = burst
        self.reserve = reserve
        self._redis = redis
        self._sleep = sleep
        self._interval_us = 1_000_000.0 / self.rate
        self._acquire_script = redis.register_script(_ACQUIRE_LUA)
        self._cool_down_script = redis.register_script(_COOL_DOWN_LUA)
        self._remaining_script = redis.register_script(_COOLDOWN_REMAINING_LUA)
        self._grants_script = redis.register_script(_GRANTS_LUA)

    def __repr__(self) -> str:
        return (
            f"RedisLimiter(key={self.key!r}, rate={self.rate}, burst={self.burst}, reserve={self.reserve}, "
            f"redis={self._where()})"
        )

    def try_acquire(self, *, priority: bool = False) -> float:
        """Take one slot if one is free now: 0.0 when allowed, else the seconds to wait (nothing is consumed)."""
        return self._check(priority)[0]

    def acquire(self, max_wait: float | None = None, *, priority: bool = False) -> None:
        _acquire(lambda: self._check(priority), self._sleep, max_wait)

    def cool_down(self, seconds: float) -> None:
        """Pause every process on this key for `seconds` (never shortens a pause already set)."""
        pause_ms = _cool_down_ms(seconds)
        if pause_ms == 0:
            return
        remaining_ms = self._call(
            self._cool_down_script,
            [self.cooldown_key, self.key],
            [pause_ms, repr(self._interval_us), self.burst],
            "set the cool-down",
        )
        log.warning("catalog cool-down on %s: every worker pauses %.3f s", self.key, int(remaining_ms) / 1000)

    def cooldown_remaining(self) -> float:
        """Seconds of shared cool-down left, by the Redis server's clock (0.0 when none)."""
        remaining_us = self._call(self._remaining_script, [self.cooldown_key], [], "read the cool-down")
        return int(remaining_us) / 1_000_000

    def grants(self) -> Grants:
        """Requests allowed in the current and the previous minute, by every process on this key."""
        _, into, current, previous = self._call(self._grants_script, [self.grants_key], [], "read the grants")
        return Grants(int(current), int(previous), float(into))

    def _check(self, priority: bool) -> tuple[float, bool]:
        answer = self._call(
            self._acquire_script,
            [self.key, self.cooldown_key, self.priority_key, self.grants_key],
            [
                repr(self._interval_us),
                self.burst,
                self.reserve,
                1 if priority else 0,
                math.ceil(PRIORITY_MARK_MARGIN * 1000),
                GRANTS_KEPT_MINUTES,
            ],
            "check the budget",
        )
        wait_us, cooling = answer
        return int(wait_us) / 1_000_000, bool(cooling)

    def _call(self, script: redis.commands.core.Script, keys: list[str], args: list[Any], what: str) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            # redis-py messages name host and port, never the password; ours does the same.
            raise InfrastructureError(
                f"rate limiter: cannot {what} in Redis at {self._where()}: {type(exc).__name__}: {exc}",
                status=None,
            ) from None

    def _where(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix:{kwargs['path']} db {kwargs.get('db', 0)}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')} db {kwargs.get('db', 0)}"


class LocalLimiter:
    """The in-process twin of `RedisLimiter`: the same GCRA and cool-down on a local clock, guarded by a lock.

    Shared by the threads of one process only; for the embedded mode (one process) and tests (a fake clock).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        reserve: int = 0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        _check_budget(rate, burst, reserve)
        self.rate = float(rate)
        self.burst = burst
        self.reserve = reserve
        self._clock = clock
        self._sleep = sleep
        self._interval = 1.0 / self.rate
        self._window = self.burst * self._interval
        self._tat = -math.inf
        self._cooldown_until = -math.inf
        self._priority_until = -math.inf
        self._grants: dict[int, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalLimiter(rate={self.rate}, burst={self.burst}, reserve={self.reserve})"

    def try_acquire(self, *, priority: bool = False) -> float:
        """Take one slot if one is free now: 0.0 when allowed, else the seconds to wait (nothing is consumed)."""
        return self._check(priority)[0]

    def acquire(self, max_wait: float | None = None, *, priority: bool = False) -> None:
        _acquire(lambda: self._check(priority), self._sleep, max_wait)

    def cool_down(self, seconds: float) -> None:
        """Pause every thread of this process for `seconds` (never shortens a pause already set)."""
        pause_ms = _cool_down_ms(seconds)
        if pause_ms == 0:
            return
        with self._lock:
            now = self._clock()
            self._cooldown_until = max(self._cooldown_until, now + pause_ms / 1000)
            # Resume one interval apart when the pause ends, not with a burst banked during it (see _COOL_DOWN_LUA).
            self._tat = max(self._tat, self._cooldown_until + self._window - self._interval)
            remaining = self._cooldown_until - now
        log.warning("catalog cool-down: every worker thread pauses %.3f s", remaining)

    def cooldown_remaining(self) -> float:
        """Seconds of cool-down left (0.0 when none)."""
        with self._lock:
            return max(0.0, self._cooldown_until - self._clock())

    def grants(self) -> Grants:
        """Requests allowed in the current and the previous minute of this process's clock."""
        with self._lock:
            now = self._clock()
            minute = math.floor(now / 60)
            return Grants(self._grants.get(minute, 0), self._grants.get(minute - 1, 0), now - minute * 60)

    def _check(self, priority: bool) -> tuple[float, bool]:
        with self._lock:
            now = self._clock()
            if self._cooldown_until > now:
                return self._cooldown_until - now, True
            if not priority and self._priority_until > now:
                return self._priority_until - now, False
            # Same arithmetic as the Lua script, including the clamp that keeps a lowered burst from stalling.
            tat = min(max(self._tat, now), now + self._window)
            new_tat = tat + self._interval
            limit = self._window if priority else self._window - self.reserve * self._interval
            wait = new_tat - limit - now
            if wait > LOCAL_TOLERANCE:
                if priority:
                    self._priority_until = max(self._priority_until, now + wait + PRIORITY_MARK_MARGIN)
                return wait, False
            self._tat = new_tat
            minute = math.floor(now / 60)
            if minute not in self._grants:
                for old in [m for m in self._grants if m <= minute - GRANTS_KEPT_MINUTES]:
                    del self._grants[old]
            self._grants[minute] = self._grants.get(minute, 0) + 1
            return 0.0, False


def build_limiter(
    settings: Settings, *, embedded: bool = False, key: str = DEFAULT_KEY, account: Account | None = None
) -> Limiter:
    """The limiter for this process: `LocalLimiter` in the embedded mode, otherwise `RedisLimiter` on
    `settings.redis_url`, or on the broker when the broker is Redis. Paced for `account` (its limit, burst and
    reserve, under its own key) or for the default account of the settings.

    A non-Redis broker without `CATALOG_SYNC_REDIS_URL` is a `ConfigError`: a per-process budget would multiply the
    catalog's limit by the number of workers.
    """
    rate, burst, reserve = pacing(account or default_account(settings))
    if account is not None and account.name != DEFAULT_ACCOUNT:
        key = account_key(account.name)
    if embedded:
        return LocalLimiter(rate, burst, reserve=reserve)
    url = settings.redis_url
    if not url and settings.broker_url.startswith(REDIS_SCHEMES):
        url = settings.broker_url
    if not url:
        raise ConfigError(
            "the global catalog rate limit needs Redis: set CATALOG_SYNC_REDIS_URL (e.g. redis://host:6379/0), "
            "or use a redis:// CATALOG_SYNC_BROKER_URL, or run the embedded mode"
        )
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), REDIS_RETRIES),
        )
    except ValueError as exc:
        # The URL may carry a password: name the setting, not the value.
        raise ConfigError(f"CATALOG_SYNC_REDIS_URL / CATALOG_SYNC_BROKER_URL is not a Redis URL: {exc}") from None
    return RedisLimiter(client, key=key, rate=rate, burst=burst, reserve=reserve)


def account_key(name: str) -> str:
    """The budget key of a configured account: every process writing to it shares this one budget."""
    return f"{ACCOUNT_KEY_PREFIX}{name}"


def default_account(settings: Settings) -> Account:
    """The environment's account (`CATALOG_SYNC_CATALOG_*`)."""
    return resolve_accounts({}, settings)[DEFAULT_ACCOUNT]


def pacing(account: Account) -> tuple[float, int, int]:
    """(steady rate per second, burst, priority reserve) that never exceed the account's limit in any window.

    The catalog counts requests per window (a minute); a GCRA budget lets `burst` requests through at once and then
    `rate` per second, so in one window it may send `burst + rate x window`. Pacing at the limit minus the burst's
    share of a window keeps that at or under the limit, so saturation never earns a 429: at 100/minute with a burst
    of 2, 98 requests a minute.
    """
    limit, burst, reserve = account.rate_limit, account.burst, account.priority_reserve
    where = "CATALOG_SYNC_CATALOG_" if account.name == DEFAULT_ACCOUNT else f"account {account.name!r}: "
    steady = limit - burst / account.window
    if steady <= 0:
        raise ConfigError(
            f"{where}BURST={burst} uses up the whole {where}RATE_LIMIT ({format_rate(limit)}) within one "
            f"{account.window:g} s window: lower the burst"
        )
    if reserve >= burst:
        raise ConfigError(
            f"{where}PRIORITY_RESERVE={reserve} must be less than {where}BURST={burst}: bulk pushes need at least one "
            "slot of the burst"
        )
    return steady, burst, reserve


def bulk_lead(rate: float, lead_slots: int) -> int:
    """Budget slots an account's bulk pushes are handed ahead of: `lead_slots` (`push_lead_slots`), or as many as
    come within HAND_ON_SECONDS when the account is fast enough that a few slots pass quicker than a finished push
    hands the next one on."""
    return max(lead_slots, math.ceil(rate * HAND_ON_SECONDS))


def bulk_wait(account: Account, lead_slots: int) -> float:
    """Longest a bulk call waits for `account`'s budget: one slot interval more than the feeder hands pushes ahead
    (`bulk_lead`). Every push it handed then finds its slot inside the call, so the budget is never left idle by a
    push giving its slot back, and no worker slot sleeps longer than a few intervals on one account."""
    rate = pacing(account)[0]
    return (bulk_lead(rate, lead_slots) + 1) / rate


def _acquire(check: Callable[[], tuple[float, bool]], sleep: Sleep, max_wait: float | None) -> None:
    """The one waiting loop both limiters share: ask, and sleep the answer until allowed or past `max_wait`."""
    if max_wait is not None and not max_wait >= 0:
        raise ValueError(f"max_wait must be None or >= 0 seconds, got {max_wait!r}")
    waited = 0.0
    while True:
        wait, cooling = check()
        if wait <= 0:
            return
        if max_wait is not None and waited + wait > max_wait:
            reason = "the catalog asked every worker to pause (429 cool-down)" if cooling else "the budget is spent"
            # status=None: this is our own pacing, not a 429 from the API (so callers do not set a cool-down).
            raise RateLimited(
                f"catalog rate limit: {reason}; next slot in {wait:.3f} s, beyond max_wait {max_wait:g} s",
                retry_after=wait,
                status=None,
            )
        sleep(wait)
        waited += wait


def _check_budget(rate: float, burst: int, reserve: int = 0) -> None:
    if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
    if isinstance(reserve, bool) or not isinstance(reserve, int) or not 0 <= reserve < burst:
        raise ValueError(f"reserve must be an integer from 0 to burst - 1 ({burst - 1}), got {reserve!r}")


def _cool_down_ms(seconds: float) -> int:
    """A cool-down request as whole milliseconds, capped at MAX_COOL_DOWN; 0 means nothing to do."""
    if not (isinstance(seconds, int | float) and not math.isnan(seconds)) or seconds < 0:
        raise ValueError(f"cool-down must be a number of seconds >= 0, got {seconds!r}")
    if seconds > MAX_COOL_DOWN:
        log.warning("cool-down of %.0f s capped at %.0f s", seconds, MAX_COOL_DOWN)
        seconds = MAX_COOL_DOWN
    return math.ceil(seconds * 1000)
