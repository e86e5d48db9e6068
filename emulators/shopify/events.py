"""The shop's event log, the subset a sync reads: one `destroy` event per deleted product (`BasicEvent` with
`subjectType: PRODUCT`), served by the `events` connection with Shopify's search syntax
(`subject_type:PRODUCT AND action:destroy AND created_at:>='…'`) and cursor paging.

Shopify keeps events for a year and writes them for many subjects and actions; the emulator writes only what its
control API and REST deletes cause, which is all a connector reading deletions can observe.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from emulators.shopify.ids import parse_time
from emulators.shopify.search import SearchQueryError
from emulators.shopify.views import register

# Event ids are large and sparse like Shopify's, and apart from the product, media and variant id ranges.
EVENT_ID_BASE = 9_100_000_000_000
# Fields of the events search the emulator filters on; others are refused rather than silently ignored.
_SEARCH_FIELDS = frozenset({"subject_type", "action", "created_at", "id"})
_TERM = re.compile(r"""(\w+):(>=|<=|>|<)?('[^']*'|"[^"]*"|\S+)|(\S+)""")


@dataclass(frozen=True, slots=True)
class Event:
    """A `BasicEvent`: `id` and `subject_id` are numbers (the API writes them as global ids), times epoch seconds."""

    id: int
    subject_id: int
    subject_type: str
    action: str
    created_at: int
    message: str
    app_title: str | None = None
    attribute_to_app: bool = False
    attribute_to_user: bool = True
    critical_alert: bool = False


@dataclass(frozen=True, slots=True)
class _Term:
    field: str
    op: str
    value: str | int


@dataclass(slots=True)
class EventFilter:
    """A parsed events `query:`: AND-ed terms (the emulator does not implement OR for events)."""

    terms: list[_Term] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> EventFilter:
        result = cls()
        for match in _TERM.finditer(text or ""):
            name, op, raw, bare = match.groups()
            if bare is not None:
                if bare.upper() == "AND":
                    continue
                raise SearchQueryError(f"events search takes field:value terms joined by AND, not {bare!r}")
            if name not in _SEARCH_FIELDS:
                raise SearchQueryError(f"unknown events search field {name!r}; use {sorted(_SEARCH_FIELDS)}")
            value = raw[1:-1] if raw[:1] in "'\"" and len(raw) >= 2 else raw
            if name == "created_at":
                try:
                    result.terms.append(_Term(name, op or "=", parse_time(value)))
                except ValueError as exc:
                    raise SearchQueryError(f"created_at {value!r} is not a date") from exc
            elif name == "id":
                if not value.isdigit():
                    raise SearchQueryError(f"id {value!r} is not a number")
                result.terms.append(_Term(name, op or "=", int(value)))
            else:
                result.terms.append(_Term(name, "=", value.lower()))
        return result

    def matches(self, event: Event) -> bool:
        return all(_term_matches(term, event) for term in self.terms)


def _term_matches(term: _Term, event: Event) -> bool:
    if term.field == "subject_type":
        return event.subject_type.lower() == term.value
    if term.field == "action":
        return event.action.lower() == term.value
    left = event.created_at if term.field == "created_at" else event.id
    assert isinstance(term.value, int)
    right = term.value
    return {
        "=": left == right,
        ">": left > right,
        ">=": left >= right,
        "<": left < right,
        "<=": left <= right,
    }[term.op]


class EventLog:
    """Events in the order they happened; ids grow with time, so id order is creation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __len__(self) -> int:
        return len(self._events)

    def product_destroyed(self, product_id: int, title: str, *, now: int) -> Event:
        with self._lock:
            event = Event(
                id=EVENT_ID_BASE + len(self._events) + 1,
                subject_id=product_id,
                subject_type="PRODUCT",
                action="destroy",
                created_at=now,
                message=f"Product was deleted: <b>{title}</b>.",
            )
            self._events.append(event)
            return event

    def matching(self, event_filter: EventFilter, *, sort: str) -> list[Event]:
        """The events the filter matches, by creation time (`CREATED_AT`) or id (any other sort key)."""
        with self._lock:
            found = [event for event in self._events if event_filter.matches(event)]
        found.sort(key=(lambda e: (e.created_at, e.id)) if sort == "CREATED_AT" else (lambda e: (e.id, e.id)))
        return found


register("BasicEvent", Event)
