"""What a flow's save costs the state file, with its 20 recent runs (the flow page's) and without, side by side.

It runs the simulator (two sandboxes, 2 days of history, so every flow has its 20 newest runs with their error
messages) and an exporter with a SQLite state file in this process on 127.0.0.1, polls a few cycles, loads the
states it saved, and then saves every state again into fresh state files: as stored, and with its recent runs
left out, alternating rounds so both see the same machine. Prints the JSON bytes per save and the saves per
second of each, and what one poll cycle writes when every flow has a new run.

    python bench/state_saves.py [--flows 100] [--rounds 5]

Nothing here asserts a number; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.series_budget import polled
from exporter.config import StateConfig
from exporter.demo import demo_config
from exporter.logs import configure_logging
from exporter.simulator import SimClock, Simulator, World
from exporter.statecodec import state_to_json
from exporter.store import SqliteStore
from exporter.values import FlowState


async def stored_states(world: World, sim_url: str, state_path: Path) -> list[FlowState]:
    """The states an exporter saved after a few poll cycles over ``world``."""
    config = demo_config(sim_url=sim_url, sandboxes=list(world.flows), listen=("127.0.0.1", 0), interval=60.0)
    config = dataclasses.replace(
        config,
        state=StateConfig(path=str(state_path)),
        poll=dataclasses.replace(config.poll, requests_per_second=10_000.0, initial_lookback=3 * 86400.0),
    )
    async with polled(config, world):
        pass
    store = SqliteStore(state_path)
    try:
        states, _reset = store.load(config.metrics.duration_buckets)
    finally:
        store.close()
    return states


def saves_per_second(states: list[FlowState], path: Path) -> float:
    """Every state saved once into a fresh state file."""
    store = SqliteStore(path)
    try:
        started = time.perf_counter()
        for state in states:
            store.save(state)
        return len(states) / (time.perf_counter() - started)
    finally:
        store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100, help="flows per sandbox (two sandboxes)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_logging("error", "console")
    world = World(
        seed=1, sandboxes=("prod", "dev"), flows_per_sandbox=args.flows, clock=SimClock(speed=0), history_s=2 * 86400
    )
    runner = web.AppRunner(Simulator(world).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    with tempfile.TemporaryDirectory(prefix="state-saves-") as tmp:
        try:
            states = await stored_states(world, f"http://127.0.0.1:{runner.addresses[0][1]}", Path(tmp) / "s.db")
        finally:
            await runner.cleanup()
        ways = {"as stored (recent runs kept)": states, "recent runs left out": [
            dataclasses.replace(s, recent_runs=()) for s in states
        ]}  # fmt: skip
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for n in range(args.rounds):
            for name, kept in ways.items():
                rates[name].append(saves_per_second(kept, Path(tmp) / f"{n}-{len(rates[name])}-{name[:2]}.db"))
    recent = [len(s.recent_runs) for s in states]
    print(f"{len(states)} flows, {statistics.mean(recent):.1f} recent runs each (at most {max(recent)})\n")
    print("| state saved | JSON bytes per save (median) | max | saves per second (median of rounds) |")
    print("|---|---:|---:|---:|")
    for name, kept in ways.items():
        sizes = [len(json.dumps(state_to_json(s), separators=(",", ":"))) for s in kept]
        print(f"| {name} | {statistics.median(sizes):,.0f} | {max(sizes):,} | {statistics.median(rates[name]):,.0f} |")
    total = sum(len(json.dumps(state_to_json(s), separators=(",", ":"))) for s in states)
    print(f"\nA poll cycle in which every flow has a new run writes {total / 1024:,.0f} KiB of state JSON.")


if __name__ == "__main__":
    asyncio.run(main())
