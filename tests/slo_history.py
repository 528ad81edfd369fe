"""Flows' histories as the exporter serves them, for promtool: the SLO scenario tests (test_slo.py) and the soak
(bench/slo_soak.py) write their input series with this.

A flow's series at each step follow the exporter's rules (test_freshness.py pins them against the simulator):
``aep_flow_data_as_of`` is its newest success's data window end (the run's start: its copy activity's windowEnd),
``aep_flow_next_run_expected`` its newest run's start (or its schedule's, if later) plus its interval, counters
count runs at their ends.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STEP_MIN = 5
DAYS = 30
STEPS = DAYS * 24 * 60 // STEP_MIN
HOUR = 60
DAY = 24 * HOUR
LABELS = 'job="aep-flow-exporter",instance="exp:9847",sandbox="prod",tier="production"'


@dataclass
class Run:
    start: int  # minutes from the start of the history
    minutes: int
    status: str  # success, partial_success or failed


@dataclass
class Flow:
    """One flow's 30 days: its runs, and its schedule's interval (minutes) from each change on."""

    flow_id: str
    schedule: list[tuple[int, int]]  # (from minute, interval in minutes)
    runs: list[Run] = field(default_factory=list)
    labels: str = ""  # more labels, written as 'name="value",' each

    def interval_at(self, t: int) -> int:
        return [interval for since, interval in self.schedule if since <= t][-1]

    def since_at(self, t: int) -> int:
        return [since for since, _interval in self.schedule if since <= t][-1]

    def series(self, steps: int | None = None) -> dict[str, list[float | None]]:
        """Every series of the flow at each step (``STEP_MIN`` minutes apart; ``STEPS`` of them unless given), in one
        sweep over its runs."""
        steps = STEPS if steps is None else steps
        runs = sorted(self.runs, key=lambda r: r.start)
        ends = sorted(runs, key=lambda r: r.start + r.minutes)
        out: dict[str, list[float | None]] = {}
        started = ended = 0
        totals = {"success": 0, "partial_success": 0, "failed": 0}
        data_as_of: float | None = None
        last_success: float | None = None
        ended_ids: set[int] = set()
        for step in range(steps + 1):
            t = step * STEP_MIN
            while started < len(runs) and runs[started].start <= t:
                started += 1
            while ended < len(ends) and ends[ended].start + ends[ended].minutes <= t:
                run = ends[ended]
                ended_ids.add(id(run))
                totals[run.status] = totals.get(run.status, 0) + 1
                if run.status in ("success", "partial_success"):
                    data_as_of = max(data_as_of or 0, run.start * 60)
                    last_success = max(last_success or 0, (run.start + run.minutes) * 60)
                ended += 1
            newest = runs[started - 1] if started else None
            interval, since = self.interval_at(t), self.since_at(t)
            base = max(newest.start if newest else since, since)
            values: dict[str, float | None] = {
                "aep_flow_info": 1,
                "aep_flow_enabled": 1,
                "aep_exporter_flow_up": 1,
                "aep_flow_schedule_interval_seconds": interval * 60,
                "aep_flow_schedule_since_timestamp_seconds": since * 60,
                "aep_flow_next_run_expected_timestamp_seconds": (base + interval) * 60,
                "aep_flow_data_as_of_timestamp_seconds": data_as_of,
                "aep_flow_last_success_timestamp_seconds": last_success,
                'aep_flow_last_run_status{status="failed"}': (
                    1 if newest is not None and id(newest) in ended_ids and newest.status == "failed" else 0
                ),
            }
            for status in ("success", "partial_success", "failed"):
                values[f'aep_flow_runs_total{{status="{status}"}}'] = totals[status]
            for name, value in values.items():
                out.setdefault(name, []).append(value)
        return out


def every(flow_id: str, interval: int, *, offset: int = 0, minutes: int = 10, until: int = DAYS * DAY) -> Flow:
    """A flow running every ``interval`` minutes from ``offset``, each run ``minutes`` long and successful."""
    flow = Flow(flow_id, [(0, interval)])
    flow.runs = [Run(t, minutes, "success") for t in range(offset, until, interval)]
    return flow


def values_text(values: list[float | None]) -> str:
    """promtool's expanding notation: runs of one value as ``vxN``, a missing sample as ``_``."""
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        shown = "_" if values[i] is None else f"{values[i]:g}"
        parts.append(shown if j == i else f"{shown}x{j - i}")
        i = j + 1
    return " ".join(parts)


def promtool_test(
    tmp_path: Path,
    flows: list[Flow],
    checks: list[dict[str, object]],
    *,
    rules_file: Path,
    promtool: str,
    labels: str = LABELS,
) -> subprocess.Popen[str]:
    """Start promtool test rules over the flows' history with ``checks`` (promql_expr_test cases); the rules file's
    budget group is left out (nothing alerts on it, and its month-long windows are slow to evaluate)."""
    series = []
    for flow in flows:
        for name, values in flow.series().items():
            metric, _, extra = name.partition("{")
            names = f'{labels},{flow.labels}flow_id="{flow.flow_id}"' + (f",{extra.rstrip('}')}" if extra else "")
            if metric == "aep_flow_info":
                names += f',flow_name="{flow.flow_id}",kind="source",state="enabled"'
            series.append({"series": f"{metric}{{{names}}}", "values": values_text(values)})
    rules = yaml.safe_load(rules_file.read_text())
    rules["groups"] = [g for g in rules["groups"] if g["name"] == "aep-flows"]  # the budgets alert on nothing
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, width=1_000_000))
    test = {
        "rule_files": [str(tmp_path / "rules.yml")],
        "evaluation_interval": f"{STEP_MIN}m",
        "tests": [{"interval": f"{STEP_MIN}m", "input_series": series, "promql_expr_test": checks}],
    }
    path = tmp_path / "slo.test.yml"
    path.write_text(yaml.safe_dump(test, width=1_000_000))
    return subprocess.Popen(
        [promtool, "test", "rules", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
