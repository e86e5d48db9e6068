"""One catalog product per colour for Shopify and WooCommerce sources (`split_by`), over real sockets: the shop
emulators, the webhook server and the catalog emulator, with the state database and the push code in between."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.sources import ShopifySource, SplitSource, parse_sources
from connectors.base import ImageRef, SourceProduct, Variant
from connectors.colourways import colourways, matches_option
from connectors.shopify import ShopifyGraphQL, normalize_rest_product
from connectors.woocommerce import variation_variant
from emulators import shopify as shopify_emulator
from emulators import woocommerce as woo_emulator
from emulators.server import running
from tests.sync_helpers import SyncWorld, sync_world
from worker.inline import InlineDispatcher
from worker.operations import run_sync, sync_product
from worker.plan import RunReport
from worker.state import DELETED, RunMode
from worker.webhooks import create_app

SHOPIFY_SECRET = "shopify-split-secret"
WOO_SECRET = "woo-split-secret"
CDN = "https://cdn.example/wrap"
FIXTURES = Path(__file__).parent / "fixtures"
# Longest a test waits for an emulator to finish its webhook deliveries (they take milliseconds).
DELIVERY_WAIT = 10.0


# ------------------------------------------------------------------------------------------- colourways, unit


def shop_product(*variants: Variant, images: tuple[ImageRef, ...] = (), **options: tuple[str, ...]) -> SourceProduct:
    return SourceProduct(
        source="s",
        product_id="42",
        updated_at=datetime(2025, 1, 1, tzinfo=UTC),
        status="active",
        title="Wrap dress",
        handle="wrap-dress",
        images=images,
        attributes={"price": "10.00"},
        options=tuple(options.items()),
        variants=variants,
    )


@pytest.mark.parametrize(
    ("name", "split_by", "matches"),
    [
        ("Color", "color", True),
        ("Colour", "color", True),
        ("pa_color", "Colour", True),
        ("COLOR ", "color", True),
        ("Size", "color", False),
        ("Farbe", "color", False),
        ("Pattern", "pattern", True),
    ],
    ids=["same", "british", "taxonomy", "case-and-space", "another-option", "translation", "any-option"],
)
def test_an_option_matches_split_by_by_name_with_colour_and_color_alike(
    name: str, split_by: str, matches: bool
) -> None:
    assert matches_option(name, split_by) is matches


def test_a_colourway_never_gets_another_colours_images() -> None:
    navy, blue = ImageRef(f"{CDN}/navy.jpg"), ImageRef(f"{CDN}/blue.jpg")
    product = shop_product(
        Variant((("Color", "Navy Blue"), ("Size", "S")), navy, "30.00"),
        Variant((("Color", "Navy Blue"), ("Size", "M")), navy, "25.00"),
        Variant((("Color", "Blue"), ("Size", "S")), blue, "20.00"),
        images=(
            navy,
            blue,
            ImageRef(f"{CDN}/navy-back.jpg", "Navy blue, back"),
            ImageRef(f"{CDN}/blue-back.jpg", "Back in blue"),
            ImageRef(f"{CDN}/label.jpg", "The label"),
        ),
        Color=("Navy Blue", "Blue"),
        Size=("S", "M"),
    )

    navy_way, blue_way = colourways(product, "colour")

    assert (navy_way.product_id, blue_way.product_id) == ("42~navy-blue", "42~blue")
    assert [image.url for image in navy_way.images] == [f"{CDN}/navy.jpg", f"{CDN}/navy-back.jpg"]
    assert [image.url for image in blue_way.images] == [f"{CDN}/blue.jpg", f"{CDN}/blue-back.jpg"]
    assert (navy_way.title, navy_way.attributes["price"], navy_way.attributes["color"]) == (
        "Wrap dress - Navy Blue",
        "25.00",
        "Navy Blue",
    )
    assert navy_way.attributes["item_group_id"] == "42"
    assert (navy_way.handle, blue_way.handle) == ("wrap-dress~navy-blue", "wrap-dress~blue")


def test_a_colour_without_images_of_its_own_gets_the_images_no_colour_claims() -> None:
    red = ImageRef(f"{CDN}/red.jpg")
    product = shop_product(
        Variant((("Color", "Red"),), red),
        Variant((("Color", "Green"),)),
        images=(red, ImageRef(f"{CDN}/flat.jpg", "Laid flat")),
        Color=("Red", "Green"),
    )

    _, green = colourways(product, "color")

    assert [image.url for image in green.images] == [f"{CDN}/flat.jpg"]


def test_a_product_without_the_option_stays_one_product() -> None:
    product = shop_product(Variant((("Size", "S"),)), images=(ImageRef(f"{CDN}/a.jpg"),), Size=("S",))

    (same,) = colourways(product, "color")

    assert (same.product_id, same.title, same.attributes) == ("42", "Wrap dress", {"price": "10.00"})


def test_a_real_shopify_rest_product_splits_by_its_color_option() -> None:
    document = json.loads((FIXTURES / "shopify/rest/shopify-api-js-2024-04/test_9__GET_632910392.json").read_text())
    product = normalize_rest_product("s", document["product"], variants=True)
    assert isinstance(product, SourceProduct)

    ways = {way.product_id: way for way in colourways(product, "colour")}

    assert list(ways) == ["632910392~pink", "632910392~red", "632910392~green", "632910392~black"]
    # Pink's variant shows ipod-nano-2.png; the others have no image of their own and get the one no colour claims.
    assert [image.url.split("/")[-1] for image in ways["632910392~pink"].images] == ["ipod-nano-2.png?v=1704203951"]
    assert [image.url.split("/")[-1] for image in ways["632910392~red"].images] == ["ipod-nano.png?v=1704203951"]
    assert ways["632910392~red"].attributes["price"] == "199.00"


def test_a_real_woocommerce_variation_gives_its_colour_image_and_price() -> None:
    variations = json.loads(
        (
            FIXTURES / "woocommerce/rest_api_docs/wp-api-v3_product-variations__03_list_all_product_variations.json"
        ).read_text()
    )

    green = variation_variant(variations[0])

    assert green.options == (("Color", "Green"),)
    assert green.image is not None and green.image.url.endswith("/T_3_front-12.jpg")
    assert green.price == "9.00"


@pytest.mark.parametrize("kind", ["shopify", "shopify-rest", "woocommerce"])
def test_split_by_is_accepted_for_shop_kinds(kind: str) -> None:
    credentials = {"consumer_key": "k", "consumer_secret": "s"} if kind == "woocommerce" else {"access_token": "t"}
    document = {
        "sources": [{"name": "s", "kind": kind, "url": "https://shop.example", "split_by": "Color", **credentials}]
    }

    (source,) = parse_sources(document).values()

    assert isinstance(source, SplitSource)
    assert source.split_by == "Color"


# ------------------------------------------------------------------------------------------- the shops, end to end


@dataclass
class Shops:
    world: SyncWorld
    shopify: httpx.Client
    shop: shopify_emulator.Shop
    woo: httpx.Client
    fetched: list[tuple[str, str]] = field(default_factory=list)

    def sync(self, source: str, *, bulk: bool | None = None, mode: RunMode = "full") -> RunReport:
        dispatcher = InlineDispatcher(self.world.runtime)
        report = run_sync(self.world.runtime, source, mode, dispatcher, bulk=bulk)
        dispatcher.drain(source, timeout=20)
        return report

    def converge_fetched(self) -> None:
        """What the `sync_product` tasks the webhook server published would do, in this thread."""
        dispatcher = InlineDispatcher(self.world.runtime)
        for source, product_id in self.fetched:
            sync_product(self.world.runtime, source, product_id, dispatcher)
            dispatcher.drain(source, timeout=20)
        self.fetched.clear()

    def catalog(self, source: str) -> dict[str, dict[str, Any]]:
        return {key: value for key, value in self.world.catalog_products().items() if key.startswith(f"{source}-")}


def sources_file(shopify_url: str, woo_url: str) -> str:
    shops = [
        ("shopify", "shopify", f'access_token = "{shopify_emulator.DEFAULT_ACCESS_TOKEN}"', SHOPIFY_SECRET),
        ("shopify-rest", "shopify-rest", f'access_token = "{shopify_emulator.DEFAULT_ACCESS_TOKEN}"', SHOPIFY_SECRET),
        ("woo", "woocommerce", 'consumer_key = "ck_test"\nconsumer_secret = "cs_test"', WOO_SECRET),
    ]
    return "".join(
        f'[[sources]]\nname = "{name}"\nkind = "{kind}"\nurl = "{woo_url if kind == "woocommerce" else shopify_url}"\n'
        f'{credentials}\nwebhook_secret = "{secret}"\nsplit_by = "color"\ncheck_images = false\n'
        # A colour dropped from a shop of three products is a third of it: past the default deletion brake.
        "mass_delete_share = 0.9\n"
        for name, kind, credentials, secret in shops
    )


@pytest.fixture
def shops(tmp_path: Path) -> Iterator[Shops]:
    shopify_app = shopify_emulator.create_app(products=0, bulk_duration=0.2)
    woo_app = woo_emulator.create_app(products=0)
    with (
        running(shopify_app) as shopify_server,
        running(woo_app) as woo_server,
        sync_world(tmp_path, sources=sources_file(shopify_server.url, woo_server.url)) as world,
        httpx.Client(base_url=shopify_server.url, timeout=10) as shopify,
        httpx.Client(base_url=woo_server.url, timeout=10) as woo,
    ):
        fixture = Shops(world, shopify, shopify_app.state.shop, woo)
        receiver = create_app(
            world.runtime,
            InlineDispatcher(world.runtime),
            fetch=lambda source, product_id: fixture.fetched.append((source, product_id)),
            broker_check=lambda: None,
        )
        with running(receiver) as webhooks:
            shopify.post(
                "/_emulator/webhooks", json={"url": f"{webhooks.url}/webhooks/shopify", "secret": SHOPIFY_SECRET}
            ).raise_for_status()
            woo.post("/_emulator/webhooks", json={"url": f"{webhooks.url}/webhooks/woo", "secret": WOO_SECRET})
            yield fixture


def settle_shopify(shops: Shops) -> None:
    assert shops.shop.webhooks.wait_idle(DELIVERY_WAIT)


def settle_woo(shops: Shops) -> None:
    shops.woo.post("/_emulator/webhooks/drain", timeout=DELIVERY_WAIT).raise_for_status()


def shopify_dress(client: httpx.Client, colours: tuple[str, ...] = ("Red", "Blue")) -> dict[str, Any]:
    """A dress in `colours` × sizes S and M: each colour's variants show its front photo; a back photo per colour
    is named by its alt text; one photo of the label belongs to no colour."""
    images: list[dict[str, Any]] = []
    for colour in colours:
        images.append({"src": f"{CDN}/{colour.lower()}-front.jpg", "alt": "Front"})
        images.append({"src": f"{CDN}/{colour.lower()}-back.jpg", "alt": f"Wrap dress in {colour}, back"})
    images.append({"src": f"{CDN}/label.jpg", "alt": "The label"})
    variants = [
        {
            "options": {"Color": colour, "Size": size},
            "price": f"{30 + index * 5 + (5 if size == 'M' else 0)}.00",
            "image": f"{CDN}/{colour.lower()}-front.jpg",
        }
        for index, colour in enumerate(colours)
        for size in ("S", "M")
    ]
    body = {"title": "Wrap dress", "status": "active", "images": images, "variants": variants}
    created = client.post("/_emulator/products", json=body)
    created.raise_for_status()
    product: dict[str, Any] = created.json()["product"]
    return product


def shopify_tee(client: httpx.Client) -> dict[str, Any]:
    """A T-shirt in sizes only: no colour to split by."""
    body = {
        "title": "Plain tee",
        "status": "active",
        "images": [f"{CDN}/tee.jpg"],
        "variants": [{"options": {"Size": "S"}, "price": "12"}, {"options": {"Size": "M"}, "price": "14"}],
    }
    created = client.post("/_emulator/products", json=body)
    created.raise_for_status()
    product: dict[str, Any] = created.json()["product"]
    return product


def shopify_variants_without(product: dict[str, Any], colour: str) -> list[dict[str, Any]]:
    kept = [variant for variant in product["variants"] if variant["option1"] != colour]
    return [
        {
            "options": {"Color": variant["option1"], "Size": variant["option2"]},
            "price": variant["price"],
            "image": next(image["src"] for image in product["images"] if image["id"] == variant["image_id"]),
        }
        for variant in kept
    ]


def image_urls(product: dict[str, Any]) -> list[str]:
    return [image["sourceUrl"] for image in product["images"]]


@pytest.mark.parametrize(
    ("source", "bulk"), [("shopify", False), ("shopify", True), ("shopify-rest", None)], ids=["graphql", "bulk", "rest"]
)
def test_each_shopify_colour_becomes_a_product_with_its_own_images(
    shops: Shops, source: str, bulk: bool | None
) -> None:
    dress = shopify_dress(shops.shopify)
    tee = shopify_tee(shops.shopify)

    report = shops.sync(source, bulk=bulk)

    assert report.outcome == "completed"
    catalog = shops.catalog(source)
    red, blue = catalog[f"{source}-{dress['id']}~red"], catalog[f"{source}-{dress['id']}~blue"]
    assert sorted(catalog) == sorted(
        [f"{source}-{dress['id']}~red", f"{source}-{dress['id']}~blue", f"{source}-{tee['id']}"]
    )
    assert image_urls(red) == [f"{CDN}/red-front.jpg", f"{CDN}/red-back.jpg"]
    assert image_urls(blue) == [f"{CDN}/blue-front.jpg", f"{CDN}/blue-back.jpg"]
    assert (red["title"], blue["title"]) == ("Wrap dress - Red", "Wrap dress - Blue")
    assert red["metadata"]["itemGroupId"] == str(dress["id"])
    assert image_urls(catalog[f"{source}-{tee['id']}"]) == [f"{CDN}/tee.jpg"]
    row = shops.world.runtime.store.get(source, f"{dress['id']}~blue")
    assert row is not None and row.desired_payload is not None


def test_a_colourways_price_is_its_lowest_variant_price(shops: Shops) -> None:
    source = shops.world.runtime.sources["shopify"]
    shops.world.runtime.sources["shopify"] = source.model_copy(update={"metadata_fields": ("price", "color")})
    dress = shopify_dress(shops.shopify)

    shops.sync("shopify")

    blue = shops.catalog("shopify")[f"shopify-{dress['id']}~blue"]
    assert (blue["metadata"]["price"], blue["metadata"]["color"]) == ("35.00", "Blue")


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_colour_removed_in_shopify_is_deleted_on_the_next_run(shops: Shops, mode: RunMode) -> None:
    dress = shopify_dress(shops.shopify, ("Red", "Blue", "Green"))
    shopify_tee(shops.shopify)
    shops.sync("shopify")
    assert f"shopify-{dress['id']}~green" in shops.catalog("shopify")
    shops.shopify.patch(
        f"/_emulator/products/{dress['id']}", json={"variants": shopify_variants_without(dress, "Green")}
    ).raise_for_status()

    report = shops.sync("shopify", mode=mode)

    assert report.outcome == "completed"
    assert shops.world.stats()["deletes"] == 1
    dresses = [key for key in shops.catalog("shopify") if key.startswith(f"shopify-{dress['id']}")]
    assert sorted(dresses) == [f"shopify-{dress['id']}~blue", f"shopify-{dress['id']}~red"]


def test_a_shopify_webhook_for_a_split_product_converges_every_colourway(shops: Shops) -> None:
    dress = shopify_dress(shops.shopify, ("Red", "Blue", "Green"))
    settle_shopify(shops)
    shops.converge_fetched()
    assert len(shops.catalog("shopify")) == 3

    shops.shopify.patch(
        f"/_emulator/products/{dress['id']}",
        json={"title": "Wrap dress II", "variants": shopify_variants_without(dress, "Green")},
    ).raise_for_status()
    settle_shopify(shops)
    assert shops.fetched == [("shopify", str(dress["id"]))]
    shops.converge_fetched()

    catalog = shops.catalog("shopify")
    assert sorted(catalog) == [f"shopify-{dress['id']}~blue", f"shopify-{dress['id']}~red"]
    assert catalog[f"shopify-{dress['id']}~red"]["title"] == "Wrap dress II - Red"
    green = shops.world.runtime.store.get("shopify", f"{dress['id']}~green")
    assert green is not None and green.desired_hash == DELETED

    shops.shopify.delete(f"/_emulator/products/{dress['id']}").raise_for_status()
    settle_shopify(shops)
    shops.converge_fetched()

    assert shops.catalog("shopify") == {}


def test_syncing_one_colourway_converges_its_whole_product(shops: Shops) -> None:
    dress = shopify_dress(shops.shopify, ("Red", "Blue", "Green"))
    shops.sync("shopify")
    shops.shopify.patch(
        f"/_emulator/products/{dress['id']}", json={"variants": shopify_variants_without(dress, "Green")}
    ).raise_for_status()
    shops.fetched.clear()  # the webhooks of the edit: this test syncs by hand, as `resync --product` does

    dispatcher = InlineDispatcher(shops.world.runtime)
    changed = sync_product(shops.world.runtime, "shopify", f"{dress['id']}~red", dispatcher)
    dispatcher.drain("shopify", timeout=20)

    assert changed
    assert sorted(shops.catalog("shopify")) == [f"shopify-{dress['id']}~blue", f"shopify-{dress['id']}~red"]


# ------------------------------------------------------------------------------------------- WooCommerce


def woo_dress(client: httpx.Client, colours: tuple[str, ...] = ("Red", "Blue")) -> dict[str, Any]:
    """A variable dress in `colours` × sizes S and M: each colour's variations show its photo; the gallery holds a
    photo of the label that belongs to no colour, and one whose alt text names the first colour."""
    body = {
        "name": "Wrap dress",
        "type": "variable",
        "images": [
            {"src": f"{CDN}/label.jpg", "alt": "The label"},
            {"src": f"{CDN}/{colours[0].lower()}-back.jpg", "alt": f"{colours[0]} dress, back"},
        ],
        "variations": woo_variations(colours),
    }
    created = client.post("/_emulator/products", json=body)
    created.raise_for_status()
    product: dict[str, Any] = created.json()
    return product


def woo_variations(colours: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "attributes": {"Color": colour, "Size": size},
            "image": f"{CDN}/{colour.lower()}-front.jpg",
            "regular_price": "40.00" if size == "S" else "45.00",
        }
        for colour in colours
        for size in ("S", "M")
    ]


def woo_tee(client: httpx.Client) -> dict[str, Any]:
    body = {
        "name": "Plain tee",
        "type": "variable",
        "images": [f"{CDN}/tee.jpg"],
        "variations": [{"attributes": {"Size": "S"}}, {"attributes": {"Size": "M"}}],
    }
    created = client.post("/_emulator/products", json=body)
    created.raise_for_status()
    product: dict[str, Any] = created.json()
    return product


def test_each_woocommerce_colour_becomes_a_product_with_its_own_images(shops: Shops) -> None:
    dress = woo_dress(shops.woo)
    tee = woo_tee(shops.woo)

    report = shops.sync("woo")

    assert report.outcome == "completed"
    catalog = shops.catalog("woo")
    assert sorted(catalog) == sorted([f"woo-{dress['id']}~red", f"woo-{dress['id']}~blue", f"woo-{tee['id']}"])
    assert image_urls(catalog[f"woo-{dress['id']}~red"]) == [f"{CDN}/red-front.jpg", f"{CDN}/red-back.jpg"]
    assert image_urls(catalog[f"woo-{dress['id']}~blue"]) == [f"{CDN}/blue-front.jpg"]
    assert catalog[f"woo-{dress['id']}~blue"]["title"] == "Wrap dress - Blue"
    assert catalog[f"woo-{dress['id']}~blue"]["metadata"]["itemGroupId"] == str(dress["id"])
    assert image_urls(catalog[f"woo-{tee['id']}"]) == [f"{CDN}/tee.jpg"]


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_colour_removed_in_woocommerce_is_deleted_on_the_next_run(shops: Shops, mode: RunMode) -> None:
    dress = woo_dress(shops.woo, ("Red", "Blue", "Green"))
    woo_tee(shops.woo)
    shops.sync("woo")
    assert f"woo-{dress['id']}~green" in shops.catalog("woo")
    shops.woo.patch(
        f"/_emulator/products/{dress['id']}", json={"variations": woo_variations(("Red", "Blue"))}
    ).raise_for_status()

    report = shops.sync("woo", mode=mode)

    assert report.outcome == "completed"
    assert shops.world.stats()["deletes"] == 1
    dresses = [key for key in shops.catalog("woo") if key.startswith(f"woo-{dress['id']}")]
    assert sorted(dresses) == [f"woo-{dress['id']}~blue", f"woo-{dress['id']}~red"]


def test_a_woocommerce_webhook_for_a_split_product_converges_every_colourway(shops: Shops) -> None:
    dress = woo_dress(shops.woo, ("Red", "Blue", "Green"))
    settle_woo(shops)
    shops.converge_fetched()
    assert len(shops.catalog("woo")) == 3

    shops.woo.patch(
        f"/_emulator/products/{dress['id']}", json={"variations": woo_variations(("Red", "Blue"))}
    ).raise_for_status()
    settle_woo(shops)
    assert shops.fetched == [("woo", str(dress["id"]))]
    shops.converge_fetched()
    assert sorted(shops.catalog("woo")) == [f"woo-{dress['id']}~blue", f"woo-{dress['id']}~red"]

    shops.woo.post(f"/_emulator/products/{dress['id']}/trash").raise_for_status()
    settle_woo(shops)
    shops.converge_fetched()

    assert shops.catalog("woo") == {}


# ------------------------------------------------------------------------------------------- the emulators' shapes


def test_only_a_splitting_source_pays_for_options_and_variants_in_its_query_cost(shops: Shops) -> None:
    for _ in range(6):
        shopify_dress(shops.shopify)
    splitting = shops.world.runtime.sources["shopify"]
    assert isinstance(splitting, ShopifySource)
    plain = splitting.model_copy(update={"split_by": None})
    sizes: dict[str, int] = {}

    for name, source in (("plain", plain), ("splitting", splitting)):
        connector = ShopifyGraphQL(source, bulk="never")
        try:
            products = list(connector.iter_products())
            sizes[name] = connector.page_size()
        finally:
            connector.close()
        assert all(isinstance(product, SourceProduct) for product in products)
        assert any(product.variants for product in products if isinstance(product, SourceProduct)) is (
            source.split_by is not None
        )

    # The emulator refuses a query over 1,000 points: pages shrink to fit the variants, and only for that source.
    assert sizes["splitting"] < sizes["plain"]
    assert shops.shop.stats.snapshot()["max_cost_exceeded"] == 0


def test_the_emulator_writes_variant_options_and_images_in_rest_and_graphql(shops: Shops) -> None:
    dress = shopify_dress(shops.shopify)
    red_front = next(image for image in dress["images"] if image["src"].endswith("/red-front.jpg"))
    red_small = dress["variants"][0]

    query = (
        "{ product(id: $id) { options { name values } variants(first: 5) { edges { node "
        "{ selectedOptions { name value } image { url } } } } } }"
    ).replace("$id", json.dumps(f"gid://shopify/Product/{dress['id']}"))
    answer = shops.shopify.post(
        f"/admin/api/{shopify_emulator.DEFAULT_API_VERSION}/graphql.json",
        json={"query": query},
        headers={"X-Shopify-Access-Token": shopify_emulator.DEFAULT_ACCESS_TOKEN},
    ).json()["data"]["product"]

    assert (red_small["option1"], red_small["option2"], red_small["image_id"]) == ("Red", "S", red_front["id"])
    assert red_front["variant_ids"] == [variant["id"] for variant in dress["variants"][:2]]
    assert [option["name"] for option in dress["options"]] == ["Color", "Size"]
    assert answer["options"] == [{"name": "Color", "values": ["Red", "Blue"]}, {"name": "Size", "values": ["S", "M"]}]
    first = answer["variants"]["edges"][0]["node"]
    assert first == {
        "selectedOptions": [{"name": "Color", "value": "Red"}, {"name": "Size", "value": "S"}],
        "image": {"url": red_front["src"]},
    }
