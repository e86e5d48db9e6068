"""The JSON shapes of a product outside GraphQL: the Admin REST product, the `products/*` webhook body and the
public storefront item."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from emulators.shopify.ids import gid, rest_time
from emulators.shopify.products import Product, Variant


def _option_values(variant: Variant) -> dict[str, Any]:
    """`option1`…`option3`: the variant's values in the product's option order."""
    values = [value for _, value in variant.options][:3]
    return {f"option{number}": values[number - 1] if number <= len(values) else None for number in (1, 2, 3)}


def _image_id(product: Product, variant: Variant) -> int | None:
    item = product.variant_medium(variant)
    return item.image_id if item is not None and item.kind == "IMAGE" else None


def _rest_images(product: Product) -> list[dict[str, Any]]:
    images = product.images
    return [
        {
            "id": image.image_id,
            "alt": image.alt,
            "position": position,
            "product_id": product.id,
            "created_at": rest_time(product.created_at),
            "updated_at": rest_time(product.updated_at),
            "admin_graphql_api_id": gid("ProductImage", image.image_id),
            "width": image.width,
            "height": image.height,
            "src": image.url,
            "variant_ids": [variant.id for variant in product.variants if variant.media_id == image.id],
        }
        for position, image in enumerate(images, start=1)
    ]


def _rest_variants(product: Product) -> list[dict[str, Any]]:
    return [
        {
            "id": variant.id,
            "product_id": product.id,
            "title": variant.title,
            "price": variant.price,
            "sku": variant.sku,
            "position": variant.position,
            "inventory_policy": "deny",
            "compare_at_price": None,
            "fulfillment_service": "manual",
            "inventory_management": "shopify",
            **_option_values(variant),
            "created_at": rest_time(product.created_at),
            "updated_at": rest_time(product.updated_at),
            "taxable": True,
            "barcode": None,
            "grams": 0,
            "image_id": _image_id(product, variant),
            "weight": 0.0,
            "weight_unit": "kg",
            "inventory_item_id": variant.id + 1,
            "inventory_quantity": variant.inventory_quantity,
            "old_inventory_quantity": variant.inventory_quantity,
            "presentment_prices": [
                {"price": {"amount": variant.price, "currency_code": "USD"}, "compare_at_price": None}
            ],
            "requires_shipping": True,
            "admin_graphql_api_id": gid("ProductVariant", variant.id),
        }
        for variant in product.variants
    ]


def _options(product: Product) -> list[dict[str, Any]]:
    return [
        {
            "id": product.id + 7 + position,
            "product_id": product.id,
            "name": name,
            "position": position,
            "values": list(values),
        }
        for position, (name, values) in enumerate(product.options, start=1)
    ]


def rest_product(product: Product, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The Admin REST product (2024-04 shape); `fields` gives a sparse object as `?fields=` does."""
    images = _rest_images(product)
    body: dict[str, Any] = {
        "id": product.id,
        "title": product.title,
        "body_html": product.description_html,
        "vendor": product.vendor,
        "product_type": product.product_type,
        "created_at": rest_time(product.created_at),
        "handle": product.handle,
        "updated_at": rest_time(product.updated_at),
        "published_at": rest_time(product.published_at),
        "template_suffix": None,
        "published_scope": "web",
        "tags": ", ".join(product.tags),
        "status": product.status.lower(),
        "admin_graphql_api_id": gid("Product", product.id),
        "variants": _rest_variants(product),
        "options": _options(product),
        "images": images,
        "image": images[0] if images else None,
    }
    if fields:
        return {name: body[name] for name in fields if name in body}
    return body


def webhook_product(product: Product) -> dict[str, Any]:
    """A `products/create` / `products/update` delivery body: the REST product plus `variant_gids`."""
    body = rest_product(product)
    body["media"] = [
        {
            "id": item.id,
            "product_id": product.id,
            "position": position,
            "created_at": rest_time(product.created_at),
            "updated_at": rest_time(product.updated_at),
            "alt": item.alt,
            "status": "READY",
            "media_content_type": item.kind,
            "preview_image": {"width": item.width, "height": item.height, "src": item.url, "status": "READY"},
            "variant_ids": [variant.id for variant in product.variants if variant.media_id == item.id],
            "admin_graphql_api_id": gid("MediaImage" if item.kind == "IMAGE" else "Video", item.id),
        }
        for position, item in enumerate(product.media, start=1)
    ]
    body["variant_gids"] = [
        {
            "admin_graphql_api_id": gid("ProductVariant", variant.id),
            "updated_at": datetime.fromtimestamp(product.updated_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        for variant in product.variants
    ]
    return body


def storefront_product(product: Product) -> dict[str, Any]:
    """The public `/products.json` item: tags as a list, images without alt text, lighter variants."""
    return {
        "id": product.id,
        "title": product.title,
        "handle": product.handle,
        "body_html": product.description_html,
        "published_at": rest_time(product.published_at),
        "created_at": rest_time(product.created_at),
        "updated_at": rest_time(product.updated_at),
        "vendor": product.vendor,
        "product_type": product.product_type,
        "tags": list(product.tags),
        "variants": [
            {
                "id": variant.id,
                "title": variant.title,
                **_option_values(variant),
                "sku": variant.sku,
                "requires_shipping": True,
                "taxable": True,
                "featured_image": None,
                "available": variant.inventory_quantity > 0,
                "price": variant.price,
                "grams": 0,
                "compare_at_price": None,
                "position": variant.position,
                "product_id": product.id,
                "created_at": rest_time(product.created_at),
                "updated_at": rest_time(product.updated_at),
            }
            for variant in product.variants
        ],
        "images": [
            {
                "id": image.image_id,
                "created_at": rest_time(product.created_at),
                "position": position,
                "updated_at": rest_time(product.updated_at),
                "product_id": product.id,
                "variant_ids": [variant.id for variant in product.variants if variant.media_id == image.id],
                "src": image.url,
                "width": image.width,
                "height": image.height,
            }
            for position, image in enumerate(product.images, start=1)
        ],
        "options": [
            {"name": option["name"], "position": option["position"], "values": option["values"]}
            for option in _options(product)
        ],
    }
