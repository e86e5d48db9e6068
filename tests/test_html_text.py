"""Shop HTML to catalog text: parsed by libxml2, never by a regex."""

from __future__ import annotations

import html

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.base import html_to_text


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        ('<img alt="a > b" src="x.jpg">Hi', "Hi"),
        ("x<!-- a > b -->y", "xy"),
        ("&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("a &lt;b&gt; c", "a c"),
        ("5 &lt; 6 &gt; 4", "5 < 6 > 4"),
        ("<p>One</p><p>Two</p>", "One Two"),
        ("<div>a</div>b<h2>Care</h2>c", "a b Care c"),
        ("<ul><li>Cotton</li><li>Linen</li></ul>", "Cotton Linen"),
        ("<table><tr><td>Size</td><td>M</td></tr></table>", "Size M"),
        ("Line<br>break<br/>here", "Line break here"),
        ("Bo<b>ld</b> and <span>inl</span>ine", "Bold and inline"),
        ("<script>var x = '<p>'</script>Shown<style>p { color: red }</style>", "Shown"),
        ("Caf&eacute;&nbsp;cr&egrave;me &#x2013; 100&#37;", "Café crème – 100%"),
        ("plain & text < 5 > 3", "plain & text < 5 > 3"),
        ("  Line one\n\tline two  ", "Line one line two"),
        ('<?xml version="1.0"?><p>x</p>', "x"),
        ("<p>unclosed <b>bold", "unclosed bold"),
        ("", ""),
        (None, ""),
    ],
    ids=[
        "gt-in-attribute",
        "gt-in-comment",
        "double-escaped-stays-escaped",
        "tag-revealed-by-decoding-dropped",
        "escaped-comparison-decoded-once",
        "paragraphs",
        "div-and-heading",
        "list-items",
        "table-cells",
        "line-breaks",
        "inline-tags-join",
        "script-and-style",
        "entities",
        "plain-text",
        "whitespace",
        "processing-instruction",
        "unclosed-tags",
        "empty",
        "none",
    ],
)
def test_html_becomes_plain_text(markup: str | None, text: str) -> None:
    assert html_to_text(markup) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=60))
def test_escaped_text_comes_back_as_it_was_with_whitespace_collapsed(text: str) -> None:
    assert html_to_text(f"<p>{html.escape(text)}</p>") == " ".join(text.replace("\xa0", " ").split())


@given(st.text(max_size=200))
def test_any_input_gives_collapsed_text_without_raising(markup: str) -> None:
    result = html_to_text(markup)

    assert isinstance(result, str)
    assert result == result.strip()
    assert "  " not in result
