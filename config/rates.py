"""Request rates as people write them: `"100/minute"`, `"2/second"`, `"6000/hour"`, or a bare number per second.

The catalog vendor documents its limit per minute; operators copy that figure, so the settings take it as written
instead of asking for a per-second fraction such as 1.6667.
"""

from __future__ import annotations

import math
import re

# Seconds in each period an operator may name, with the spellings people use.
PERIODS: dict[str, float] = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_RATE = re.compile(r"^\s*(?P<count>\d+(?:\.\d+)?)\s*(?:/|\s+per\s+)\s*(?P<period>[a-z]+?)s?\s*$", re.IGNORECASE)


def parse_rate(value: object) -> float:
    """Requests per second from `"N/period"` (`/second`, `/minute`, `/hour`, also `N per minute`) or a number.

    A bare number, or a string holding one, means requests per second (what the setting always meant). Raises
    ValueError with the accepted forms otherwise.
    """
    if isinstance(value, bool):
        raise ValueError(f"a rate must be a number or 'N/minute', got {value!r}")
    if isinstance(value, int | float):
        per_second = float(value)
    elif isinstance(value, str):
        per_second = _parse_text(value)
    else:
        raise ValueError(f"a rate must be a number or 'N/minute', got {type(value).__name__}")
    if not (math.isfinite(per_second) and per_second > 0):
        raise ValueError(f"a rate must be more than zero requests, got {value!r}")
    return per_second


def format_rate(per_second: float) -> str:
    """The rate in the vendor's unit, per minute, when it is a whole number there (`100/minute`, not
    `1.6667/second`); otherwise per hour, or per minute with decimals."""
    for name, seconds in (("minute", 60.0), ("hour", 3600.0)):
        count = per_second * seconds
        if count >= 1 and abs(count - round(count)) < 1e-6:
            return f"{round(count)}/{name}"
    if per_second * 60 < 1:
        return f"{per_second * 3600:.4g}/hour"
    return f"{per_second * 60:.4g}/minute"


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    match = _RATE.match(text)
    period = PERIODS.get(match["period"].lower()) if match else None
    if match is None or period is None:
        raise ValueError(
            f"{text!r} is not a rate: write it as '100/minute', '2/second', '6000/hour' or a number per second"
        )
    return float(match["count"]) / period
