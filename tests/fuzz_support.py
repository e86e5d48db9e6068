"""What the fuzz tests share: one hypothesis profile, hostile text, and the check that whatever a parser made of
its input can be stored and sent.

The profile is derandomized (the same examples every run, so a failure in CI reproduces locally) and bounded, so
the whole fuzz set runs in seconds. `CATALOG_SYNC_FUZZ_EXAMPLES` raises the count for a longer local hunt.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from config.sources import SourceConfig
from connectors.base import SourceProduct, product_id_problem
from ground.errors import SkippedProduct
from worker.plan import desired_row
from worker.state import DesiredRow

T = TypeVar("T")

EXAMPLES = int(os.environ.get("CATALOG_SYNC_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# Text the red team and real feeds have sent: NUL, other controls, lone surrogates, look-alike digits, path tricks,
# markup that is escaped twice, and sizes far beyond any real field.
HOSTILE_SAMPLES = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x07\x1b[31m",
    "\r\n",
    "\ud800",
    "x\udfffy",
    "²",
    "١٢٣",
    "１２３",
    "../../etc/passwd",
    "a/b?c#d",
    "%2e%2e",
    "_anon_1",
    "&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;",
    "<script>alert(1)</script>",
    "\u202eevil",
    "\ufeffid",
    "9" * 10_000,
    "i" * 10_000,
    "T" * 100_000,
)

hostile_text = st.one_of(
    st.sampled_from(HOSTILE_SAMPLES),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=40),
    st.text(max_size=20),
)


def check_storable(row: DesiredRow) -> None:
    """A desired row the state database and the catalog can both take."""
    assert product_id_problem(row.product_id) is None, row.product_id[:80]
    assert "\x00" not in row.external_id
    row.external_id.encode("utf-8")
    if row.payload is not None:
        text = json.dumps(row.payload, ensure_ascii=False)
        text.encode("utf-8")
        assert "\x00" not in text


def check_items(items: Iterable[object], source: SourceConfig) -> list[SourceProduct | SkippedProduct]:
    """Every item is a product or a skip; every product becomes a storable row or a skip with a reason."""
    seen: list[SourceProduct | SkippedProduct] = []
    for item in items:
        assert isinstance(item, SourceProduct | SkippedProduct), type(item)
        if isinstance(item, SkippedProduct):
            assert item.reason
        else:
            row = or_skip(functools.partial(desired_row, item, source))
            if isinstance(row, SkippedProduct):
                assert row.reason
            else:
                check_storable(row)
        seen.append(item)
    return seen


def or_skip(call: Callable[[], T]) -> T | SkippedProduct:
    """What `call` returns, or the `SkippedProduct` it raises (anything else propagates and fails the test)."""
    try:
        return call()
    except SkippedProduct as skip:
        return skip
