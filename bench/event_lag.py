"""Seconds, not poll intervals: from a run's end to the changed value on /metrics, with a 10-minute poll interval,
through the Adobe I/O Events journal (its 204s asking for Adobe's 10 s retry-after, and for 1 s) and through the
signed webhook, side by side in one run.

On 127.0.0.1 only: the simulator (its clock at real speed), the exporter (poll.interval 10 minutes, so only an
event can bring a run in before the next poll) and its /metrics over HTTP. Each trial starts a run on a flow
that ends a second later, after a pause drawn uniformly over one journal read period (so not in step with the
journal's reads), then reads /metrics
every 20 ms until that flow's aep_flow_runs_total rises; the lag is the time from the run's end to that read.
The simulator's journal answers as Adobe's "Journaling API" page shows (204, retry-after, next links) and its
events take the shapes of Adobe's "Flow run notifications" examples. Prints the median and p99 per path.

    python bench/event_lag.py [--trials 20]

Nothing here asserts a number; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import time

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter, Tuning
from exporter.config import EventsConfig, WebhookConfig
from exporter.demo import demo_config
from exporter.logs import configure_logging
from exporter.simulator import SimClock, Simulator, World
from exporter.simulator.events import JOURNAL_PATH

HOOK = "/adobe-events"
POLL_INTERVAL = 600.0


async def runs_total(session: aiohttp.ClientSession, url: str, flow_id: str) -> float:
    async with session.get(url) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        if family.name == "aep_flow_runs":
            return sum(
                s.value
                for s in family.samples
                if s.labels.get("flow_id") == flow_id and s.name == "aep_flow_runs_total"
            )
    return 0.0


PATHS = {
    "journal, retry-after 10 s (Adobe's)": ("journal", "10"),
    "journal, retry-after 1 s": ("journal", "1"),
    "webhook": ("webhook", None),
}


async def measure(name: str, trials: int) -> list[float]:
    path, retry_after = PATHS[name]
    world = World(seed=5, sandboxes=("prod",), flows_per_sandbox=10, clock=SimClock(speed=1.0))
    sim = Simulator(world)
    sim.events.faults.retry_after = retry_after
    sim_runner = web.AppRunner(sim.app(), access_log=None)
    await sim_runner.setup()
    await web.TCPSite(sim_runner, "127.0.0.1", 0).start()
    sim_url = f"http://127.0.0.1:{sim_runner.addresses[0][1]}"
    config = demo_config(sim_url=sim_url, sandboxes=["prod"], listen=("127.0.0.1", 0), interval=POLL_INTERVAL)
    events = (
        EventsConfig(journal_url=f"{sim_url}{JOURNAL_PATH}")
        if path == "journal"
        else EventsConfig(webhook=WebhookConfig(host="127.0.0.1", port=0, path=HOOK, public_key_base_url=sim_url))
    )
    config = dataclasses.replace(config, events=events)
    exporter = Exporter(config, registry=CollectorRegistry(), tuning=Tuning(seed=1))
    exp_runner = web.AppRunner(exporter.web_app(), access_log=None)
    await exp_runner.setup()  # starts the exporter: its first poll, the journal reader or the webhook
    await web.TCPSite(exp_runner, "127.0.0.1", 0).start()
    metrics_url = f"http://127.0.0.1:{exp_runner.addresses[0][1]}/metrics"
    if path == "webhook":
        sim.events.webhook_url = f"http://127.0.0.1:{exporter.webhook_port}{HOOK}"
    lags: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # the first poll: at most 60 s
                if exporter.snapshot().flows:
                    break
                await asyncio.sleep(0.1)
            flows = sorted(world.flows["prod"])
            rng = random.Random(7)
            for i in range(trials):
                # A run ends at any moment of the journal's read rhythm (one retry-after long), not just after a read
                await asyncio.sleep(rng.uniform(0.0, float(retry_after or 1)))
                flow_id = flows[i % len(flows)]
                before = await runs_total(session, metrics_url, flow_id)
                flow = world.flows["prod"][flow_id]
                flow.materialize(world.now_ms(), world.max_duration_s)
                # trigger_run backdates a run's start by 2 s: 3 s of duration end it one second from now
                run = flow.trigger_run(world.now_ms(), 3.0)
                limit = time.monotonic() + 30
                while time.monotonic() < limit:
                    if await runs_total(session, metrics_url, flow_id) > before:
                        lags.append((world.now_ms() - run.end_ms) / 1000.0)
                        break
                    await asyncio.sleep(0.02)
                else:
                    lags.append(float("inf"))  # not within 30 s: the next poll would bring it (10 minutes)
    finally:
        await exp_runner.cleanup()
        await sim_runner.cleanup()
    return lags


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    configure_logging("error", "console")
    results = {name: await measure(name, args.trials) for name in PATHS}
    print(
        f"poll.interval {POLL_INTERVAL:.0f} s (without events a run waits up to that long); {args.trials} runs "
        "per path, each ending a second after it is started\n"
    )
    print("| path | median s | p99 s | max s | within 30 s |")
    print("|---|---:|---:|---:|---:|")
    for path, lags in results.items():
        seen = [lag for lag in lags if lag != float("inf")]
        print(
            f"| {path} | {statistics.median(lags):.2f} | {p99(lags):.2f} | {max(lags):.2f} | {len(seen)}/{len(lags)} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
