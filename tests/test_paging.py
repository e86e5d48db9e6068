"""The paging strategies and the one page loop: each strategy reads its own page, and none follows a loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from connectors.paging import LinkHeaderPaginator, ListPage, PageNumberPaginator, RelayCursorPaginator
from ground.errors import SourceError
from ground.paging import CursorPaginator, iter_pages


def connection(after: str | None, has_next: bool, items: list[int]) -> Mapping[str, Any]:
    return {"pageInfo": {"hasNextPage": has_next, "endCursor": after}, "nodes": items}


def linked(url: str, next_url: str | None) -> httpx.Response:
    headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
    return httpx.Response(200, headers=headers, request=httpx.Request("GET", url))


def test_a_relay_connection_is_read_until_has_next_page_is_false() -> None:
    pages = {None: connection("a", True, [1, 2]), "a": connection("b", True, [3]), "b": connection("b", False, [])}
    asked: list[str | None] = []

    def fetch(after: str | None) -> Mapping[str, Any]:
        asked.append(after)
        return pages[after]

    read = [node for page in iter_pages(RelayCursorPaginator(), fetch) for node in page["nodes"]]
    assert read == [1, 2, 3]
    # The last page repeats its cursor but says it is the last: that is an end, not a loop.
    assert asked == [None, "a", "b"]


def test_has_next_page_without_an_end_cursor_fails_the_read() -> None:
    pager = RelayCursorPaginator(what="source 's'")
    with pytest.raises(SourceError, match=r"^source 's': hasNextPage without an endCursor$"):
        list(iter_pages(pager, lambda after: connection(None, True, [1])))


@pytest.mark.parametrize(
    ("pager", "fetch"),
    [
        pytest.param(CursorPaginator(), lambda token: "same", id="cursor"),
        pytest.param(RelayCursorPaginator(), lambda after: connection("same", True, [1]), id="relay-cursor"),
        pytest.param(
            LinkHeaderPaginator(),
            lambda url: linked(url or "https://shop.example/p", "https://shop.example/p?page_info=x"),
            id="link-header",
        ),
    ],
)
def test_a_server_that_hands_back_the_same_token_is_a_loop_not_an_endless_read(pager: Any, fetch: Any) -> None:
    pages = iter_pages(pager, fetch)
    next(pages)
    next(pages)
    with pytest.raises(SourceError, match="paging loop detected: the server returned the same"):
        next(pages)
    assert pager.count == 2


def test_the_cursor_paginator_follows_tokens_the_caller_hands_over() -> None:
    pager = CursorPaginator()
    pager.advance("a")
    assert (pager.token, pager.finished) == ("a", False)
    pager.advance("b")
    assert pager.token == "b"
    pager.advance(None)
    assert pager.finished


def test_a_link_header_is_followed_exactly_as_given_on_the_same_origin() -> None:
    first = "https://shop.example/admin/products.json?limit=2"
    second = "https://shop.example/admin/products.json?limit=2&page_info=opaque"
    answers = {None: linked(first, second), second: linked(second, None)}
    asked = [page.request.url for page in iter_pages(LinkHeaderPaginator(), lambda url: answers[url])]
    assert [str(url) for url in asked] == [first, second]


def test_a_link_to_another_host_is_refused() -> None:
    pager = LinkHeaderPaginator(what="source 's'")
    pages = iter_pages(pager, lambda url: linked("https://shop.example/p", "https://elsewhere.example/p?x=1"))
    next(pages)
    with pytest.raises(SourceError, match=r"the next-page link points to another host \(elsewhere.example\)"):
        next(pages)


@pytest.mark.parametrize(
    ("pages", "expected_asked"),
    [
        pytest.param({1: ListPage([1, 2]), 2: ListPage([3]), 3: ListPage([])}, [1, 2, 3], id="until-an-empty-page"),
        pytest.param({1: ListPage([1, 2], 2), 2: ListPage([3], 2)}, [1, 2], id="until-the-page-count"),
        pytest.param({1: ListPage([], 0)}, [1], id="an-empty-listing"),
    ],
)
def test_page_numbers_stop_on_an_empty_page_or_at_the_page_count(
    pages: dict[int, ListPage], expected_asked: list[int]
) -> None:
    asked: list[int] = []

    def fetch(number: int) -> ListPage:
        asked.append(number)
        return pages[number]

    list(iter_pages(PageNumberPaginator(), fetch))
    assert asked == expected_asked


def test_a_caller_that_stops_early_fetches_no_further_page() -> None:
    asked: list[int] = []

    def fetch(number: int) -> ListPage:
        asked.append(number)
        return ListPage([number])

    for page in iter_pages(PageNumberPaginator(), fetch):
        if page.items == [2]:
            break
    assert asked == [1, 2]
