"""API economy under each way Adobe might treat the /runs filters: calls per cycle, and whether counts are exact.

For each simulator mode (filters honoured, refused with either error shape, every time filter refused, ignored
with no order, runs without createdAt) it starts the simulator on 127.0.0.1 and an exporter in this process,
then measures the Flow Service calls of: the cold cycle (first sight of every flow), the first incremental
cycle (every flow has one new run; the strategy is probed), a quiet cycle (nothing new) and a cycle where
5 % of flows ran once.
The quiet floor is ceil(flows / 100) (one /flows call per 100 flows, no /runs call); a changed cycle's floor
adds one /runs call per changed flow. Counters are compared with the simulator's ground truth at the end.

    python bench/query_modes.py [--flows 500] [--history 7d]

Nothing here asserts a time; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.app import Exporter, Tuning
from exporter.demo import demo_config
from exporter.logs import configure_logging
from exporter.simulator import Faults, SimClock, Simulator, World
from exporter.syntax import parse_duration

MODES: dict[str, dict[str, Any]] = {
    "honour": {},
    "refuse (platform 400)": {"runs_filters": "refuse", "refuse_shape": "platform"},
    "refuse (gateway 400)": {"runs_filters": "refuse", "refuse_shape": "gateway"},
    "refuse every time filter": {"runs_filters": "refuse_time"},
    "ignore filter and order": {"runs_filters": "ignore"},
    "30% runs without createdAt": {"omit_created_at": 0.3},
}


@dataclass
class Row:
    mode: str
    strategy: str = ""
    cold: int = 0
    probe: int = 0
    quiet: int = 0
    changed: int = 0
    changed_flows: int = 0
    refused: int = 0
    exact: bool = False


def calls(sim: Simulator) -> int:
    return sim.requests["flows"] + sim.requests["runs"]


async def cycle(exporter: Exporter, sim: Simulator) -> int:
    sim.reset_counts()
    ok = await exporter.poll_once()
    if not ok:
        raise RuntimeError("a poll cycle failed")
    return calls(sim)


def exact(exporter: Exporter, world: World) -> bool:
    """Runs counted per flow and status equal the simulator's runs that ended after the flow's counting start
    (the tests check every counter)."""
    truth = world.truth()["sandboxes"]
    for state in exporter.snapshot().flows:
        runs = truth[state.sandbox][state.flow_id]["runs"]
        expected: dict[str, int] = dict.fromkeys(("success", "partial_success", "failed"), 0)
        for run in runs:
            if run["completed"] and run["end_ms"] >= state.counting_start_ms:
                expected[run["status"]] = expected.get(run["status"], 0) + 1
        if dict(state.runs_total) != expected:
            return False
    return True


async def measure(mode: str, behaviour: dict[str, Any], flows: int, history_s: float) -> Row:
    world = World(
        seed=5,
        sandboxes=("prod",),
        flows_per_sandbox=flows,
        history_s=history_s,
        clock=SimClock(speed=0),
        min_interval_s=3600,
        max_duration_s=90,
    )
    sim = Simulator(world, faults=Faults(**behaviour))
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = demo_config(sim_url=f"http://127.0.0.1:{port}", sandboxes=["prod"], listen=("127.0.0.1", 0), interval=60.0)
    # Calls are what is measured here, not pacing: lift the client-side rate limit.
    config = dataclasses.replace(config, poll=dataclasses.replace(config.poll, requests_per_second=10_000.0))
    exporter = Exporter(
        config,
        registry=CollectorRegistry(),
        tuning=Tuning(backoff_base=0.01, seed=1),
        clock=lambda: world.now_ms() / 1000.0,
    )
    row = Row(mode=mode)
    try:
        await exporter.start()
        row.cold = await cycle(exporter, sim)
        # Runs start in the first ~10 minutes of each hour and last at most 90 s: 15 minutes on, every flow has
        # one new run that has ended, and nothing more happens for 45 minutes.
        world.clock.advance(900)
        row.probe = await cycle(exporter, sim)
        row.quiet = await cycle(exporter, sim)
        row.changed_flows = len(world.trigger_runs(0.05, duration_s=1.0, seed=1))
        world.clock.advance(30)
        row.changed = await cycle(exporter, sim)
        row.refused = sim.faults_injected["refused_filter"]
        row.strategy = exporter.snapshot().sandboxes[0].runs_strategy
        row.exact = exact(exporter, world)
    finally:
        await exporter.close()
        await runner.cleanup()
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=500)
    parser.add_argument("--history", default="7d", help="runs already made, one an hour per flow")
    args = parser.parse_args()
    configure_logging("warning", "console")
    rows = [
        await measure(mode, behaviour, args.flows, parse_duration(args.history)) for mode, behaviour in MODES.items()
    ]
    floor = math.ceil(args.flows / 100)
    print(
        f"{args.flows} flows in one sandbox, a run every hour, {args.history} of history "
        f"({args.flows * int(parse_duration(args.history) // 3600)} runs)\n"
    )
    print(
        "| mode | strategy | cold cycle | first incremental | quiet cycle (floor) | 5% changed (floor) "
        "| refused requests | counts exact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.mode} | {r.strategy} | {r.cold} | {r.probe} | {r.quiet} ({floor}) "
            f"| {r.changed} ({floor + r.changed_flows}) | {r.refused} | {'yes' if r.exact else 'NO'} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
