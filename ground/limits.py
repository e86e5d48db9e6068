"""The catalog's documented limits that more than one layer must respect: connectors trim what they read to them,
the catalog client refuses to send more."""

from __future__ import annotations

from typing import Final

# The catalog stores at most this many images per product (more is a 400 VALIDATION_FAILED); connectors keep the
# first ones in source order.
MAX_IMAGES: Final = 10
