"""Retry timing shared by the IMS and Flow Service clients: full-jitter backoff and ``Retry-After``."""

from __future__ import annotations

import math
import random
import time
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 300.0
"""A ``Retry-After`` longer than this is capped: a poll must end, and the next cycle will try again."""


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """AWS "full jitter": uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (it may be a number of seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
