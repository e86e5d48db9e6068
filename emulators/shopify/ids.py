"""Shopify's identifiers and times as the emulator writes and reads them: global ids (`gid://shopify/Product/1`),
GraphQL and REST date-times, and the opaque page cursors."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone

# The REST APIs print times in the shop's zone, like the EST shops in Shopify's documentation fixtures.
SHOP_TIMEZONE = timezone(timedelta(hours=-5))


def gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


_GID = re.compile(r"^gid://shopify/(\w+)/(\d+)$")


def parse_gid(value: str) -> tuple[str, int] | None:
    match = _GID.match(value.strip())
    return (match.group(1), int(match.group(2))) if match else None


def graphql_time(epoch: int | None) -> str | None:
    """Admin GraphQL `DateTime`: UTC with a `Z`, whole seconds."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rest_time(epoch: int | None) -> str | None:
    """REST time: ISO 8601 in the shop's zone with its offset (`2024-04-02T08:59:11-05:00`)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, SHOP_TIMEZONE).isoformat()


def parse_time(text: str) -> int:
    """Epoch seconds from an ISO date or date-time (a bare date or time without zone is UTC). Raises ValueError."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def encode_cursor(key: tuple[int, int]) -> str:
    """An opaque page cursor; Shopify's are base64 JSON too (`{"last_id": …, "last_value": …}`)."""
    raw = json.dumps({"last_id": key[1], "last_value": key[0]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, int]:
    """Raises ValueError for anything this emulator did not hand out."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        value, last_id = data["last_value"], data["last_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if not isinstance(value, int) or not isinstance(last_id, int):
        raise ValueError(f"invalid cursor {cursor!r}")
    return value, last_id
