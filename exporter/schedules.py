"""When a flow is expected to run, read from its own definition. Pure; imports nothing of the package.

Two shapes (flow-service-api.md, "Learned since"): a source flow or a dataset export carries ``scheduleParams``
(``frequency`` or ``timeUnit``, and ``interval``); a segment export has none, and each of its audiences has a
selector schedule (``transformations[].params.segmentSelectors.selectors[].value.schedule``) with a
``frequency`` and an optional ``endDate``. A flow's interval is the shortest fixed one still in effect, its end
the latest ``endDate`` when every scheduled audience has one. Streaming flows and ``once`` have no interval.

``scheduleParams.startTime`` (epoch seconds) says when the schedule took effect. A flow with no schedule of any
kind is streaming: its runs, when it has any, are hourly windows (``STREAMING_WINDOW_S``).

Every value is checked here, as model.py checks the rest of a flow: an interval is finite, positive and at
most a year; an end date or a start time is from 2015 to 2200. The names of values found invalid are returned
so model.py can put them in ``Flow.invalid_fields``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800}
MAX_INTERVAL_S = 366 * 86400.0
SELECTOR_FREQUENCIES = {
    "DAILY": 86400.0,
    "EVERY_3_HOURS": 10800.0,
    "EVERY_6_HOURS": 21600.0,
    "EVERY_8_HOURS": 28800.0,
    "EVERY_12_HOURS": 43200.0,
    "ONCE": None,
}
FIRST_END_MS = 1_420_156_800_000
"""The end of 2015-01-01: no audience schedule of Experience Platform ended before it."""
LAST_END_MS = 7_258_118_400_000
"""2200-01-01: an audience's endDate may be years ahead, but not centuries."""


STREAMING_WINDOW_S = 3600.0
"""A streaming flow's runs are hourly windows of what it ingested: when it runs, it runs each hour."""


@dataclass(frozen=True)
class Schedule:
    interval_seconds: float | None
    end_ms: int | None
    invalid: tuple[str, ...]
    start_ms: int | None = None  # scheduleParams.startTime: when the schedule took effect (or will)
    streaming: bool = False  # no schedule of any kind: a streaming flow, in hourly windows


def valid_interval(value: object) -> float | None:
    """An interval in seconds that can be served: finite, positive, at most a year; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and 0 < seconds <= MAX_INTERVAL_S else None


def valid_end(value: object) -> int | None:
    """A schedule end in epoch ms within FIRST_END_MS..LAST_END_MS, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not FIRST_END_MS <= value <= LAST_END_MS:
        return None
    return value


def flow_schedule(flow: Mapping[str, Any], now_ms: int) -> Schedule:
    """The schedule of one ``GET /flows`` item: from ``scheduleParams``, or from its audiences' selectors."""
    invalid: list[str] = []
    params = flow.get("scheduleParams")
    if params is not None:
        start = _start_ms(_mapping(params).get("startTime"), invalid)
        return Schedule(_params_interval(params, invalid), None, tuple(invalid), start_ms=start)
    interval, end = _selector_schedule(flow.get("transformations"), now_ms, invalid)
    streaming = not any(True for _ in _selector_schedules(flow.get("transformations")))
    return Schedule(interval, end, tuple(invalid), streaming=streaming)


def _start_ms(value: object, invalid: list[str]) -> int | None:
    """``scheduleParams.startTime``, in epoch seconds (flow-service-api.md; milliseconds are taken too)."""
    if value is None:
        return None
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is not None and math.isfinite(number):
        ms = int(number * 1000) if number < 10**11 else int(number)
        checked = valid_end(ms)
        if checked is not None:
            return checked
    invalid.append("scheduleParams.startTime")
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _word(value: object, name: str, invalid: list[str]) -> str:
    """A short enumerated word (a unit, a frequency) as sent, or "" when absent or not a plain string."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 32 or not value.isprintable():
        invalid.append(name)
        return ""
    return value


def _params_interval(params: object, invalid: list[str]) -> float | None:
    sched = _mapping(params)
    raw = sched.get("interval")
    try:
        interval = float(raw) if raw is not None and not isinstance(raw, bool) else 1.0
    except (TypeError, ValueError, OverflowError):
        interval = math.nan
    unit = _word(sched.get("frequency"), "scheduleParams.frequency", invalid) or _word(
        sched.get("timeUnit"), "scheduleParams.timeUnit", invalid
    )
    seconds = UNIT_SECONDS.get(unit.lower().rstrip("s"))
    if seconds is None:  # "once", or an unknown unit
        return None
    checked = valid_interval(interval * seconds)
    if checked is None:
        invalid.append("scheduleParams.interval")
    return checked


def _selector_schedule(transformations: object, now_ms: int, invalid: list[str]) -> tuple[float | None, int | None]:
    intervals: list[float] = []
    ends: list[int | None] = []
    for schedule in _selector_schedules(transformations):
        frequency = _word(schedule.get("frequency"), "selectors.schedule.frequency", invalid).upper()
        end = _date_end_ms(schedule.get("endDate"), invalid)
        if end is not None and end <= now_ms:
            continue  # this audience's exports are over
        if frequency not in SELECTOR_FREQUENCIES:
            invalid.append("selectors.schedule.frequency")
            continue
        seconds = SELECTOR_FREQUENCIES[frequency]
        if seconds is not None:
            intervals.append(seconds)
            ends.append(end)
    end_ms = max(e for e in ends if e is not None) if ends and all(e is not None for e in ends) else None
    return (min(intervals) if intervals else None), end_ms


def _selector_schedules(transformations: object) -> Iterator[Mapping[str, Any]]:
    """Each audience selector's ``schedule`` object, wherever the flow's transformations hold one."""
    for transformation in transformations if isinstance(transformations, list) else []:
        selectors = _mapping(_mapping(_mapping(transformation).get("params")).get("segmentSelectors")).get("selectors")
        for selector in selectors if isinstance(selectors, list) else []:
            schedule = _mapping(_mapping(_mapping(selector).get("value")).get("schedule"))
            if schedule:
                yield schedule


def _date_end_ms(value: object, invalid: list[str]) -> int | None:
    """``YYYY-MM-DD`` -> the end of that day (UTC) in epoch ms; None when absent or not such a date."""
    if value is None or value == "":
        return None
    try:
        day = datetime.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        day = None
    end = None
    if day is not None and day < datetime.date.max:
        midnight = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), tzinfo=datetime.UTC)
        end = valid_end(int(midnight.timestamp() * 1000))
    if end is None:
        invalid.append("selectors.schedule.endDate")
    return end
