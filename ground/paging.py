"""The paging strategy base and the one page loop, for every HTTP listing catalog-sync reads (shops and the catalog).

A paginator is a small strategy object (singer-sdk's `pagination.py`): it starts from a first token, reads each page
the server answered (`has_more(page)`, `get_next(page)`) and `advance(page)`s to the next token, refusing one
identical to the last ("paging loop detected": a server or a cache handing back the same cursor would otherwise be
read for ever). `iter_pages(paginator, fetch)` is the loop: fetch the page for the current token, hand it to the
caller, advance. What a page is differs by API, so each strategy names its own page type.

`CursorPaginator` (the page is the next cursor itself) lives here because the catalog client pages that way too;
the strategies that only shops use are in `connectors.paging`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ground.errors import SourceError

__all__ = ["CursorPaginator", "Paginator", "iter_pages"]

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
