"""Paging strategies for shop APIs, each owning its page, run by the one page loop (`ground.paging.iter_pages`).

- `RelayCursorPaginator`: a GraphQL connection (`pageInfo { hasNextPage endCursor }`), e.g. Shopify Admin GraphQL.
- `LinkHeaderPaginator`: an HTTP response with `Link: <…>; rel="next"` (Shopify REST), followed only on its origin.
- `PageNumberPaginator`: a `ListPage` (its items and, when the server says, the page count): WooCommerce and the
  Shopify storefront.

WooCommerce's modified-after keyset builds on the same base in `connectors.woocommerce`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ground.errors import SourceError
from ground.paging import Paginator

__all__ = [
    "LinkHeaderPaginator",
    "ListPage",
    "PageNumberPaginator",
    "RelayCursorPaginator",
]


class RelayCursorPaginator(Paginator[Mapping[str, Any], str | None]):
    """A GraphQL connection's `pageInfo`: `endCursor` while `hasNextPage`."""

    position_name = "cursor"

    def __init__(self, *, what: str = "") -> None:
        super().__init__(None, what=what)

    def has_more(self, page: Mapping[str, Any]) -> bool:
        return bool(_page_info(page).get("hasNextPage"))

    def get_next(self, page: Mapping[str, Any]) -> str | None:
        cursor = _page_info(page).get("endCursor")
        if not isinstance(cursor, str) or not cursor:
            raise SourceError(f"{self._prefix}hasNextPage without an endCursor")
        return cursor


def _page_info(connection: Mapping[str, Any]) -> Mapping[str, Any]:
    info = connection.get("pageInfo")
    return info if isinstance(info, Mapping) else {}


class LinkHeaderPaginator(Paginator[httpx.Response, str | None]):
    """The URL of a response's `Link: <…>; rel="next"`, used exactly as given (it is opaque and carries the original
    filters), and only on the response's own origin: credentials travel with every request."""

    position_name = "next link"

    def __init__(self, *, what: str = "") -> None:
        super().__init__(None, what=what)

    def get_next(self, page: httpx.Response) -> str | None:
        link = page.links.get("next")
        url = link.get("url") if link else None
        if not url:
            return None
        here, there = page.url, httpx.URL(url)
        if (there.scheme, there.host, there.port) != (here.scheme, here.host, here.port):
            raise SourceError(f"{self._prefix}the next-page link points to another host ({there.host})")
        return url


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a numbered listing: its entries and the page count when the server says it."""

    items: Sequence[Any]
    total_pages: int | None = None


class PageNumberPaginator(Paginator[ListPage, int]):
    """Page numbers from `first`, stopping on an empty page or at the page count the server gave."""

    position_name = "page number"

    def __init__(self, first: int = 1, *, what: str = "") -> None:
        super().__init__(first, what=what)

    @property
    def page(self) -> int:
        return self.current_value

    def has_more(self, page: ListPage) -> bool:
        return bool(page.items) and (page.total_pages is None or self.current_value < page.total_pages)

    def get_next(self, page: ListPage) -> int | None:
        return self.current_value + 1
