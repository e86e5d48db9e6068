"""The contract every connector keeps, as a reusable pytest class (after singer-sdk's `testing/factory.py`).

Use it from a connector's test module::

    from tests.connector_contract import ConnectorContract

    class TestMyShopContract(ConnectorContract):
        @pytest.fixture
        def connector(self, ...) -> Iterator[Connector]:
            ...  # a ready connector over a real source (an emulator over sockets, a fixture file)

        @pytest.fixture
        def connector_with_bad_records(self, ...) -> Iterator[Connector]:
            ...  # a source holding at least one unusable record and at least one good product

        @pytest.fixture
        def expected_count(self) -> int | None:
            return 42  # optional: how many products a full read yields

The suite checks what the sync core relies on: a full read yields normalized `SourceProduct`s of the connector's
source (and maybe `SkippedProduct`s) with aware UTC `updated_at`; product ids are unique and stable; an incremental
read is a subset holding exactly what changed at or after `since`, so the watermark never goes backwards; a bad
record is skipped with a stable reason code while the rest go on; the stream ends and can be abandoned midway;
`get_product` finds a listed product and answers None for an unknown id.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from connectors.base import Connector, SourceProduct
from ground.errors import SkippedProduct
from ground.limits import MAX_IMAGES

__all__ = ["MAX_ITEMS", "ConnectorContract", "read_all"]

# A stream longer than this is taken for a paging loop: no test source is anywhere near it.
MAX_ITEMS = 200_000
# Reason codes are short, stable identifiers the plan stores and operators grep for.
REASON_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
STATUSES = frozenset({"active", "draft", "archived"})
IMAGE_URL = re.compile(r"^https?://\S+$")


def read_all(connector: Connector, since: datetime | None = None) -> tuple[list[SourceProduct], list[SkippedProduct]]:
    """Drain one read, failing (instead of hanging) when the stream does not end."""
    products: list[SourceProduct] = []
    skipped: list[SkippedProduct] = []
    for count, item in enumerate(connector.iter_products(since), start=1):
        if count > MAX_ITEMS:
            pytest.fail(f"{connector.source}: the stream yielded more than {MAX_ITEMS} items; is paging looping?")
        if isinstance(item, SourceProduct):
            products.append(item)
        elif isinstance(item, SkippedProduct):
            skipped.append(item)
        else:
            pytest.fail(f"iter_products yielded {type(item).__name__}; only SourceProduct or SkippedProduct")
    return products, skipped


def _is_utc(moment: datetime) -> bool:
    return moment.tzinfo is not None and moment.utcoffset() == timedelta(0)


class ConnectorContract:
    """Subclass as `Test<Platform>Contract` and provide the `connector` fixture (see the module docstring)."""

    @pytest.fixture
    def connector(self) -> Connector:
        pytest.fail("a ConnectorContract subclass must provide the `connector` fixture")

    @pytest.fixture
    def connector_with_bad_records(self) -> Connector:
        pytest.fail(
            "a ConnectorContract subclass must provide `connector_with_bad_records`: a source with at least one "
            "unusable record (no id, no title, ...) beside good products"
        )

    @pytest.fixture
    def expected_count(self) -> int | None:
        """How many products a full read of `connector` yields; None to not check the number."""
        return None

    @pytest.fixture
    def unknown_product_id(self) -> str:
        """An id the source does not list; numeric so every platform accepts its shape."""
        return "999999999999"

    def test_a_full_read_yields_normalized_products_of_its_source(
        self, connector: Connector, expected_count: int | None
    ) -> None:
        products, _ = read_all(connector)

        assert products, "the source is expected to list at least one product"
        if expected_count is not None:
            assert len(products) == expected_count
        for product in products:
            where = f"product {product.product_id!r}"
            assert product.source == connector.source, where
            assert isinstance(product.product_id, str), where
            assert product.product_id.strip(), where
            assert _is_utc(product.updated_at), f"{where}: updated_at {product.updated_at!r} is not aware UTC"
            assert product.status in STATUSES, where
            assert product.title.strip(), f"{where}: an untitled record must be skipped, not yielded"
            assert isinstance(product.description, str), where
            assert len(product.images) <= MAX_IMAGES, f"{where}: more than {MAX_IMAGES} images"
            urls = [image.url for image in product.images]
            assert len(urls) == len(set(urls)), f"{where}: repeated image URLs {urls}"
            assert all(IMAGE_URL.match(url) for url in urls), f"{where}: unusable image URL in {urls}"
            assert all(isinstance(tag, str) and tag for tag in product.tags), where

    def test_product_ids_are_unique_within_a_read(self, connector: Connector) -> None:
        products, _ = read_all(connector)

        ids = [product.product_id for product in products]

        duplicates = sorted({pid for pid in ids if ids.count(pid) > 1})
        assert not duplicates, f"product ids yielded more than once: {duplicates}"

    def test_the_stream_ends_and_a_second_read_gives_the_same_ids(self, connector: Connector) -> None:
        first, first_skipped = read_all(connector)

        second, second_skipped = read_all(connector)

        assert sorted(p.product_id for p in first) == sorted(p.product_id for p in second)
        assert sorted(s.reason for s in first_skipped) == sorted(s.reason for s in second_skipped)

    def test_an_abandoned_read_releases_the_source_for_the_next_read(self, connector: Connector) -> None:
        stream = iter(connector.iter_products(None))
        next(stream)
        close = getattr(stream, "close", None)
        if close is not None:
            close()

        products, _ = read_all(connector)

        assert products

    def test_an_incremental_read_is_the_subset_changed_at_or_after_since(self, connector: Connector) -> None:
        full, _ = read_all(connector)
        moments = sorted(product.updated_at for product in full)
        since = moments[len(moments) // 2]

        incremental, _ = read_all(connector, since)

        full_ids = {product.product_id for product in full}
        incremental_ids = {product.product_id for product in incremental}
        assert incremental_ids <= full_ids
        too_old = [p.product_id for p in incremental if p.updated_at < since]
        assert not too_old, f"products updated before since={since.isoformat()}: {too_old}"
        # Strictly after `since` must be there; at exactly `since` a platform's query may be exclusive.
        missed = sorted(p.product_id for p in full if p.updated_at > since and p.product_id not in incremental_ids)
        assert not missed, f"products changed after since={since.isoformat()} but not read: {missed}"

    def test_the_watermark_never_goes_backwards(self, connector: Connector) -> None:
        full, _ = read_all(connector)
        moments = sorted(product.updated_at for product in full)

        for since in (moments[0], moments[len(moments) // 2], moments[-1]):
            incremental, _ = read_all(connector, since)

            newest = max((product.updated_at for product in incremental), default=None)
            assert newest is None or newest >= since, f"since={since.isoformat()} read back to {newest}"
        later, _ = read_all(connector, moments[-1] + timedelta(seconds=1))
        assert later == [], "nothing changed after the newest product, so an incremental read is empty"

    def test_bad_records_are_skipped_with_a_reason_and_the_rest_go_on(
        self, connector_with_bad_records: Connector
    ) -> None:
        products, skipped = read_all(connector_with_bad_records)

        assert skipped, "the source holds bad records; each must come out as a SkippedProduct"
        assert products, "good products must still be yielded around the bad records"
        for record in skipped:
            assert REASON_CODE.match(record.reason), f"reason {record.reason!r} is not a stable code"
            assert record.product_id is None or isinstance(record.product_id, str)
        product_ids = {product.product_id for product in products}
        both = sorted({s.product_id for s in skipped if s.product_id is not None} & product_ids)
        assert not both, f"ids yielded both as a product and as skipped: {both}"

    def test_get_product_returns_a_listed_product(self, connector: Connector) -> None:
        products, _ = read_all(connector)

        for listed in (products[0], products[-1]):
            found = connector.get_product(listed.product_id)

            assert found is not None, f"get_product({listed.product_id!r}) found nothing"
            assert found.product_id == listed.product_id
            assert found.source == listed.source
            assert found.title == listed.title
            assert found.status == listed.status

    def test_get_product_of_an_unknown_id_is_none(self, connector: Connector, unknown_product_id: str) -> None:
        assert connector.get_product(unknown_product_id) is None
