"""Products and variations as WooCommerce's REST API v3 writes them (dates local and GMT, links, prices)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from emulators.woocommerce.data import WooImage, WooProduct, WooVariation
from emulators.woocommerce.defaults import API_PREFIX

if TYPE_CHECKING:
    from emulators.woocommerce.store import WooStore


def _dates(store: WooStore, name: str, moment: datetime) -> dict[str, str]:
    local = moment.astimezone(store.tz).replace(tzinfo=None)
    return {name: local.isoformat(), f"{name}_gmt": moment.astimezone(UTC).replace(tzinfo=None).isoformat()}


def _image(store: WooStore, image: WooImage, moment: datetime) -> dict[str, Any]:
    return {
        "id": image.id,
        **_dates(store, "date_created", moment),
        **_dates(store, "date_modified", moment),
        "src": image.path if "://" in image.path else store.site_url + image.path,
        "name": image.path.rsplit("/", 1)[-1].rsplit(".", 1)[0],
        "alt": image.alt,
    }


# Global attributes (taxonomies `pa_<slug>`) the store defines, by name; any other name is a custom attribute (id 0).
_GLOBAL_ATTRIBUTES = {"Color": 6, "Size": 7}


def _attribute_id(name: str) -> int:
    return _GLOBAL_ATTRIBUTES.get(name, 0)


def _taxonomy(name: str) -> str:
    slug = name.lower().replace(" ", "-")
    return f"pa_{slug}" if name in _GLOBAL_ATTRIBUTES else slug


def _product_attributes(product: WooProduct) -> list[dict[str, Any]]:
    """A variable product's attributes used for variations, with their options in order of first use."""
    found: dict[str, list[str]] = {}
    for variation in product.variations:
        for name, option in variation.attributes:
            options = found.setdefault(name, [])
            if option not in options:
                options.append(option)
    return [
        {
            "id": _attribute_id(name),
            "name": name,
            "slug": _taxonomy(name),
            "position": position,
            "visible": True,
            "variation": True,
            "options": options,
        }
        for position, (name, options) in enumerate(found.items())
    ]


def render(store: WooStore, product: WooProduct) -> dict[str, Any]:
    price = product.sale_price or product.regular_price
    return {
        "id": product.id,
        "name": product.name,
        "slug": product.slug,
        "permalink": f"{store.site_url}/product/{product.slug}/",
        **_dates(store, "date_created", product.date_created),
        **_dates(store, "date_modified", product.date_modified),
        "type": product.type,
        "status": product.status,
        "featured": False,
        "catalog_visibility": "visible",
        "description": product.description,
        "short_description": product.short_description,
        "sku": product.sku,
        "price": "" if product.type == "variable" else price,
        "regular_price": "" if product.type == "variable" else product.regular_price,
        "sale_price": "" if product.type == "variable" else product.sale_price,
        "on_sale": bool(product.sale_price),
        "purchasable": product.status == "publish",
        "virtual": False,
        "downloadable": False,
        "tax_status": "taxable",
        "manage_stock": False,
        "stock_quantity": None,
        "stock_status": product.stock_status,
        "backorders": "no",
        "weight": "",
        "dimensions": {"length": "", "width": "", "height": ""},
        "reviews_allowed": True,
        "average_rating": "0.00",
        "rating_count": 0,
        "related_ids": [],
        "parent_id": 0,
        "categories": [{"id": i, "name": n, "slug": s} for i, n, s in product.categories],
        "tags": [{"id": i, "name": n, "slug": s} for i, n, s in product.tags],
        "images": [_image(store, image, product.date_created) for image in product.images],
        "attributes": _product_attributes(product),
        "default_attributes": [],
        "variations": [variation.id for variation in product.variations],
        "grouped_products": [],
        "menu_order": 0,
        "meta_data": [],
        "_links": {
            "self": [{"href": f"{store.site_url}{API_PREFIX}/products/{product.id}"}],
            "collection": [{"href": f"{store.site_url}{API_PREFIX}/products"}],
        },
    }


def render_variation(
    store: WooStore, parent: WooProduct, variation: WooVariation, *, as_product: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": variation.id,
        **_dates(store, "date_created", variation.date_created),
        **_dates(store, "date_modified", variation.date_modified),
        "description": "",
        "permalink": f"{store.site_url}/product/{parent.slug}/?"
        + "&".join(f"attribute_{_taxonomy(name)}={quote(option)}" for name, option in variation.attributes),
        "sku": "",
        "price": variation.regular_price,
        "regular_price": variation.regular_price,
        "sale_price": "",
        "on_sale": False,
        "status": variation.status,
        "purchasable": variation.status == "publish",
        "stock_status": "instock",
        "image": _image(store, variation.image, variation.date_created) if variation.image else None,
        "attributes": [
            {"id": _attribute_id(name), "name": name, "slug": _taxonomy(name), "option": option}
            for name, option in variation.attributes
        ],
        "menu_order": 0,
        "meta_data": [],
    }
    if as_product:
        # GET /products/{variation id}: the variation in the product shape, pointing at its parent.
        body.update({"name": f"{parent.name} - {variation.label}", "type": "variation", "parent_id": parent.id})
    return body
