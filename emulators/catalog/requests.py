"""Reading requests: JSON and multipart upsert bodies, images, limits, cursors and ids, each refused with the
vendor's error code and a `details` path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from emulators.catalog.contract import (
    DEFAULT_LIMIT,
    DIGITS,
    IMAGE_HEAD_BYTES,
    IMAGE_SIGNATURES,
    MAX_FORM_FIELDS,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_JSON_BYTES,
    MAX_LIMIT,
    MAX_REQUEST_BYTES,
    MAX_UPLOAD_FILES,
    MAX_VALID_FOR_DAYS,
    MIN_VALID_FOR_DAYS,
    RESERVED_PREFIX,
    ROLES,
    UPLOAD_CHUNK,
    UPLOAD_REF_HEX,
    CatalogError,
    validation_failed,
)
from emulators.catalog.products import OMITTED, ImageSpec, Omitted, UpsertSpec


def _optional_str(payload: Mapping[str, Any], name: str) -> str | Omitted:
    if name not in payload:
        return OMITTED
    value = payload[name]
    if not isinstance(value, str):
        raise validation_failed(name, "must be a string.")
    return value


def _parse_valid_for_days(payload: Mapping[str, Any]) -> int | Omitted | None:
    if "validForDays" not in payload:
        return OMITTED
    value = payload["validForDays"]
    if value is None:
        return None
    if type(value) is not int or not MIN_VALID_FOR_DAYS <= value <= MAX_VALID_FOR_DAYS:
        raise validation_failed(
            "validForDays",
            f"must be an integer from {MIN_VALID_FOR_DAYS} to {MAX_VALID_FOR_DAYS}, or null for kept forever; "
            f"got {json.dumps(value)}.",
        )
    return value


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise validation_failed(f"{where}.url", "must be a non-empty string.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise validation_failed(f"{where}.url", "must be an absolute http(s) URL.")
    return url


def _parse_image(entry: Any, index: int) -> ImageSpec:
    where = f"images[{index}]"
    if not isinstance(entry, dict):
        raise validation_failed(where, "must be an object.")
    if "source" in entry:
        if "url" in entry or "fileKey" in entry:
            raise validation_failed(where, "put url or fileKey inside source, not beside it.")
        source = entry["source"]
        if not isinstance(source, dict):
            raise validation_failed(f"{where}.source", "must be an object.")
        where = f"{where}.source"
    else:
        source = entry  # the deprecated flat shape
    url, file_key = source.get("url"), source.get("fileKey")
    if url is None and file_key is None:
        raise CatalogError(400, "INVALID_IMAGE_INPUT", f"{where} has neither url nor fileKey; give one of them.")
    if url is not None and file_key is not None:
        raise validation_failed(where, "must hold exactly one of url or fileKey, not both.")
    if file_key is not None and (not isinstance(file_key, str) or not file_key):
        raise validation_failed(f"{where}.fileKey", "must be a non-empty string.")
    role = entry.get("role")
    if role is not None and role not in ROLES:
        raise validation_failed(f"images[{index}].role", "must be top-front, top-back or null.")
    classifications = entry.get("classifications")
    if classifications is not None and not isinstance(classifications, dict):
        raise validation_failed(f"images[{index}].classifications", "must be an object.")
    return ImageSpec(
        url=_check_url(url, where) if url is not None else None,
        file_key=file_key,
        role=role,
        classifications=classifications,
    )


def _parse_images(payload: Mapping[str, Any]) -> list[ImageSpec] | Omitted:
    if "images" in payload and "imageUrls" in payload:
        raise validation_failed("imageUrls", "send images or the deprecated imageUrls, not both.")
    if "imageUrls" in payload:
        urls = payload["imageUrls"]
        if not isinstance(urls, list):
            raise validation_failed("imageUrls", "must be an array of URLs.")
        entries: list[Any] = [{"url": url} for url in urls]
    elif "images" in payload:
        entries = payload["images"]
        if not isinstance(entries, list):
            raise validation_failed("images", "must be an array.")
    else:
        return OMITTED
    if not entries:
        raise CatalogError(400, "PRODUCT_IMAGES_REQUIRED", "A product needs at least one image; images is empty.")
    if len(entries) > MAX_IMAGES:
        raise validation_failed("images", f"at most {MAX_IMAGES} images per product; this request has {len(entries)}.")
    return [_parse_image(entry, index) for index, entry in enumerate(entries)]


def parse_upsert(payload: Any) -> UpsertSpec:
    """Validate an upsert body (the JSON, wherever it came from) without looking at the stored state."""
    if not isinstance(payload, dict):
        raise validation_failed("(body)", "must be a JSON object.")
    external_id = payload.get("externalId")
    if external_id is None or (isinstance(external_id, str) and not external_id.strip()):
        raise CatalogError(400, "EXTERNAL_ID_REQUIRED", "externalId is required.")
    if not isinstance(external_id, str):
        raise validation_failed("externalId", "must be a non-empty string.")
    if external_id.startswith(RESERVED_PREFIX):
        raise CatalogError(
            409,
            "RESERVED_EXTERNAL_ID",
            f"externalId '{external_id}' is reserved — the '{RESERVED_PREFIX}' prefix is for server-generated IDs.",
        )
    metadata: dict[str, Any] | Omitted | None = payload.get("metadata", OMITTED)
    if metadata is not None and not isinstance(metadata, dict | Omitted):
        raise validation_failed("metadata", "must be a JSON object or null.")
    auto_detect: bool | Omitted = payload.get("autoDetectImageRoles", OMITTED)
    if not isinstance(auto_detect, bool | Omitted):
        raise validation_failed("autoDetectImageRoles", "must be a boolean.")
    return UpsertSpec(
        external_id=external_id,
        title=_optional_str(payload, "title"),
        description=_optional_str(payload, "description"),
        images=_parse_images(payload),
        metadata=metadata,
        auto_detect_image_roles=auto_detect,
        valid_for_days=_parse_valid_for_days(payload),
    )


def parse_json(raw: bytes | str, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise validation_failed(where, f"is not valid JSON: {exc}.") from None


async def read_capped(request: Request, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise CatalogError(413, "PAYLOAD_TOO_LARGE", f"The JSON body is larger than {cap} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_content_length(request: Request) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise CatalogError(413, "PAYLOAD_TOO_LARGE", f"The request is larger than {MAX_REQUEST_BYTES} bytes.")


async def read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_JSON_BYTES)
    except (HTTPException, MultiPartException) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise validation_failed("(body)", f"the multipart body cannot be read: {detail}") from None


async def form_payload(form: FormData) -> Any:
    data = form.get("data")
    if data is None:
        raise validation_failed("data", "a multipart upsert needs a 'data' field holding the JSON body.")
    if isinstance(data, UploadFile):
        if data.size is not None and data.size > MAX_JSON_BYTES:
            raise CatalogError(413, "PAYLOAD_TOO_LARGE", f"The data field is larger than {MAX_JSON_BYTES} bytes.")
        return parse_json(await data.read(), "data")
    return parse_json(data, "data")


async def upload_refs(spec: UpsertSpec, form: FormData | None) -> dict[str, str]:
    """Read every file the images name and return fileKey -> `upload://…` reference."""
    refs: dict[str, str] = {}
    if isinstance(spec.images, Omitted):
        return refs
    for index, image in enumerate(spec.images):
        key = image.file_key
        if key is None or key in refs:
            continue
        upload = form.get(key) if form is not None else None
        if upload is None:
            how = "no file field of that name" if form is not None else "a JSON body (use multipart/form-data)"
            raise CatalogError(
                400, "MULTIPART_FILE_NOT_FOUND", f"images[{index}] names fileKey '{key}' but the request has {how}."
            )
        if not isinstance(upload, UploadFile):
            raise CatalogError(
                400, "MULTIPART_FILE_NOT_FOUND", f"images[{index}]: form field '{key}' is not a file upload."
            )
        if upload.size is not None and upload.size > MAX_IMAGE_BYTES:
            raise CatalogError(
                413,
                "PAYLOAD_TOO_LARGE",
                f"File '{key}' is {upload.size} bytes; at most {MAX_IMAGE_BYTES} are accepted.",
            )
        digest = hashlib.sha256()
        size = 0
        head = b""
        while chunk := await upload.read(UPLOAD_CHUNK):
            if size == 0:
                head = chunk[:IMAGE_HEAD_BYTES]
            size += len(chunk)
            digest.update(chunk)
        if size > MAX_IMAGE_BYTES:
            raise CatalogError(
                413, "PAYLOAD_TOO_LARGE", f"File '{key}' is {size} bytes; at most {MAX_IMAGE_BYTES} are accepted."
            )
        if size == 0 or not is_image(head):
            what = "is empty" if size == 0 else "is not an image (JPEG, PNG, GIF, WebP, HEIC or AVIF)"
            raise CatalogError(400, "INVALID_IMAGE", f"images[{index}]: file '{key}' {what}.")
        refs[key] = "upload://" + digest.hexdigest()[:UPLOAD_REF_HEX]
    return refs


def is_image(head: bytes) -> bool:
    """Whether a file's first bytes carry the signature of an image format the try-on accepts."""
    if head[4:8] == b"ftyp":  # ISO media (HEIC, AVIF): a box header, then the brand
        return True
    if head[:4] == b"RIFF":
        return head[8:12] == b"WEBP"
    return head.startswith(IMAGE_SIGNATURES)


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise validation_failed("limit", f"must be an integer from 1 to {MAX_LIMIT}; got '{raw[:20]}'.")
    return int(raw)


def external_id(request: Request) -> str:
    external_id: str = request.path_params["external_id"]
    if not external_id:
        raise CatalogError(
            400, "EXTERNAL_ID_REQUIRED", "The path needs an externalId: /tryon/v1/products/{externalId}."
        )
    return external_id
