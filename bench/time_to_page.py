"""Seconds from trouble to the notification: a failed run, a late flow and a burn-rate page,
through the simulator, the exporter (with the Adobe I/O Events journal, and without), a real Prometheus with the
shipped rules and the intervals of deploy/prometheus/prometheus.yml, a real Alertmanager with the shipped routes
and timings, and a local webhook receiver; both ways side by side, each with its own processes, on 127.0.0.1.

The simulator runs at real speed with every flow on a 2-minute schedule; each trial has a sandbox of its own (so
Alertmanager groups each alone, as a first alert of its kind is) labelled tier production, and starts a few seconds
after the previous one (so trials do not line up with scrapes and evaluations). Measured from:

- failed run: the run's end, to AEPFlowRunFailed at the ticket receiver (one failed run opens a ticket; the
  sandbox's other flows fail now and then, so its group is often open already and group_interval applies);
- late flow: the deadline (the next expected start, plus the grace, 25 % of 2 minutes, plus one poll interval), to
  AEPFlowLate's page;
- burn-rate page: after a success, the third failed run's end (a fast burn needs three), to
  AEPFlowRunSuccessBudgetFastBurn's page.

    python bench/time_to_page.py [--trials 4]

Prints the median and p99 per path and way. Nothing here asserts a number; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alert_pages import ROUTES, Receiver, alerting
from exporter.app import Exporter
from exporter.config import EventsConfig
from exporter.demo import demo_config
from exporter.listeners import ListenerLimits, start_listener
from exporter.logs import configure_logging
from exporter.simulator import SimClock, Simulator, World
from exporter.simulator.events import JOURNAL_PATH
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "aep-flows.rules.yml"
PATHS = ("failed run", "late flow", "burn-rate page")
ALERT = {
    "failed run": ("AEPFlowRunFailed", "ticket"),
    "late flow": ("AEPFlowLate", "pager"),
    "burn-rate page": ("AEPFlowRunSuccessBudgetFastBurn", "pager"),
}
INTERVAL_S = 120
POLL_S = 60.0
LIMITS = ListenerLimits(header_timeout=30.0, max_connections=64)


@dataclasses.dataclass
class Trial:
    path: str
    sandbox: str
    flow_id: str = ""
    since: float | None = None  # the moment the measurement starts from (epoch seconds)
    noticed: float | None = None


@contextlib.asynccontextmanager
async def setup(name: str, events: bool, sandboxes: list[str], receiver: Receiver, tmp: Path) -> AsyncIterator[Any]:
    """Simulator and exporter in this process, Prometheus and Alertmanager as processes; yields the world."""
    tmp.mkdir(parents=True, exist_ok=True)
    world = World(seed=7, sandboxes=tuple(sandboxes), flows_per_sandbox=5, clock=SimClock(speed=1.0),
                  min_interval_s=INTERVAL_S, max_duration_s=20, history_s=3600)  # fmt: skip
    sim = Simulator(world, seed=7)
    sim.events.faults.retry_after = "1"
    sim_port, exp_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    config = demo_config(sim_url=sim_url, sandboxes=sandboxes, listen=("127.0.0.1", exp_port), interval=POLL_S)
    config = dataclasses.replace(
        config,
        sandboxes=tuple(dataclasses.replace(s, labels={"tier": "production"}) for s in config.sandboxes),
        events=EventsConfig(journal_url=f"{sim_url}{JOURNAL_PATH}") if events else EventsConfig(),
    )
    exporter = Exporter(config)
    sim_runner, _s = await start_listener(sim.app(), name="sim", limits=LIMITS, host="127.0.0.1", port=sim_port)
    exp_runner, _e = await start_listener(
        exporter.web_app(), name="exporter", limits=LIMITS, host="127.0.0.1", port=exp_port
    )
    try:
        async with alerting(name, RULES, ROOT / ROUTES, receiver, exporter_port=exp_port, tmp=tmp):
            yield world
    finally:
        await exp_runner.cleanup()
        await sim_runner.cleanup()


def source_flow(world: World, sandbox: str) -> Any:
    return next(f for f in world.flows[sandbox].values() if f.kind == "source" and f.schedule_s)


async def run_trial(trial: Trial, world: World, delay: float) -> None:
    """Cause the trial's trouble after ``delay`` seconds; ``since`` is when its clock starts."""
    await asyncio.sleep(delay)
    flow = source_flow(world, trial.sandbox)
    trial.flow_id = flow.id
    if trial.path == "failed run":
        world.force_status(flow.id, "failed")
        run = flow.trigger_run(world.now_ms(), 1.0)
        trial.since = run.end_ms / 1000
    elif trial.path == "burn-rate page":
        world.force_status(flow.id, "success")
        flow.trigger_run(world.now_ms(), 1.0)
        await asyncio.sleep(45)  # a success in Prometheus's history: AEPFlowFailing stays quiet
        world.force_status(flow.id, "failed")
        for _failure in range(2):
            flow.trigger_run(world.now_ms(), 1.0)
            await asyncio.sleep(30)
        run = flow.trigger_run(world.now_ms(), 1.0)
        trial.since = run.end_ms / 1000
    else:  # late: no scheduled run starts for 5 intervals from now; the deadline is known once the runs are
        world.force_status(flow.id, "success")
        world.hold(flow.id, 5 * INTERVAL_S)
        await asyncio.sleep(30)  # a run that started before the hold has been created by now
        flow.materialize(world.now_ms(), world.max_duration_s)
        newest = max(r.started_ms for r in flow.runs)
        # the deadline: its next start, plus the grace, plus one poll interval (a start is seen at the next poll)
        trial.since = (newest + INTERVAL_S * 1000 * 1.25) / 1000 + POLL_S


def collect(trials: list[Trial], name: str, receiver: Receiver) -> None:
    for trial in trials:
        alertname, wanted = ALERT[trial.path]
        for setup_name, got_receiver, payload in receiver.got_at:
            if setup_name != name or got_receiver != wanted:
                continue
            for alert in payload[1]["alerts"]:
                labels = alert["labels"]
                ours = labels.get("alertname") == alertname and labels.get("flow_id") == trial.flow_id
                if ours and (trial.noticed is None or payload[0] < trial.noticed):
                    trial.noticed = payload[0]


class TimedReceiver(Receiver):
    """The receiver, with each notification's arrival time."""

    def __init__(self) -> None:
        super().__init__()
        self.got_at: list[tuple[str, str, tuple[float, dict[str, Any]]]] = []

    async def _hook(self, request: Any) -> Any:
        arrived = time.time()
        response = await super()._hook(request)
        setup_name, receiver, payload = self.got[-1]
        self.got_at.append((setup_name, receiver, (arrived, payload)))
        return response


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--wait", type=float, default=420.0, help="seconds to wait for the last notification")
    args = parser.parse_args()
    configure_logging("warning", "console")
    ways = {"with events (journal)": True, "without events (60 s polls)": False}
    plans: dict[str, list[Trial]] = {}
    for way in ways:
        plans[way] = [Trial(path, f"p{i}{j}") for i, path in enumerate(PATHS) for j in range(args.trials)]
    with tempfile.TemporaryDirectory(prefix="time-to-page-") as tmpdir:
        async with TimedReceiver() as receiver, contextlib.AsyncExitStack() as stack:
            worlds = {}
            for n, (way, events) in enumerate(ways.items()):
                sandboxes = [t.sandbox for t in plans[way]]
                worlds[way] = await stack.enter_async_context(
                    setup(f"w{n}", events, sandboxes, receiver, Path(tmpdir) / f"w{n}")
                )
            await asyncio.sleep(90)  # Prometheus has history of every flow before the first trial
            tasks = []
            for way in ways:
                for k, trial in enumerate(plans[way]):
                    tasks.append(asyncio.ensure_future(run_trial(trial, worlds[way], 7.0 * k + 3.1 * (k % 3))))
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline:
                for n, way in enumerate(ways):
                    collect(plans[way], f"w{n}", receiver)
                if all(t.noticed is not None for way in ways for t in plans[way]):
                    break
                await asyncio.sleep(2)
    print(f"\n{args.trials} trials per path, shipped rules, intervals and routes")
    print(f"  {'way':28} {'path':16} {'median s':>9} {'p99 s':>7} {'missed':>7}")
    for way in ways:
        for path in PATHS:
            lags = [t.noticed - t.since for t in plans[way] if t.path == path and t.noticed and t.since]
            missed = sum(1 for t in plans[way] if t.path == path and t.noticed is None)
            med = f"{statistics.median(lags):.0f}" if lags else "-"
            p99 = f"{pct(lags, 0.99):.0f}" if lags else "-"
            print(f"  {way:28} {path:16} {med:>9} {p99:>7} {missed:>7}")


if __name__ == "__main__":
    asyncio.run(main())
