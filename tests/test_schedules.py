"""schedules.py: when a flow should run, from scheduleParams or from its audiences' selector schedules."""

from __future__ import annotations

import math
from typing import Any

import pytest

from exporter.model import Flow, parse_flow
from exporter.schedules import LAST_END_MS, MAX_INTERVAL_S, flow_schedule, valid_end, valid_interval

NOW = 1_790_000_000_000  # 2026-09-21 (UTC)
FLOW = "f0000000-0000-4000-8000-000000000002"


def test_a_segment_exports_schedule_comes_from_its_audiences_selectors() -> None:
    """No scheduleParams: the shortest fixed interval among audience schedules still in effect (ONCE has none,
    an ended one no longer counts), and the latest endDate when every scheduled audience has one."""

    def flow(*schedules: dict[str, str]) -> Flow:
        selectors = [
            {"type": "PLATFORM_SEGMENT", "value": {"id": f"s{i}", "schedule": s}} for i, s in enumerate(schedules)
        ]
        return parse_flow(
            {
                "id": FLOW,
                "transformations": [
                    {"name": "GeneralTransform", "params": {"segmentSelectors": {"selectors": selectors}}}
                ],
            },
            NOW,
        )

    today = "2026-09-21"  # NOW is 2026-09-21 (UTC)
    both = flow(
        {"frequency": "EVERY_3_HOURS", "endDate": "2026-10-01"},
        {"frequency": "DAILY", "endDate": "2026-12-01"},
        {"frequency": "ONCE"},
    )
    assert both.schedule_interval_seconds == 3 * 3600
    assert both.schedule_end_ms == 1_796_169_600_000  # 2026-12-02T00:00Z: the end of the latest endDate
    ended = flow({"frequency": "EVERY_3_HOURS", "endDate": "2026-09-01"}, {"frequency": "DAILY"})
    assert ended.schedule_interval_seconds == 86400 and ended.schedule_end_ms is None  # DAILY has no end
    assert flow({"frequency": "ONCE", "startDate": today}).schedule_interval_seconds is None
    odd = flow({"frequency": "EVERY_MINUTE", "endDate": "not a date"})
    assert odd.schedule_interval_seconds is None
    assert {"selectors.schedule.frequency", "selectors.schedule.endDate"} <= set(odd.invalid_fields)


@pytest.mark.parametrize(
    ("params", "seconds"),
    [
        ({"frequency": "minute", "interval": "15"}, 900.0),
        ({"frequency": "hour", "interval": 2}, 7200.0),
        ({"frequency": "Day"}, 86400.0),
        ({"timeUnit": "weeks", "interval": 1}, 604800.0),
        ({"interval": 3, "timeUnit": "hour"}, 10800.0),
    ],
)
def test_schedule_params_give_seconds_in_every_documented_spelling(params: dict[str, Any], seconds: float) -> None:
    """frequency or timeUnit (any case, singular or plural) times interval (a number or a numeric string)."""
    schedule = flow_schedule({"scheduleParams": params}, NOW)
    assert (schedule.interval_seconds, schedule.invalid) == (seconds, ())


@pytest.mark.parametrize(
    ("params", "invalid"),
    [
        ({"frequency": "minute", "interval": "fifteen"}, "scheduleParams.interval"),
        ({"frequency": "minute", "interval": 0}, "scheduleParams.interval"),
        ({"frequency": "day", "interval": -1}, "scheduleParams.interval"),
        ({"frequency": "week", "interval": 60}, "scheduleParams.interval"),
        ({"frequency": "hour", "interval": math.inf}, "scheduleParams.interval"),
        ({"frequency": 15}, "scheduleParams.frequency"),
        ({"frequency": "hour\u0000"}, "scheduleParams.frequency"),
        ({"timeUnit": ["day"]}, "scheduleParams.timeUnit"),
    ],
)
def test_an_interval_that_cannot_be_served_is_unknown_and_named(params: dict[str, Any], invalid: str) -> None:
    """An interval that is not a number, not positive, over a year or of a unit that is not a word gives no
    interval (never a made-up one) and names the field."""
    schedule = flow_schedule({"scheduleParams": params}, NOW)
    assert schedule.interval_seconds is None
    assert invalid in schedule.invalid


def test_once_streaming_and_unknown_units_have_no_interval_and_no_complaint() -> None:
    """'once', a flow without any schedule (streaming) and a unit we do not know are not errors: no interval; only
    the flow without any schedule is streaming (its runs are hourly windows)."""
    for flow in ({"scheduleParams": {"frequency": "once"}}, {}, {"scheduleParams": {"frequency": "fortnight"}}):
        schedule = flow_schedule(flow, NOW)
        assert (schedule.interval_seconds, schedule.end_ms, schedule.invalid) == (None, None, ())
        assert schedule.streaming is (flow == {})


def test_invalid_schedule_fields_reach_the_flows_invalid_fields() -> None:
    """parse_flow puts what schedules.py found invalid into Flow.invalid_fields, to be logged once."""
    flow = parse_flow({"id": FLOW, "scheduleParams": {"frequency": "minute", "interval": "x"}}, NOW)
    assert flow.schedule_interval_seconds is None
    assert "scheduleParams.interval" in flow.invalid_fields


def test_the_state_files_schedule_values_are_checked_by_the_same_rules() -> None:
    """valid_interval and valid_end (used on the state file) accept what flow_schedule can produce, nothing else."""
    assert valid_interval(900.0) == 900.0 and valid_interval(MAX_INTERVAL_S) == MAX_INTERVAL_S
    assert [valid_interval(v) for v in (0, -5, math.nan, math.inf, MAX_INTERVAL_S + 1, True, "60")] == [None] * 7
    end = flow_schedule(
        {
            "transformations": [
                {
                    "params": {
                        "segmentSelectors": {
                            "selectors": [{"value": {"schedule": {"frequency": "DAILY", "endDate": "2030-01-01"}}}]
                        }
                    }
                }
            ]
        },
        NOW,
    ).end_ms
    assert end is not None and valid_end(end) == end
    assert [valid_end(v) for v in (LAST_END_MS + 1, 0, -1, True, float(end), str(end))] == [None] * 6
