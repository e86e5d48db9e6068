"""Who a request is, as `WC_REST_Authentication` decides: HTTP Basic or query keys over HTTPS, else OAuth 1.0a
one-legged with WooCommerce's own base string, timestamp window and nonces."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, unquote

from starlette.requests import Request

from emulators.woocommerce.errors import Answer, EmulatorError
from emulators.woocommerce.store import WooStore

# OAuth timestamps further than this from the server's clock are refused (WC_REST_Authentication).
OAUTH_WINDOW_SECONDS: Final = 15 * 60


def _rawurlencode(value: str) -> str:
    return quote(value, safe="-._~")


def wc_oauth_signature(method: str, base_uri: str, params: Mapping[str, str], secret: str, algorithm: str) -> str:
    """The signature WooCommerce expects (`check_oauth_signature`): keys sorted byte-wise, keys and values
    rawurlencoded, each `key=value` rawurlencoded again and joined with `%26`, the key `consumer_secret&`."""
    ordered = sorted(((k, v) for k, v in params.items() if k != "oauth_signature"), key=lambda kv: kv[0].encode())
    query = "%26".join(_rawurlencode(f"{_rawurlencode(k)}={_rawurlencode(v)}") for k, v in ordered)
    string_to_sign = f"{method}&{_rawurlencode(base_uri)}&{query}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), algorithm).digest()
    return base64.b64encode(digest).decode("ascii")


_OAUTH_REQUIRED: Final = (
    "oauth_consumer_key",
    "oauth_timestamp",
    "oauth_nonce",
    "oauth_signature",
    "oauth_signature_method",
)
_OAUTH_HEADER_PARAM: Final = re.compile(r'(oauth_[a-z_-]*)=(?:"([^"]*)"|([^,]*))')


def _auth_error(message: str) -> EmulatorError:
    return EmulatorError(401, "woocommerce_rest_authentication_error", message)


class Authenticator:
    """Decides who a request is: the key's user, anonymous, or an authentication error."""

    def __init__(self, store: WooStore) -> None:
        self.store = store

    def check(self, request: Request, *, listing: bool, write: bool = False) -> None:
        """Raise the verdict as an `Answer` unless the request may go on. `write`: it changes something, which
        needs a key with write permission (WC_REST_Authentication::check_permissions)."""
        store = self.store
        secure = store.secure
        if secure is None:
            forwarded = request.headers.get("x-forwarded-proto", "").lower()
            secure = request.url.scheme == "https" or forwarded == "https"
        authorization = "" if store.strip_authorization else request.headers.get("authorization", "")
        method = None
        basic_failed = False
        try:
            if secure and self._basic(request, authorization):
                method = "query" if "consumer_key" in request.query_params else "basic"
            elif self._oauth(request, authorization, secure):
                method = "oauth"
        except EmulatorError as error:
            basic_failed = error.data.pop("basic", False)
            store.stats.auth_failures[error.code] += 1
            headers = (
                {
                    "WWW-Authenticate": 'Basic realm="WooCommerce API. Use a consumer key in the username field and a '
                    'consumer secret in the password field."'
                }
                if basic_failed
                else None
            )
            raise Answer(error.response(headers)) from None
        if method is None:
            store.stats.auth_failures["woocommerce_rest_cannot_view"] += 1
            message = "Sorry, you cannot list resources." if listing else "Sorry, you cannot view this resource."
            raise Answer(EmulatorError(401, "woocommerce_rest_cannot_view", message).response())
        needed = "write" if write else "read"
        if store.key_permissions not in (needed, "read_write"):
            store.stats.auth_failures["woocommerce_rest_authentication_error"] += 1
            raise Answer(_auth_error(f"The API key provided does not have {needed} permissions.").response())
        if not store.user_can_read:
            store.stats.auth_failures["woocommerce_rest_cannot_view"] += 1
            message = "Sorry, you cannot list resources." if listing else "Sorry, you cannot view this resource."
            raise Answer(EmulatorError(403, "woocommerce_rest_cannot_view", message).response())
        store.stats.auth_methods[method] += 1

    def _basic(self, request: Request, authorization: str) -> bool:
        key = request.query_params.get("consumer_key", "")
        secret = request.query_params.get("consumer_secret", "")
        if not (key and secret):
            key = secret = ""
            if authorization[:6].lower() == "basic ":
                try:
                    key, _, secret = base64.b64decode(authorization[6:].strip()).decode("utf-8").partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    key = secret = ""
        if not (key and secret) or key != self.store.consumer_key:
            # An unknown key is not an error here: WooCommerce goes on to OAuth, then treats the request as anonymous.
            return False
        if not hmac.compare_digest(secret.encode(), self.store.consumer_secret.encode()):
            raise EmulatorError(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.", basic=True)
        return True

    def _oauth(self, request: Request, authorization: str, secure: bool) -> bool:
        params = dict(request.query_params)
        if authorization.startswith("OAuth "):
            for name, quoted, bare in _OAUTH_HEADER_PARAM.findall(authorization):
                params[name] = unquote(quoted or bare)
        missing = [name for name in _OAUTH_REQUIRED if not params.get(name)]
        if len(missing) == len(_OAUTH_REQUIRED):
            return False
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise EmulatorError(
                401,
                "woocommerce_rest_authentication_missing_parameter",
                f"Missing OAuth parameter{plural} " + ", ".join(missing),
            )
        if params["oauth_consumer_key"] != self.store.consumer_key:
            raise _auth_error("Consumer key is invalid.")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        base_uri = f"{'https' if secure else 'http'}://{request.headers.get('host', '')}{raw_path.decode('latin-1')}"
        method = params["oauth_signature_method"]
        if method not in ("HMAC-SHA1", "HMAC-SHA256"):
            raise _auth_error("Invalid signature - signature method is invalid.")
        given = unquote(params["oauth_signature"].replace(" ", "+"))
        expected = wc_oauth_signature(
            request.method, base_uri, params, self.store.consumer_secret, method.removeprefix("HMAC-").lower()
        )
        if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            raise _auth_error("Invalid signature - provided signature does not match.")
        now = self.store.oauth_clock()
        try:
            stamp = int(params["oauth_timestamp"])
        except ValueError:
            stamp = -1
        if abs(stamp - now) > OAUTH_WINDOW_SECONDS:
            raise _auth_error("Invalid timestamp.")
        self.store.nonces = {n: t for n, t in self.store.nonces.items() if t >= now - OAUTH_WINDOW_SECONDS}
        if params["oauth_nonce"] in self.store.nonces:
            raise _auth_error("Invalid nonce - nonce has already been used.")
        self.store.nonces[params["oauth_nonce"]] = float(stamp)
        return True
