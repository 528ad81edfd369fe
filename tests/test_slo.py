"""The SLO and lateness rules over 30 days of history, with promtool: what pages and what does not.

Each scenario is one flow whose series are written as the exporter serves them (tests/slo_history.py).
promtool
evaluates the shipped rules over the 30 days every 5 minutes and keeps the ``ALERTS`` series, which the checks
query: a page is a firing alert with severity critical.
"""

from __future__ import annotations

import pytest

from tests.servers import RULES, binary
from tests.slo_history import DAY, DAYS, HOUR, STEP_MIN, Flow, Run, every, promtool_test


def pages(flow_id: str) -> str:
    """Minutes (evaluations) a critical alert of the flow fired, over the whole history."""
    return f'count_over_time(ALERTS{{alertstate="firing",severity="critical",flow_id="{flow_id}"}}[{DAYS}d])'


def no_samples(expr: str) -> dict[str, object]:
    return {"expr": expr, "eval_time": f"{DAYS}d", "exp_samples": []}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Flow], str]:
    """The scenarios, and promtool's verdict on the checks below (one promtool run for them all)."""
    daily_retry = every("daily-retry", DAY, offset=2 * HOUR, minutes=20)
    failing_day = 10 * DAY + 2 * HOUR
    daily_retry.runs = [r for r in daily_retry.runs if r.start != failing_day]
    daily_retry.runs += [Run(failing_day, 20, "failed"), Run(failing_day + HOUR, 20, "success")]
    daily_retry.runs.sort(key=lambda r: r.start)

    failing = every("failing-2h", HOUR, minutes=10)
    broken = range(15 * DAY + 10 * HOUR, 15 * DAY + 12 * HOUR + 1)
    failing.runs = [Run(r.start, r.minutes, "failed" if r.start in broken else r.status) for r in failing.runs]

    late = every("late", HOUR, minutes=10)
    missed = 20 * DAY + 12 * HOUR
    late.runs = [r for r in late.runs if r.start != missed]

    rescheduled = every("rescheduled", DAY, offset=2 * HOUR, minutes=20, until=5 * DAY + 12 * HOUR)
    moved = 5 * DAY + 12 * HOUR
    rescheduled.schedule.append((moved, HOUR))
    rescheduled.runs += [Run(t, 10, "success") for t in range(moved + HOUR, DAYS * DAY, HOUR)]

    healthy = [every("healthy-hourly", HOUR, minutes=15), every("healthy-15m", 15, minutes=5)]
    healthy[0].runs[100] = Run(healthy[0].runs[100].start, 15, "failed")  # one failure in a month: within budget
    flows = [daily_retry, failing, late, rescheduled, *healthy]

    def first(selector: str) -> str:
        return f'min(min_over_time(timestamp(ALERTS{{alertstate="firing",{selector}}})[{DAYS}d:{STEP_MIN}m]))'

    def holds(expr: str) -> dict[str, object]:
        return {"expr": expr, "eval_time": f"{DAYS}d", "exp_samples": [{"labels": "{}", "value": 1}]}

    late_first = first('alertname="AEPFlowLate",flow_id="late"')
    failing_first = first('severity="critical",flow_id="failing-2h"')
    quiet = [no_samples(pages(f.flow_id)) for f in (daily_retry, rescheduled, *healthy)]
    loud = [
        # the late flow: AEPFlowLate pages within its grace (25 % of an hour) plus one evaluation of the missed run
        holds(f"{late_first} >= bool {(missed + HOUR // 4) * 60}"),
        holds(f"{late_first} <= bool {(missed + HOUR // 4 + STEP_MIN) * 60}"),
        holds(f"sum({pages('late')}) <= bool {2 * HOUR // STEP_MIN}"),  # and stops paging when it runs again
        # failing for two hours: a page within them (the run-success budget's fast burn, or freshness)
        holds(f"{failing_first} <= bool {(broken.start + 2 * HOUR + HOUR // 4) * 60}"),
    ]
    tmp = tmp_path_factory.mktemp("slo")
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    procs = [
        promtool_test(
            tmp / "a", [daily_retry, rescheduled, *healthy], quiet, rules_file=RULES, promtool=binary("promtool")
        ),
        promtool_test(tmp / "b", [failing, late], loud, rules_file=RULES, promtool=binary("promtool")),
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    return flows, "\n".join(outputs)


def test_thirty_days_page_only_for_a_late_flow_and_one_failing_for_two_hours(history: tuple[list[Flow], str]) -> None:
    """Over 30 days, promtool finds no page for a daily flow whose one failed run succeeds on retry, for a flow that
    moved from daily to hourly, nor for two healthy flows (one failure in a month is within budget); a flow that
    misses a run pages within its grace plus one evaluation, and one that fails for two hours pages within them
    (plus the grace)."""
    flows, output = history
    assert len(flows) == 6
    assert output.count("SUCCESS") == 2 and "FAILED" not in output, output[-4000:]
