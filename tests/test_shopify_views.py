"""The Shopify emulator's generic field resolution: every field of the record-backed types has a source, a field with
none is refused when its type is registered, and the generic rules read what the API writes."""

from __future__ import annotations

import pytest
from graphql import GraphQLObjectType

from connectors.base import html_to_text
from emulators.shopify.ids import gid, graphql_time
from emulators.shopify.products import Variant, generate_product
from emulators.shopify.schema import SCHEMA
from emulators.shopify.views import GETTERS, Fields, Node, medium, register

RECORD_TYPES = ("Product", "ProductVariant", "MediaImage", "Video", "Image", "BulkOperation")


@pytest.mark.parametrize("type_name", RECORD_TYPES)
def test_every_field_of_a_record_backed_type_has_a_source(type_name: str) -> None:
    object_type = SCHEMA.get_type(type_name)
    assert isinstance(object_type, GraphQLObjectType)

    missing = [name for name in object_type.fields if (type_name, name) not in GETTERS]

    assert missing == []


def test_a_type_whose_field_has_no_source_is_refused_and_leaves_the_table_as_it_was() -> None:
    before = dict(GETTERS)

    # A variant has no `name`, `myshopifyDomain`, … and neither has its product.
    with pytest.raises(LookupError, match=r"Shop\.name: not in COMPUTED and Variant has no 'name'"):
        register("Shop", Variant)

    assert before == GETTERS


def test_plain_fields_read_the_record_in_snake_case_and_write_the_api_form() -> None:
    product = generate_product(3, 10, 4)
    node = Node("Product", product)
    fields = Fields("shop.example")

    assert fields.read(node, "Product", "productType", {}) == product.product_type
    assert fields.read(node, "Product", "descriptionHtml", {}) == product.description_html
    assert fields.read(node, "Product", "id", {}) == gid("Product", product.id)
    assert fields.read(node, "Product", "legacyResourceId", {}) == str(product.id)
    assert fields.read(node, "Product", "updatedAt", {}) == graphql_time(product.updated_at)


def test_a_variant_or_medium_reads_what_it_lacks_from_its_product() -> None:
    product = next(p for p in (generate_product(3, 50, i) for i in range(50)) if p.media and p.variants)
    fields = Fields("shop.example")
    variant = Node("ProductVariant", product.variants[0], product)
    item = medium(product, product.media[0])

    assert fields.read(variant, "ProductVariant", "createdAt", {}) == graphql_time(product.created_at)
    assert fields.read(variant, "ProductVariant", "price", {}) == product.variants[0].price
    assert fields.read(item, item.typename, "updatedAt", {}) == graphql_time(product.updated_at)
    assert fields.read(item, item.typename, "id", {}) == gid(item.typename, product.media[0].id)


def test_a_computed_field_takes_its_arguments_and_the_resolver_s_domain() -> None:
    products = [generate_product(3, 50, i) for i in range(50)]
    product = next(p for p in products if p.status == "ACTIVE" and len(html_to_text(p.description_html)) > 20)
    node = Node("Product", product)
    fields = Fields("shop.example")

    assert fields.read(node, "Product", "onlineStoreUrl", {}) == f"https://shop.example/products/{product.handle}"
    text = html_to_text(product.description_html)
    assert fields.read(node, "Product", "description", {"truncateAt": 5}) == text[:2] + "..."
