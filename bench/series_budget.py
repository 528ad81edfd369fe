"""Series per flow, by family, at the defaults and with each cardinality knob: what a Prometheus pays per flow.

It runs the simulator (its default mix of source and destination flows, 6 hours of history) and an exporter
in this process on 127.0.0.1, polls a few cycles, renders /metrics, and counts the flow series (every
``aep_flow_*`` sample and ``aep_exporter_flow_up``) per flow and per family, for each setting side by side.

    python bench/series_budget.py [--flows 50]

Nothing here asserts a number; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter, Tuning
from exporter.config import PROFILES, Config, MetricsConfig
from exporter.demo import demo_config
from exporter.logs import configure_logging
from exporter.simulator import SimClock, Simulator, World

FULL = PROFILES["full"]
SETTINGS: dict[str, MetricsConfig] = {
    "defaults (profile lean)": MetricsConfig(),
    "lean, histogram off": MetricsConfig(duration_histogram=False),
    "lean, activities off": MetricsConfig(activities=False),
    "profile full": FULL,
    "full, sparse_status": dataclasses.replace(FULL, sparse_status=True),
    "full, activities off": dataclasses.replace(FULL, activities=False),
    "full, histogram off": dataclasses.replace(FULL, duration_histogram=False),
}


@contextlib.asynccontextmanager
async def polled(config: Config, world: World, cycles: int = 3) -> AsyncIterator[Exporter]:
    """An exporter of ``config`` on the world's clock, after ``cycles`` poll cycles; closed on the way out."""
    exporter = Exporter(
        config, registry=CollectorRegistry(), tuning=Tuning(seed=1), clock=lambda: world.now_ms() / 1000.0
    )
    try:
        await exporter.start()
        for _ in range(cycles):
            if not await exporter.poll_once():
                raise RuntimeError("a poll cycle failed")
        yield exporter
    finally:
        await exporter.close()


async def series_by_family(world: World, sim_url: str, metrics: MetricsConfig) -> tuple[int, Counter[str]]:
    config = demo_config(sim_url=sim_url, sandboxes=list(world.flows), listen=("127.0.0.1", 0), interval=60.0)
    config = dataclasses.replace(
        config, metrics=metrics, poll=dataclasses.replace(config.poll, requests_per_second=10_000.0)
    )
    async with polled(config, world) as exporter:
        body = (await exporter.renderer.render(openmetrics=False, gzip=False)).decode()
    families: Counter[str] = Counter()
    for family in text_string_to_metric_families(body):
        if family.name.startswith("aep_flow_") or family.name == "aep_exporter_flow_up":
            families[family.name] += len(family.samples)
    return len(exporter.snapshot().flows), families


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=50, help="flows per sandbox (two sandboxes)")
    args = parser.parse_args()
    configure_logging("error", "console")
    world = World(seed=1, sandboxes=("prod", "dev"), flows_per_sandbox=args.flows, clock=SimClock(speed=0))
    sim = Simulator(world)
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    results = {}
    try:
        for name, metrics in SETTINGS.items():
            results[name] = await series_by_family(world, url, metrics)
    finally:
        await runner.cleanup()
    kinds = Counter(f.kind for flows in world.flows.values() for f in flows.values())
    print(f"{sum(kinds.values())} flows ({kinds['source']} source, {kinds['destination']} destination)\n")
    print("| setting | series per flow |")
    print("|---|---|")
    for name, (flows, families) in results.items():
        print(f"| {name} | {sum(families.values()) / flows:.1f} |")
    flows, families = results["defaults (profile lean)"]
    print("\nAt the defaults, by family (series per flow):\n")
    print("| family | series per flow |")
    print("|---|---|")
    for family, count in families.most_common():
        print(f"| {family} | {count / flows:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
