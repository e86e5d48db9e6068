"""Source definitions: the `[[sources]]` tables of the sources file.

Any secret may be written `"env:NAME"` to read it from the environment variable NAME. Errors name the source,
the field and the fix.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from config.accounts import DEFAULT_ACCOUNT
from config.redact import redact_url
from config.webhook_urls import check_webhook_url
from ground.errors import ConfigError

log = logging.getLogger(__name__)

SourceKind = Literal["feed", "shopify", "shopify-rest", "shopify-storefront", "woocommerce"]
FeedFormat = Literal["google-merchant", "csv", "tsv", "json"]
# Shopify (Admin GraphQL): when to read with a bulk export. "auto": full runs; "always": incremental runs too;
# "never": always page by page.
BulkMode = Literal["auto", "always", "never"]
# Products per listing page; unset: the API's maximum.
PageSize = Annotated[int | None, Field(ge=1, le=250)]

# Sources sharing an account must not render the same externalId; the source's name in front keeps them apart.
DEFAULT_EXTERNAL_ID = "{source}-{id}"
# A current stable Admin API version; merchants may pin another per source.
DEFAULT_SHOPIFY_API_VERSION = "2025-07"
_TEMPLATE_FIELD = re.compile(r"\{(\w*)\}")
TEMPLATE_VARIABLES = frozenset({"id", "handle", "source"})
_SECRET_FIELDS = ("access_token", "webhook_secret", "webhook_secret_previous", "consumer_key", "consumer_secret")
# What a missing credential is, said instead of pydantic's bare "Field required".
_CREDENTIALS = {
    "access_token": "access_token (an Admin API token with read_products)",
    "consumer_key": "consumer_key and consumer_secret (a REST key with Read access)",
    "consumer_secret": "consumer_key and consumer_secret (a REST key with Read access)",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# The keys a sources file may hold at its top level.
TOP_LEVEL_KEYS = ("sources", "accounts")


class ProductFilter(BaseModel):
    """One side of a source's filter: per field, the values (`*` matches any run of characters) that match,
    compared without regard to case. A product matches when, for every field listed, one of its values does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_type: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    vendor: tuple[str, ...] = ()
    collection: tuple[str, ...] = Field((), description="Shopify (Admin GraphQL) collections, by handle or title.")
    category: tuple[str, ...] = Field((), description="WooCommerce categories, by slug or name.")
    google_product_category: tuple[str, ...] = Field((), description="Feeds: the g:google_product_category.")

    @field_validator("*", mode="before")
    @classmethod
    def _one_or_many(cls, values: Any) -> Any:
        # `tag = "no-tryon"` means the list of that one value.
        return (values,) if isinstance(values, str) else values

    @field_validator("*")
    @classmethod
    def _check_values(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(value.strip() for value in values)
        if any(not value for value in cleaned):
            raise ValueError("an empty value matches nothing; remove it")
        return cleaned

    def fields(self) -> dict[str, tuple[str, ...]]:
        """The fields this side constrains, with their values."""
        return {name: values for name, values in self.model_dump().items() if values}


# Filter fields that only one kind of source can answer; elsewhere they would silently match nothing.
FILTER_FIELD_KINDS: dict[str, frozenset[str]] = {
    # The REST and storefront product payloads carry no collections.
    "collection": frozenset({"shopify"}),
    "category": frozenset({"woocommerce"}),
    "google_product_category": frozenset({"feed"}),
}


class SourceBase(BaseModel):
    """The fields every kind of source takes. Each kind's model adds its own; `SourceConfig` is any of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short unique name: lower-case letters, digits, '-', '_' or '.'.")
    kind: SourceKind
    url: str = Field(description="Feed path or URL; a shop's base URL.")
    external_id: str = Field(
        DEFAULT_EXTERNAL_ID,
        description="Catalog externalId template: {id}, {handle}, {source}. The default cannot collide across sources.",
    )
    valid_for_days: int | None = Field(None, ge=1, le=365)
    metadata_fields: tuple[str, ...] = Field(
        (), description="Extra source attributes (price, availability, ...) copied into catalog metadata."
    )
    full_interval: float = Field(86_400.0, gt=0, description="Seconds between full syncs.")
    incremental_interval: float = Field(900.0, gt=0, description="Seconds between incremental syncs.")
    enabled: bool = True
    mass_delete_share: float | None = Field(None, ge=0, le=1)
    restore_expired: bool = Field(
        True, description="Whether an audit restores a product the catalog let expire (valid_for_days)."
    )
    account: str = Field(
        DEFAULT_ACCOUNT, pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="The catalog account it writes to."
    )
    timeout: float = Field(30.0, gt=0, le=600)
    check_images: bool = Field(
        True, description="Check each new image URL (reachable, image/*, at most 10 MB) before it is sent."
    )
    auto_detect_image_roles: bool | None = Field(
        None, description="The catalog's autoDetectImageRoles for this source's products; omitted when unset."
    )
    include: ProductFilter | None = Field(None, description="Only products matching this go to the catalog.")
    exclude: ProductFilter | None = Field(None, description="Products matching this stay out of the catalog.")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A feed URL may carry a password or an access key; the secret fields are SecretStr already.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" and isinstance(value, str) else value

    @property
    def display_url(self) -> str:
        """The source's URL fit to show: no password, token or query-string key."""
        return redact_url(self.url)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use 1-63 lower-case letters, digits, '-', '_' or '.', starting with a letter or digit")
        return value

    @field_validator("external_id")
    @classmethod
    def _check_template(cls, value: str) -> str:
        unknown = set(_TEMPLATE_FIELD.findall(value)) - TEMPLATE_VARIABLES
        if unknown:
            raise ValueError(f"unknown template variable(s) {sorted(unknown)}; use {{id}}, {{handle}} or {{source}}")
        if "{id}" not in value and "{handle}" not in value:
            raise ValueError("the template must contain {id} or {handle} so each product gets its own externalId")
        return value

    @model_validator(mode="before")
    @classmethod
    def _replaced_settings(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "bulk_threshold" in data:
            raise ValueError(
                'bulk_threshold was replaced by bulk = "auto" | "always" | "never" (full runs now use the bulk '
                "export whatever the shop's size); remove bulk_threshold"
            )
        return data

    @model_validator(mode="after")
    def _check_filters(self) -> Self:
        """Filter fields that only some kinds of source can answer are refused elsewhere, not silently ignored."""
        for side in ("include", "exclude"):
            rules = getattr(self, side)
            for name in rules.fields() if rules is not None else ():
                kinds = FILTER_FIELD_KINDS.get(name)
                if kinds is not None and self.kind not in kinds:
                    raise ValueError(f"{side}.{name} applies to kind {' or '.join(sorted(kinds))}, not {self.kind!r}")
        return self


class SplitSource(SourceBase):
    """A kind whose products can be split by an option: feeds by an item attribute, shops by a product option
    (Shopify) or a variation attribute (WooCommerce). The storefront's products.json carries no variant images."""

    split_by: str | None = Field(
        None,
        description='One catalog product per value of this attribute or option ("color"): within a feed\'s item '
        "group, or of a Shopify product's option or a WooCommerce product's variation attribute.",
    )

    @field_validator("split_by")
    @classmethod
    def _check_split_by(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError('split_by names an attribute, e.g. "color"')
        return value


class FeedSource(SplitSource):
    kind: Literal["feed"]
    format: FeedFormat | None = None
    # What goes to the catalog, and how a feed names it.
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Feeds: attribute -> the feed's column name, e.g. {image_link: Foto, id: SKU}.",
    )


class ShopSource(SourceBase):
    """A shop: listed page by page, and it may deliver webhooks signed with the source's secret."""

    # Each secret may be "env:NAME". The previous one still verifies deliveries while the secret is rotated.
    webhook_secret: SecretStr | None = None
    webhook_secret_previous: SecretStr | None = None
    page_size: PageSize = None

    @property
    def webhook_secrets(self) -> tuple[SecretStr, ...]:
        return tuple(s for s in (self.webhook_secret, self.webhook_secret_previous) if s is not None)


class WebhookSource(ShopSource, SplitSource):
    """A shop with a webhook API that `catalog-sync webhooks` can register with; its products can be split."""

    webhook_url: str | None = Field(
        None, description="Where the shop delivers webhooks (`catalog-sync webhooks register` and `list` use it)."
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if value is None or name is None:  # an invalid name is reported on its own
            return value
        return check_webhook_url(value, name)


class ShopifyAdminSource(WebhookSource):
    """A shop read through the Admin API, GraphQL or REST, with an access token."""

    access_token: SecretStr
    api_version: str = DEFAULT_SHOPIFY_API_VERSION


class ShopifySource(ShopifyAdminSource):
    kind: Literal["shopify"]
    bulk: BulkMode = Field(
        "auto",
        description='"auto" reads full runs with a bulk export and incremental runs page by page; "always" uses '
        'bulk for incremental runs too; "never" always reads page by page.',
    )


class ShopifyRestSource(ShopifyAdminSource):
    kind: Literal["shopify-rest"]


class StorefrontSource(ShopSource):
    """A Shopify shop's public `/products.json`: no credentials, no webhook API, no variant images."""

    kind: Literal["shopify-storefront"]


class WooCommerceSource(WebhookSource):
    kind: Literal["woocommerce"]
    consumer_key: SecretStr
    consumer_secret: SecretStr


# Any source; pydantic picks the model by `kind`. Read kind-specific fields after narrowing with isinstance.
SourceConfig = Annotated[
    FeedSource | ShopifySource | ShopifyRestSource | StorefrontSource | WooCommerceSource, Field(discriminator="kind")
]
_SOURCE_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)
KIND_MODELS: dict[str, type[SourceBase]] = {
    "feed": FeedSource,
    "shopify": ShopifySource,
    "shopify-rest": ShopifyRestSource,
    "shopify-storefront": StorefrontSource,
    "woocommerce": WooCommerceSource,
}


def parse_source(table: Mapping[str, Any]) -> SourceConfig:
    """One `[[sources]]` table (secrets already resolved) as its kind's model; pydantic's `ValidationError` when
    invalid (`parse_sources` explains it)."""
    return _SOURCE_ADAPTER.validate_python(table)


def resolve_env_refs(raw: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Replace `"env:NAME"` secret values by the environment variable's value."""
    resolved = dict(raw)
    for key in _SECRET_FIELDS:
        value = resolved.get(key)
        if isinstance(value, str) and value.startswith("env:"):
            var = value[4:]
            if var not in os.environ:
                raise ConfigError(
                    f"source {source!r}: field {key!r} reads the environment variable {var}, which is not set; "
                    f"export {var}=… or write the value in the sources file"
                )
            resolved[key] = os.environ[var]
    return resolved


def parse_sources(document: Mapping[str, Any], *, origin: str = "sources file") -> dict[str, SourceConfig]:
    unknown = [key for key in document if key not in TOP_LEVEL_KEYS]
    if unknown:
        # `[[source]]` would otherwise read as a file without sources.
        lines = [f"{origin}: unknown top-level key(s):"]
        for key in unknown:
            guess = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1, cutoff=0.5)
            hint = f"did you mean [[{guess[0]}]]?" if guess else "the file holds [[sources]] and [[accounts]] only"
            lines.append(f"  {key}: {hint}")
        raise ConfigError("\n".join(lines))
    tables = document.get("sources", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}: 'sources' must be an array of tables: write each as [[sources]]")
    sources: dict[str, SourceConfig] = {}
    for index, table in enumerate(tables):
        label = str(table.get("name", f"#{index + 1}")) if isinstance(table, Mapping) else f"#{index + 1}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin}: source {label} must be a table")
        try:
            source = parse_source(resolve_env_refs(table, source=label))
        except ValidationError as exc:
            raise ConfigError(_explain(exc, label, origin)) from None
        if source.name in sources:
            raise ConfigError(f"{origin}: two sources are named {source.name!r}; give each a unique name")
        sources[source.name] = source
    return sources


def load_sources(path: Path, *, required: bool = True) -> dict[str, SourceConfig]:
    """Read the sources file. A missing file is a `ConfigError` unless not `required` (then: no sources). Templates
    that can collide are logged as warnings."""
    if not path.exists():
        if not required:
            return {}
        raise ConfigError(
            f"the sources file {path} does not exist: create it with one [[sources]] table per source (see the "
            "README), or point CATALOG_SYNC_CONFIG at it"
        )
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"the sources file {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    sources = parse_sources(document, origin=str(path))
    for warning in template_collisions(sources):
        log.warning("%s: %s", path, warning)
    return sources


def template_collisions(sources: Mapping[str, SourceConfig]) -> list[str]:
    """Pairs of sources of one account whose externalId templates can render the same id, each with the fix.

    Two templates are kept apart only by their literal text: with `{source}` filled in, the text before the first
    variable (or after the last) of one must not be a prefix (or suffix) of the other's. The state refuses a
    collision anyway (`skipped: external_id_conflict`); this says so before any product is refused."""
    warnings: list[str] = []
    listed = sorted(sources.values(), key=lambda s: s.name)
    for index, first in enumerate(listed):
        for second in listed[index + 1 :]:
            if first.account != second.account or not _can_collide(first, second):
                continue
            if "{source}" in first.external_id and "{source}" in second.external_id:
                fix = "rename one source so neither name starts the other's, or end {source} with ':' in both"
            else:
                fix = f'put {{source}} in both templates, e.g. external_id = "{DEFAULT_EXTERNAL_ID}"'
            warnings.append(
                f"sources {first.name!r} ({first.external_id!r}) and {second.name!r} ({second.external_id!r}) write "
                f"to one catalog account and their externalId templates can produce the same id; a product whose id "
                f"the other source already owns is skipped (external_id_conflict): {fix}"
            )
    return warnings


def _can_collide(first: SourceConfig, second: SourceConfig) -> bool:
    a, b = _literal_ends(first), _literal_ends(second)
    prefixes_apart = not (a[0].startswith(b[0]) or b[0].startswith(a[0]))
    suffixes_apart = not (a[1].endswith(b[1]) or b[1].endswith(a[1]))
    return not (prefixes_apart or suffixes_apart)


def _literal_ends(source: SourceConfig) -> tuple[str, str]:
    """The fixed text before the first and after the last product variable of the rendered template."""
    rendered = source.external_id.replace("{source}", source.name)
    parts = re.split(r"\{(?:id|handle)\}", rendered)
    return parts[0], parts[-1]


def _explain(exc: ValidationError, label: str, origin: str) -> str:
    lines = [f"{origin}: source {label!r} is invalid:"]
    for error in exc.errors():
        loc = error["loc"]
        # Pydantic puts the kind it picked in front of the field's location; the kind is no part of the field.
        kind = str(loc[0]) if loc and loc[0] in KIND_MODELS else None
        field = ".".join(str(part) for part in (loc[1:] if kind is not None else loc)) or "(source)"
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        shown = f" (got {redact_url(given) if field == 'url' and isinstance(given, str) else given!r})"
        if error["type"] in ("union_tag_not_found", "union_tag_invalid"):
            field, message = "kind", f"use one of {', '.join(repr(name) for name in KIND_MODELS)}"
            tag = error.get("ctx", {}).get("tag")
            shown = f" (got {tag!r})" if error["type"] == "union_tag_invalid" else ""
        elif error["type"] == "extra_forbidden":
            takers = [name for name, model in KIND_MODELS.items() if field in model.model_fields]
            if kind is not None and takers:
                lines.append(f"  {_foreign_field(field, kind, takers)}")
                continue
            message = "unknown field; remove it or check its spelling"
        elif error["type"] == "missing" and kind is not None and field in _CREDENTIALS:
            message = f"kind {kind!r} needs {_CREDENTIALS[field]}"
        # A misspelled field may be a misspelled secret: its value is never echoed, nor a secret's, nor a table's.
        if field in _SECRET_FIELDS or field == "(source)" or error["type"] == "extra_forbidden":
            shown = ""
        lines.append(f"  {field}: {message}{shown}")
    return "\n".join(lines)


def _foreign_field(field: str, kind: str, takers: list[str]) -> str:
    """Why a field of other kinds of source is refused on this one, and the fix."""
    if field == "split_by":
        return (
            f"split_by is not supported for kind {kind!r} (its product listing has no variant images); it applies "
            f"to kind {', '.join(repr(name) for name in takers)}: use kind 'shopify' with an access token, or "
            "remove split_by"
        )
    return (
        f"{field} applies to kind {' or '.join(repr(name) for name in takers)} only, not {kind!r}: remove it, or "
        "check the source's kind"
    )
