"""Rate limits per write key and per API token, with the `limits` library.

Counters live in memory by default (each process counts for itself) or in Redis
(`ACCORD_RATE_LIMIT_STORAGE=redis://...`), where every process shares them.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse, storage, strategies

from accord.errors import ApiError

_WHOSE = {"tracking": "write key", "api": "token", "login": "client address"}


class RateLimits:
    def __init__(self, *, tracking: str, api: str, storage_url: str, login: str = "") -> None:
        self._limiter = strategies.SlidingWindowCounterRateLimiter(storage.storage_from_string(storage_url))
        self._items: dict[str, RateLimitItem | None] = {
            "tracking": _parse(tracking, "ACCORD_RATE_LIMIT_TRACKING"),
            "api": _parse(api, "ACCORD_RATE_LIMIT_API"),
            "login": _parse(login, "ACCORD_RATE_LIMIT_LOGIN"),
        }

    def check(self, kind: str, key: str) -> None:
        """Count one request of `kind` for `key`; raise a 429 ApiError once the limit is reached."""
        item = self._items[kind]
        if item is None or self._limiter.hit(item, kind, key):
            return
        reset = self._limiter.get_window_stats(item, kind, key).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        raise ApiError(
            429,
            "rate_limited",
            f"more than {item} for this {_WHOSE[kind]}; retry in {wait} s",
            {"Retry-After": str(wait)},
        )


def _parse(text: str, setting: str) -> RateLimitItem | None:
    if not text.strip() or text.strip() == "0":
        return None  # unlimited
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{setting} must look like '1000/second' or '50/minute', not {text!r}") from None
