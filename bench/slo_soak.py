"""Pages per flow per simulated month: the shipped rules over 30 days of 1,000 flows, evaluated by Prometheus's own
rule engine (promtool test rules, from the Debian prometheus package), counting every page (a critical alert
starting to fire) per flow.

The flows are the simulator's (its mix of schedules: 15 and 30 minutes, 1 and 2 hours, a day, and streaming
hourly), their runs at the simulator's start times. Realistic failure rates, drawn per flow: most flows fail 0.2 %
of their runs, some 0.5 % or 2 %, a few 10 %; 2 % of flows have one outage (every run failing for 2 to 6 hours),
1 % miss a few runs in a row once. Each flow's series are written as the exporter serves them
(tests/slo_history.py; test_freshness.py pins that against the simulator), every 5 minutes, and promtool evaluates
the rules every 5 minutes. A flow *meets its objectives* when its month has at most 1 % failed runs and it was
never stale (data older than the default `slo.freshness_max_age` intervals) for more than 1 % of the time.

    python bench/slo_soak.py [--flows 1000] [--days 30] [--seed 1]

Why not a long-running Prometheus server: a month of 1,000 flows at 5-minute resolution is 100 million samples,
which only a backfill could load, and backfilled data is not evaluated by the rule manager; promtool runs the same
evaluation engine over the same history. Prints the pages per flow-month by class and which alerts paged.
Only what can page is evaluated: the alerts that may be critical and the recording rules they read (the slow
burns open tickets and their 1- to 3-day windows cost most of the time). Flows go to promtool in chunks of 100,
two at a time. Nothing here asserts a number; it ends when promtool does (bounded by a timeout).
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.config import SloConfig
from exporter.simulator import World
from tests import slo_history
from tests.slo_history import HOUR, STEP_MIN, Flow, Run, promtool_test

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "aep-flows.rules.yml"
MAX_AGE = SloConfig().freshness_max_age
"""Stale: older than this many intervals, as the shipped rules say."""
RATES = ((0.80, 0.002), (0.12, 0.005), (0.05, 0.02), (0.03, 0.10))
"""(share of flows, failure probability per run)."""


def history(flows: int, days: int, seed: int) -> tuple[list[Flow], dict[str, str]]:
    """The flows' runs over ``days``, and each flow's class: ``incident`` (an outage or runs that never started:
    pages are due), else ``meets`` or ``misses`` its objectives."""
    sandboxes = tuple(f"prod{i}" for i in range(10))
    world = World(seed=seed, sandboxes=sandboxes, flows_per_sandbox=max(1, flows // len(sandboxes)), history_s=0)
    rng = random.Random(seed)
    end = days * 24 * 60
    out: list[Flow] = []
    incidents: set[str] = set()
    for sim in (f for sb in world.flows.values() for f in sb.values()):
        if sim.schedule_s is None:
            continue  # one-time flows: no schedule, no SLO
        interval = int(sim.schedule_s // 60)
        draw = rng.random()
        rate = next(p for share, p in _cumulative(RATES) if draw < share)
        offset = rng.randrange(interval)
        flow = Flow(f"{sim.sandbox}-{sim.id[:8]}", [(0, interval)])
        outage = rng.random() < 0.02
        o_start = rng.randrange(end // 4, end - 7 * HOUR) if outage else -1
        o_end = o_start + rng.randrange(2 * HOUR, 6 * HOUR) if outage else -1
        missing = rng.random() < 0.01
        m_start = rng.randrange(end // 4, end - 7 * HOUR) if missing else -1
        for t in range(offset, end, interval):
            if missing and m_start <= t < m_start + 3 * interval:
                incidents.add(flow.flow_id)
                continue  # runs that never started
            if o_start <= t < o_end:
                incidents.add(flow.flow_id)  # an outage between two runs of a daily flow is no incident
            failed = o_start <= t < o_end or rng.random() < rate
            minutes = max(1, min(interval // 3, rng.randrange(2, 30)))
            flow.runs.append(Run(t, minutes, "failed" if failed else "success"))
        out.append(flow)
    classes = {f.flow_id: "incident" if f.flow_id in incidents else _class(f, end) for f in out}
    return out, classes


def _cumulative(rates: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    total, out = 0.0, []
    for share, p in rates:
        total += share
        out.append((total, p))
    out[-1] = (1.01, out[-1][1])
    return out


def _class(flow: Flow, end: int) -> str:
    """``meets`` when at most 1 % of the runs failed and the data was stale at most 1 % of the time."""
    runs = flow.runs
    failed = sum(r.status == "failed" for r in runs) / max(1, len(runs))
    interval = flow.schedule[0][1]
    good = sorted(r.start + r.minutes for r in runs if r.status == "success")
    data_end = {r.start + r.minutes: r.start for r in runs if r.status == "success"}
    stale, newest, i = 0, None, 0
    for t in range(0, end, STEP_MIN):
        while i < len(good) and good[i] <= t:
            newest = data_end[good[i]]
            i += 1
        if newest is not None and t - newest > MAX_AGE * interval:
            stale += 1
    return "meets" if failed <= 0.01 and stale * STEP_MIN <= 0.01 * end else "misses"


def paging_rules(rules_file: Path, out: Path) -> Path:
    """The shipped rules cut to what can page: the alerts that may be critical and the recording rules they read,
    transitively (the slow burns and their 1d to 3d windows only open tickets, and cost most of the evaluation)."""
    loaded = yaml.safe_load(rules_file.read_text())
    rules = [r for g in loaded["groups"] if g["name"] == "aep-flows" for r in g["rules"]]
    recorded = {r["record"]: r for r in rules if "record" in r}
    wanted = [r for r in rules if "alert" in r and "critical" in str(r.get("labels", {}).get("severity"))]
    needed: set[str] = set()
    todo = [r["expr"] for r in wanted]
    while todo:
        for name in re.findall(r"aep:[a-z0-9_:]+", todo.pop()):
            if name in recorded and name not in needed:
                needed.add(name)
                todo.append(recorded[name]["expr"])
    kept = [r for r in rules if r.get("record") in needed or r in wanted]
    out.write_text(yaml.safe_dump({"groups": [{"name": "aep-flows", "rules": kept}]}, width=1_000_000))
    return out


def _pages(output: str, pages: collections.Counter[str], by_alert: collections.Counter[str]) -> None:
    """Add promtool's answer (the pages expression's samples, printed as a failed expectation, several to a line)
    to the counts."""
    for match in re.finditer(r"\{([^{}]*)\} (\S+?)(?:,|$)", output, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if "alertname" not in labels or "flow_id" not in labels:
            continue
        count = int(float(match.group(2)))
        pages[labels["flow_id"]] += count
        by_alert[labels["alertname"]] += count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=100, help="flows per promtool run (default %(default)s)")
    parser.add_argument("--parallel", type=int, default=2, help="promtool runs at once (default %(default)s)")
    parser.add_argument("--only", choices=("meets", "misses", "incident"), help="evaluate the flows of one class")
    args = parser.parse_args()
    promtool = shutil.which("promtool")
    if promtool is None:
        raise SystemExit("promtool not found: install Debian's prometheus package (scripts/test does)")
    slo_history.STEPS = args.days * 24 * 60 // STEP_MIN
    started = time.monotonic()
    flows, classes = history(args.flows, args.days, args.seed)
    if args.only:
        flows = [f for f in flows if classes[f.flow_id] == args.only]
    print(f"{len(flows)} scheduled flows over {args.days} days, generated in {time.monotonic() - started:.0f} s")
    # A page is a critical alert starting to fire: each episode has its own activeAt, the value of ALERTS_FOR_STATE.
    check = {
        "expr": f'changes(ALERTS_FOR_STATE{{severity="critical"}}[{args.days}d]) + 1',
        "eval_time": f"{args.days}d",
    }
    chunks = [flows[i : i + args.chunk] for i in range(0, len(flows), args.chunk)]
    pages: collections.Counter[str] = collections.Counter()
    by_alert: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="slo-soak-") as tmp:
        paging = paging_rules(RULES, Path(tmp) / "paging.rules.yml")
        started = time.monotonic()
        pending = list(enumerate(chunks))
        running: list[tuple[int, subprocess.Popen[str]]] = []
        while pending or running:
            while pending and len(running) < args.parallel:
                n, chunk = pending.pop(0)
                where = Path(tmp) / str(n)
                where.mkdir()
                proc = promtool_test(where, chunk, [{**check, "exp_samples": []}], rules_file=paging, promtool=promtool)
                running.append((n, proc))
            n, proc = running.pop(0)
            output = proc.communicate(timeout=6 * 3600)[0]
            if "SUCCESS" not in output and "alertname=" not in output:
                print(output[-3000:])
                raise SystemExit(f"promtool failed on chunk {n}")
            _pages(output, pages, by_alert)
            print(f"  chunk {n + 1}/{len(chunks)} evaluated ({time.monotonic() - started:.0f} s)", flush=True)
        evaluated = time.monotonic() - started
    months = args.days / 30
    print(f"promtool evaluated the rules every {STEP_MIN} minutes over {args.days} days in {evaluated:.0f} s\n")
    print(f"  {'flows':18} {'count':>6} {'pages':>6} {'pages per flow-month':>21} {'flows paged':>12}")
    evaluated_ids = {f.flow_id for f in flows}
    for name, shown in (("meets", "meets objectives"), ("incident", "had an incident"), ("misses", "misses them")):
        members = [f for f, c in classes.items() if c == name and f in evaluated_ids]
        total = sum(pages[f] for f in members)
        per = total / (len(members) * months) if members else 0.0
        paged = sum(1 for f in members if pages[f])
        print(f"  {shown:18} {len(members):>6} {total:>6} {per:>21.3f} {paged:>12}")
    quiet = sorted(f for f, c in classes.items() if c == "incident" and f in evaluated_ids and not pages[f])
    if quiet:
        print("  flows with an incident and no page: " + ", ".join(quiet))
    print("  pages by alert: " + (", ".join(f"{a} {n}" for a, n in sorted(by_alert.items())) or "none"))


if __name__ == "__main__":
    main()
