"""The SLO and lateness rules, written from the config's ``slo:`` section (rules.py puts them in the rules file).

Two SLOs per flow, rolled up per sandbox, in the multiwindow, multi-burn-rate form of Google's SRE workbook
("Alerting on SLOs"): a fast burn (14.4x the budget's rate over 1h and 5m, or 6x over 6h and 30m) pages, a slow
burn (3x over 1d and 2h, or 1x over 3d and 6h) opens a ticket.

- **Run success**: the share of completed runs that succeed (``partial_success`` counts as success, ``cancelled``
  as neither). An event-based SLI, and runs are few: a fast burn also needs ``FAST_BURN_MIN_FAILED`` failed runs
  in its long window (3 in 1 hour, 4 in 6), so one failed run (or three of a flow that runs every 15 minutes, in 6
  hours) opens a ticket at most: the soak (bench/slo_soak.py) paged flows that met their objective on two, then on
  three failures in 6 hours.
- **Freshness**: the share of time the data is fresh, for every enabled flow with a known schedule. Data is fresh
  while its age (now less ``aep_flow_data_as_of``, counted from ``aep_flow_schedule_since`` when the schedule
  took effect later) is at most ``freshness_max_age`` schedule intervals (an hour for a streaming flow). A
  time-based SLI: ``aep:flow_fresh`` is recorded at each evaluation, its average over a window is the SLI.

``AEPFlowLate``: no run has started by ``aep_flow_next_run_expected`` plus ``late_grace`` of the interval; it has no
``for:``, so it fires at the first evaluation past the deadline.

Objectives and thresholds are recorded series (``aep:flow_slo:*``), one per flow: the first ``slo.overrides``
entry whose ``match`` the flow's labels have, else the defaults; alerts compare with them by vector matching, so
one rule serves every objective. The names follow Sloth's conventions (``..._ratio_rate1h``); no SLO tool runs
here to check the form, the promtool tests check the behaviour.
"""

from __future__ import annotations

import json
from typing import Any

from exporter.config import SloConfig

K = "job, instance, sandbox, flow_id"
SANDBOX = "job, instance, sandbox"
SLI_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
FAST = ((14.4, "1h", "5m"), (6, "6h", "30m"))
"""(burn rate, long window, short window) pairs that page."""
SLOW = ((3, "1d", "2h"), (1, "3d", "6h"))
"""The pairs that open a ticket."""
TARGETS = ("run_success", "freshness", "freshness_max_age", "late_grace")
COMPLETED = 'status=~"success|partial_success|failed"'


def promql_duration(seconds: float) -> str:
    """``2592000`` -> ``30d``: the largest unit that divides it."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{max(whole, 1)}s"


def _selector(match: dict[str, str]) -> str:
    return "{" + ",".join(f"{name}={json.dumps(value)}" for name, value in sorted(match.items())) + "}"


def target_rules(slo: SloConfig) -> list[dict[str, Any]]:
    """One recorded series per flow and target: the first matching override's value, else the default."""
    rules = []
    for name in TARGETS:
        terms = [
            f"max by ({K}) (aep_flow_info{_selector(dict(o.match))}) * 0 + {getattr(o, name)!r}"
            for o in slo.overrides
            if getattr(o, name) is not None
        ]
        terms.append(f"max by ({K}) (aep_flow_info) * 0 + {getattr(slo, name)!r}")
        rules.append(
            {"record": f"aep:flow_slo:{name}", "expr": "\nor\n".join(terms) + ("\n" if len(terms) > 1 else "")}
        )
    return rules


def sli_rules() -> list[dict[str, Any]]:
    """The expected interval, data age and freshness per flow, the SLIs over every window, and the sandbox rollups."""
    rules: list[dict[str, Any]] = [
        {
            "record": "aep:flow_expected_interval_seconds",  # scheduled, or a streaming flow's hour; enabled only
            "expr": f"max by ({K}) (\n  aep_flow_schedule_interval_seconds\n  or on ({K})\n"
            f"  (aep_flow_next_run_expected_timestamp_seconds * 0 + 3600)\n)\nand on ({K}) (aep_flow_enabled == 1)\n",
        },
        {
            # from the data's end, or from when the schedule took effect if that is later
            "record": "aep:flow_data_age_seconds",
            "expr": f"time() - max by ({K}) (\n"
            f"  (aep_flow_data_as_of_timestamp_seconds >= on ({K}) aep_flow_schedule_since_timestamp_seconds)\n"
            f"  or on ({K}) aep_flow_schedule_since_timestamp_seconds\n"
            f"  or on ({K}) aep_flow_data_as_of_timestamp_seconds\n)\n",
        },
        {
            "record": "aep:flow_fresh",
            "expr": f"aep:flow_data_age_seconds\n<= bool on ({K})\n"
            f"(aep:flow_expected_interval_seconds * on ({K}) aep:flow_slo:freshness_max_age)\n",
        },
    ]
    for window in ("1h", "6h"):
        rules.append(
            {
                "record": f"aep:flow_runs_failed:increase{window}",
                "expr": f'sum by ({K}) (increase(aep_flow_runs_total{{status="failed"}}[{window}]))',
            }
        )
    for window in SLI_WINDOWS:
        rules.append(
            {
                "record": f"aep:flow_run_errors:ratio_rate{window}",
                "expr": f'sum by ({K}) (increase(aep_flow_runs_total{{status="failed"}}[{window}]))\n/\n'
                f"sum by ({K}) (increase(aep_flow_runs_total{{{COMPLETED}}}[{window}]))\n",
            }
        )
        rules.append(
            {"record": f"aep:flow_stale:ratio_{window}", "expr": f"1 - avg_over_time(aep:flow_fresh[{window}])"}
        )
    rules += [
        {
            "record": "aep:sandbox_run_errors:ratio_rate1d",
            "expr": f'sum by ({SANDBOX}) (increase(aep_flow_runs_total{{status="failed"}}[1d]))\n/\n'
            f"sum by ({SANDBOX}) (increase(aep_flow_runs_total{{{COMPLETED}}}[1d]))\n",
        },
        {"record": "aep:sandbox_stale:ratio_1d", "expr": f"avg by ({SANDBOX}) (aep:flow_stale:ratio_1d)"},
    ]
    return rules


def budget_rules(slo: SloConfig) -> list[dict[str, Any]]:
    """The error budget left over ``slo.window``, per flow and per sandbox (its strictest flow's objective)."""
    w = promql_duration(slo.window)
    failed = f'increase(aep_flow_runs_total{{status="failed"}}[{w}])'
    completed = f"increase(aep_flow_runs_total{{{COMPLETED}}}[{w}])"
    return [
        {
            "record": "aep:flow_slo_budget_remaining:run_success",
            "expr": f"1 - (\n  (sum by ({K}) ({failed}) / sum by ({K}) ({completed}))\n"
            f"  / on ({K}) (1 - aep:flow_slo:run_success)\n)\n",
        },
        {
            "record": "aep:flow_slo_budget_remaining:freshness",
            "expr": f"1 - (\n  (1 - avg_over_time(aep:flow_fresh[{w}]))\n"
            f"  / on ({K}) (1 - aep:flow_slo:freshness)\n)\n",
        },
        {
            "record": "aep:sandbox_slo_budget_remaining:run_success",
            "expr": f"1 - (\n  (sum by ({SANDBOX}) ({failed}) / sum by ({SANDBOX}) ({completed}))\n"
            f"  / on ({SANDBOX}) (1 - min by ({SANDBOX}) (aep:flow_slo:run_success))\n)\n",
        },
        {
            "record": "aep:sandbox_slo_budget_remaining:freshness",
            "expr": f"1 - (\n  (1 - avg by ({SANDBOX}) (avg_over_time(aep:flow_fresh[{w}])))\n"
            f"  / on ({SANDBOX}) (1 - min by ({SANDBOX}) (aep:flow_slo:freshness))\n)\n",
        },
    ]


FAST_BURN_MIN_FAILED = {"1h": 3, "6h": 4}
"""Failed runs a fast burn needs in its long window: below it, a burst of chance failures would page a flow that
meets its objective. A 15-minute flow failing 0.5 % of its runs fails about 14 times a month; three of them fall
within some 6 hours in about one month of 13 (the soak paged two of 231 such flows), four in one of 400."""


def burn(sli: str, objective: str, pairs: tuple[tuple[float, str, str], ...], guard: bool = False) -> str:
    """The burn-rate condition over ``pairs`` (long and short window both over ``rate`` times the budget)."""
    branches = []
    for rate, long, short in pairs:
        budget = f"({rate} * (1 - aep:flow_slo:{objective}))"
        parts = [f"{sli}{long} > on ({K}) {budget}", f"{sli}{short} > on ({K}) {budget}"]
        if guard:  # an event-based SLI over few runs: a single failure is no burn
            parts.append(f"aep:flow_runs_failed:increase{long} > {FAST_BURN_MIN_FAILED[long] - 0.5}")
        branches.append("(\n    " + f"\n    and on ({K}) ".join(parts) + "\n  )")
    return "(\n  " + f"\n  or on ({K})\n  ".join(branches) + "\n)"
