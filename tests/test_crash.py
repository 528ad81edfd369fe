"""Crash safety: kill -9 the exporter at random points of its poll cycles; no run is lost or counted twice."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from exporter.simulator import Faults
from tests.helpers import assert_matches_truth, free_port, parse_samples, sim_config_yaml
from tests.simulation import Sim, make_world, start_sim
from tests.test_query_modes import MODES

PY = [sys.executable, "-m", "exporter"]


def config(path: Path, sim_url: str, port: int, state: Path) -> Path:
    sandboxes = (
        "  - {name: prod, labels: {env: test}, discover: {enabled: true}}\n"
        "  - {name: dev, labels: {env: test}, discover: {enabled: true}}"
    )
    rest = (
        "poll: {interval: 0.3s, jitter: 0%, max_concurrency: 2, requests_per_second: 500, timeout: 5s}\n"
        f'state: {{path: {state}}}\nserver: {{listen: "127.0.0.1:{port}"}}\nlog: {{level: warning, format: json}}'
    )
    path.write_text(sim_config_yaml(sim_url, sandboxes=sandboxes, rest=rest))
    return path


async def ready(url: str, proc: subprocess.Popen[str] | None = None, timeout: float = 30.0) -> str:
    """Wait (bounded) until /readyz is 200, then return /metrics; fail at once, with its stderr, if the
    exporter exits."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"exporter exited with {proc.returncode}: {proc.communicate()[1][-2000:]}")
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        async with session.get(f"{url}/metrics") as metrics:
                            return await metrics.text()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("exporter not ready in time")


async def crash_loop(sim: Sim, tmp_path: Path, kills: int, seed: int) -> int:
    rng = random.Random(seed)
    sim.simulator.faults = dataclasses.replace(sim.simulator.faults, latency_s=0.05)  # kills land inside cycles
    port = free_port()
    state = tmp_path / "state.db"
    cfg = config(tmp_path / "c.yaml", sim.url, port, state)
    for _ in range(kills):
        proc = subprocess.Popen(
            [*PY, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await asyncio.sleep(rng.uniform(0.6, 2.5))  # startup is ~0.5 s; then somewhere in a cycle
        sim.world.clock.advance(rng.uniform(60, 1200))  # runs start and end, seen or not
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    proc = subprocess.Popen(
        [*PY, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        text = await ready(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return assert_matches_truth(parse_samples(text), sim.world.truth())


@pytest.mark.parametrize("mode", sorted(m for m in MODES if m != "honour"))
async def test_killed_exporter_is_exact_whatever_adobe_does_with_filters(mode: str, tmp_path: Path) -> None:
    """kill -9 at random points, with the runs filter refused, ignored, or runs without createdAt: after a
    restart every counter equals ground truth (the strategy is re-learned, nothing is counted twice)."""
    handle, server = await start_sim(make_world(), faults=Faults(**MODES[mode][0]))
    try:
        counted = await crash_loop(handle, tmp_path, kills=3, seed=13)
    finally:
        await server.close()
    assert counted > 50


async def test_killed_exporter_neither_loses_nor_double_counts_runs(sim: Sim, tmp_path: Path) -> None:
    """After repeated kill -9 at random points of poll cycles and a restart, every counter equals ground truth."""
    counted = await crash_loop(sim, tmp_path, kills=6, seed=11)
    print(f"crash loop: 6 kills survived, {counted} runs counted")
    assert counted > 50


@pytest.mark.slow
async def test_long_crash_loop(sim: Sim, tmp_path: Path) -> None:
    """The long version: 60 kills."""
    counted = await crash_loop(sim, tmp_path, kills=60, seed=12)
    print(f"crash loop: 60 kills survived, {counted} runs counted")
