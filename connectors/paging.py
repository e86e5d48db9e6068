"""Paging strategies that own the page, and the one page loop every connector runs them with.

A paginator is a small strategy object (singer-sdk's `pagination.py`): it starts from a first token, reads each page
the server answered (`has_more(page)`, `get_next(page)`) and `advance(page)`s to the next token, refusing one
identical to the last ("paging loop detected": a server or a cache handing back the same cursor would otherwise be
read for ever). `iter_pages(paginator, fetch)` is the loop: fetch the page for the current token, hand it to the
caller, advance. What a page is differs by API, so each strategy names its own page type:

- `CursorPaginator`: the page is the next cursor itself (a caller that has already read it out of its answer).
- `RelayCursorPaginator`: a GraphQL connection (`pageInfo { hasNextPage endCursor }`), e.g. Shopify Admin GraphQL.
- `LinkHeaderPaginator`: an HTTP response with `Link: <…>; rel="next"` (Shopify REST), followed only on its origin.
- `PageNumberPaginator`: a `ListPage` (its items and, when the server says, the page count): WooCommerce and the
  Shopify storefront.

WooCommerce's modified-after keyset builds on the same base in `connectors.woocommerce`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from ground.errors import SourceError

__all__ = [
    "CursorPaginator",
    "LinkHeaderPaginator",
    "ListPage",
    "PageNumberPaginator",
    "Paginator",
    "RelayCursorPaginator",
    "iter_pages",
]

PageT = TypeVar("PageT")
TokenT = TypeVar("TokenT")


class Paginator(ABC, Generic[PageT, TokenT]):
    """Where the next page starts, read from the page just answered.

    `current_value` is the token of the page to fetch; `finished` is set once a page says there is no next one;
    `count` is the number of pages advanced over.
    """

    # Named in the "loop detected" message.
    position_name = "token"

    def __init__(self, start: TokenT, *, what: str = "") -> None:
        self.current_value = start
        self.finished = False
        self.count = 0
        self._prefix = f"{what}: " if what else ""

    def has_more(self, page: PageT) -> bool:
        """Whether a page follows `page`; by default whenever `get_next` names one."""
        return True

    @abstractmethod
    def get_next(self, page: PageT) -> TokenT | None:
        """The token of the page after `page`, or None when `page` is the last."""

    def advance(self, page: PageT) -> None:
        self.count += 1
        if not self.has_more(page):
            self.finished = True
            return
        token = self.get_next(page)
        if token is None or token == "":
            self.finished = True
            return
        if token == self.current_value:
            raise SourceError(
                f"{self._prefix}paging loop detected: the server returned the same {self.position_name} twice "
                f"({token!r})"
            )
        self.current_value = token


def iter_pages(paginator: Paginator[PageT, TokenT], fetch: Callable[[TokenT], PageT]) -> Iterator[PageT]:
    """Every page from the paginator's start: `fetch(token)` answers one, the caller reads it, then the paginator
    advances. The caller may stop early (a listing that found what it wanted) by leaving the loop."""
    while not paginator.finished:
        page = fetch(paginator.current_value)
        yield page
        paginator.advance(page)


class CursorPaginator(Paginator[str | None, str | None]):
    """Follows an opaque next-token the caller hands over (`advance(next_token)`), from none."""

    position_name = "cursor"

    def __init__(self, *, what: str = "") -> None:
        super().__init__(None, what=what)

    @property
    def token(self) -> str | None:
        return self.current_value

    def get_next(self, page: str | None) -> str | None:
        return page


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
