"""What the emulated store is when nobody says otherwise, and where its APIs live."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

API_PREFIX: Final = "/wp-json/wc/v3"
ADMIN_PREFIX: Final = "/_emulator"
DEFAULT_CONSUMER_KEY: Final = "ck_test"
DEFAULT_CONSUMER_SECRET: Final = "cs_test"  # noqa: S105 - the emulator's well-known test secret
# Where permalinks and image URLs point; fixed so the same seed gives the same products on any port.
DEFAULT_SITE_URL: Final = "https://woo.emulator.test"
# The store's local time zone (the REST docs' examples run at UTC-3): non-GMT dates differ from GMT ones.
DEFAULT_UTC_OFFSET: Final = timedelta(hours=-3)
