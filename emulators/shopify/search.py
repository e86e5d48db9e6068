"""Shopify's search syntax (https://shopify.dev/docs/api/usage/search-syntax), the subset the emulator understands:
`updated_at:>'…' status:active -tag:sale OR vendor:acme`, parsed into OR-groups of AND-ed terms."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from emulators.shopify.ids import parse_gid, parse_time
from emulators.shopify.products import STATUSES, Product


class SearchQueryError(ValueError):
    """A `query:` argument the emulator cannot understand (bad date, bad number, unbalanced quotes)."""


_DATE_FIELDS = {"updated_at", "created_at", "published_at"}
_TEXT_FIELDS = {"vendor", "product_type", "handle", "title", "tag"}
_SEARCH_TOKEN = re.compile(r"""(-?)(?:(\w+):(>=|<=|>|<)?)?('[^']*'|"[^"]*"|[^\s'"]+)|(\S)""")


@dataclass(frozen=True, slots=True)
class _Term:
    field: str
    op: str  # "=", ">", ">=", "<", "<="
    value: str | int | frozenset[str]
    negated: bool = False


@dataclass(slots=True)
class ProductFilter:
    """A parsed `query:` string: OR-groups of AND-ed terms, plus warnings for terms Shopify would ignore."""

    groups: list[list[_Term]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    text: str = ""

    @classmethod
    def parse(cls, text: str | None) -> ProductFilter:
        result = cls(text=text or "")
        if not text or not text.strip():
            return result
        group: list[_Term] = []
        for match in _SEARCH_TOKEN.finditer(text):
            negated, name, op, raw, stray = match.groups()
            if stray is not None:
                raise SearchQueryError(f"unbalanced quote in query {text!r}")
            value = raw[1:-1] if raw[:1] in "'\"" and len(raw) >= 2 else raw
            if name is None:
                upper = value.upper()
                if upper == "OR" and not negated:
                    if group:
                        result.groups.append(group)
                    group = []
                    continue
                if upper in {"AND", "NOT"} and not negated:
                    continue
                group.append(_Term("title", "~", value.lower(), bool(negated)))
                continue
            term = result._term(name.lower(), op or "=", value, bool(negated))
            if term is not None:
                group.append(term)
        if group:
            result.groups.append(group)
        return result

    def _term(self, name: str, op: str, value: str, negated: bool) -> _Term | None:
        if name in _DATE_FIELDS:
            try:
                return _Term(name, op, parse_time(value), negated)
            except ValueError as exc:
                raise SearchQueryError(f"{name}: {value!r} is not an ISO 8601 date or date-time") from exc
        if name == "id":
            parsed = parse_gid(value)
            try:
                number = parsed[1] if parsed is not None else int(value)
            except ValueError as exc:
                raise SearchQueryError(f"id: {value!r} is not a product id") from exc
            return _Term(name, op, number, negated)
        if name == "status":
            wanted = frozenset(part.strip().upper() for part in value.split(",") if part.strip())
            unknown = wanted - set(STATUSES)
            if unknown:
                self.warnings.append({"field": "status", "message": f"Invalid value: {sorted(unknown)}."})
            return _Term(name, "=", wanted, negated)
        if name in _TEXT_FIELDS:
            return _Term(name, "=", value.lower(), negated)
        # Shopify ignores a filter it does not know and says so in `extensions.search`.
        self.warnings.append({"field": name, "message": "Invalid search field for this query."})
        return None

    @property
    def empty(self) -> bool:
        return not self.groups

    def needs_full_record(self) -> bool:
        return any(term.field in _TEXT_FIELDS or term.op == "~" for group in self.groups for term in group)

    def bounds(self, name: str) -> tuple[int | None, int | None]:
        """Inclusive [low, high] implied for `name` by a single AND group (None: unbounded), to narrow scans."""
        if len(self.groups) != 1:
            return None, None
        low: int | None = None
        high: int | None = None
        for term in self.groups[0]:
            if term.field != name or term.negated or not isinstance(term.value, int):
                continue
            value = term.value
            if term.op in {">", ">=", "="}:
                candidate = value + 1 if term.op == ">" else value
                low = candidate if low is None else max(low, candidate)
            if term.op in {"<", "<=", "="}:
                candidate = value - 1 if term.op == "<" else value
                high = candidate if high is None else min(high, candidate)
        return low, high

    def matches(self, skeleton: tuple[int, int, int, str], load: Callable[[], Product]) -> bool:
        """`skeleton` = (id, created_at, updated_at, status); `load` builds the full record only if a term needs it."""
        if not self.groups:
            return True
        product: list[Product] = []

        def full() -> Product:
            if not product:
                product.append(load())
            return product[0]

        return any(all(_term_matches(term, skeleton, full) != term.negated for term in group) for group in self.groups)


def _compare(left: int, op: str, right: int) -> bool:
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    return left == right


def _term_matches(term: _Term, skeleton: tuple[int, int, int, str], full: Callable[[], Product]) -> bool:
    product_id, created, updated, status = skeleton
    if term.field == "status":
        assert isinstance(term.value, frozenset)
        return status in term.value
    if term.field in {"id", "created_at", "updated_at", "published_at"}:
        assert isinstance(term.value, int)
        if term.field == "published_at":
            published = full().published_at
            return published is not None and _compare(published, term.op, term.value)
        left = {"id": product_id, "created_at": created, "updated_at": updated}[term.field]
        return _compare(left, term.op, term.value)
    assert isinstance(term.value, str)
    record = full()
    if term.op == "~":
        return term.value in record.title.lower()
    if term.field == "tag":
        return term.value in (tag.lower() for tag in record.tags)
    actual = {"vendor": record.vendor, "product_type": record.product_type, "handle": record.handle}.get(
        term.field, record.title
    )
    return actual.lower() == term.value
