"""Connection URLs as settings: the shapes accepted (with the fix for any other), and a driver's message scrubbed of
the password of the URL it was given. Showing a URL itself is `config.redact.redact_url`'s job.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from config.redact import MASK

# State database schemes, and what each becomes: `postgres://` is what Heroku, Render and most guides print.
DATABASE_SCHEMES = {
    "sqlite": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
# Celery brokers that kombu ships a transport for without extra packages we do not install.
BROKER_SCHEMES = frozenset({"redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory"})


def redact(text: str, url: str) -> str:
    """`text` (a driver's error message, say) without the password of `url` in it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, MASK) if password else text


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def normalize_database_url(url: str) -> str:
    """The SQLAlchemy URL for a state database URL; `ValueError` naming the fix for anything else."""
    scheme = _require_scheme(
        url,
        DATABASE_SCHEMES,
        "state database",
        "sqlite:///path/to/state.db (one host) or postgresql://user@host:5432/dbname (PostgreSQL, production)",
    )
    return DATABASE_SCHEMES[scheme] + url[len(scheme) :]


def check_broker_url(url: str) -> str:
    _require_scheme(url, BROKER_SCHEMES, "broker", "redis://host:6379/0 or amqp://user@host:5672//")
    return url


def _require_scheme(url: str, allowed: Collection[str], what: str, example: str) -> str:
    scheme = scheme_of(url)
    if scheme not in allowed:
        shown = repr(scheme) if scheme else "no scheme"
        raise ValueError(f"{shown} is not a supported {what}; use {example}")
    return scheme
