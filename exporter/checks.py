"""What a valid value from Adobe is: the checks model.py (where Adobe's values enter), schedules.py and the state
file (store.py) apply. Pure; a leaf.

- strings are valid Unicode without control characters (lone surrogates and controls become U+FFFD) and of
  bounded length;
- counts are integers in 0..2^53; anything else (``-1``, Adobe's "unknown", NaN, Infinity, 1e400, fractions,
  booleans, strings, objects) is ``None``, never 0;
- timestamps are epoch milliseconds (or, as Adobe sometimes writes them, seconds) from 2015 to one day ahead of
  ``now_ms``; anything else is ``None`` (a run "completed" in the year 33658 cannot pin a flow's last success).

A ``Checker`` applies them to one payload, noting the name of each field found invalid, so the caller can log
them once with the flow id.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

MAX_COUNT = 2**53
"""Largest count taken: beyond it a float (what Prometheus stores) is no longer exact."""
EARLIEST_MS = 1_420_070_400_000
"""2015-01-01: no Experience Platform run is older."""
MAX_AHEAD_MS = 86_400_000
"""A timestamp more than a day ahead of now is not a time, it is a bug."""
MAX_TEXT = 256
_UNCLEAN = re.compile(r"[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")
"""Lone surrogates (not encodable), non-characters, and control characters but tab, newline and carriage return
(which every output escapes)."""


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """``value`` made safe for a label, a log line or a page: lone surrogates and control characters (but tab,
    newline, carriage return) replaced with U+FFFD, cut to ``limit`` characters."""
    return _UNCLEAN.sub("\ufffd", value[:limit])


def valid_count(value: object) -> int | None:
    """An integer count in 0..2^53, or None (unknown)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def valid_seconds(value: object) -> float | None:
    """A duration in seconds: a finite number in 0..2^53, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and 0 <= seconds <= MAX_COUNT else None


def plausible_ms(value: object, now_ms: int) -> int | None:
    """Epoch milliseconds between 2015 and a day ahead of ``now_ms``, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or not EARLIEST_MS <= value <= now_ms + MAX_AHEAD_MS:
        return None
    return int(value)


def adobe_ms(value: object, now_ms: int) -> int | None:
    """A timestamp as Adobe writes it, in epoch milliseconds or in epoch seconds (Adobe's "Flow run notifications"
    success example has ``durationSummary`` in seconds beside ``createdAt`` in milliseconds): epoch milliseconds
    between 2015 and a day ahead of ``now_ms``, or None. The two ranges cannot be confused: 2015 in seconds is
    January 1970 in milliseconds."""
    checked = plausible_ms(value, now_ms)
    if checked is not None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return checked
    if not math.isfinite(value) or not EARLIEST_MS / 1000 <= value <= (now_ms + MAX_AHEAD_MS) / 1000:
        return None
    return int(value * 1000)


def mapping(value: object) -> dict[str, Any]:
    """A JSON object as itself, anything else as an empty one (a missing or malformed section reads as absent)."""
    return value if isinstance(value, dict) else {}


class Checker:
    """Validates one payload's values against ``now_ms``, noting the name of each field found invalid."""

    def __init__(self, now_ms: int | None) -> None:
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.invalid: list[str] = []

    def text(self, value: object, name: str, default: str = "", limit: int = MAX_TEXT) -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self.invalid.append(name)
            return default
        clean = clean_text(value, limit)
        if clean != value:
            self.invalid.append(name)
        return clean

    def ms(self, value: object, name: str) -> int | None:
        """A timestamp (milliseconds or seconds); a missing one is simply absent, a present but implausible one is
        noted."""
        if value is None:
            return None
        checked = adobe_ms(value, self.now_ms)
        if checked is None and value != -1:
            self.invalid.append(name)
        return checked

    def count(self, summary: dict[str, Any], key: str, prefix: str) -> int | None:
        if key not in summary:
            return None
        checked = valid_count(summary[key])
        if checked is None:
            self.invalid.append(f"{prefix}{key}")
        return checked
