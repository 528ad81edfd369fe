"""``aep-flow-exporter backfill``: the simulator's history written as OpenMetrics, turned into blocks by promtool,
loaded by a real Prometheus, continued by the live exporter with no reset at the seam and nothing counted twice."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer

from exporter import backfill as backfill_module
from exporter.backfill import backfill
from exporter.cli import main
from exporter.config import MetricsConfig
from exporter.counting import apply_runs, new_flow_state
from exporter.history import OpenMetricsDir, flow_history
from exporter.model import parse_flow, parse_run
from tests import servers
from tests.helpers import (
    assert_matches_truth,
    counter_samples,
    expected_counters,
    free_port,
    parse_samples,
    scrape,
    sim_config_yaml,
)
from tests.simulation import make_config, make_exporter, make_world, start_sim

DAY_S = 86_400
HOUR_S = 3600


def _since(truth: dict[str, Any], start_ms: int, end_ms: int | None = None) -> dict[str, Any]:
    """The truth with only the completed runs that ended in [start_ms, end_ms] (counted from start_ms on)."""
    out: dict[str, Any] = {"sandboxes": {}}
    for sandbox, flows in truth["sandboxes"].items():
        out["sandboxes"][sandbox] = {
            flow_id: {
                **flow,
                "runs": [
                    r
                    for r in flow["runs"]
                    if r["completed"] and r["end_ms"] >= start_ms and (end_ms is None or r["end_ms"] <= end_ms)
                ],
            }
            for flow_id, flow in flows.items()
        }
    return out


async def _query(prom: str, expr: str, at: float) -> dict[frozenset[tuple[str, str]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prom}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}) as resp,
    ):
        body = await resp.json()
    assert body["status"] == "success", body
    return {
        frozenset((k, v) for k, v in r["metric"].items() if k not in ("job", "instance", "__name__")): float(
            r["value"][1]
        )
        for r in body["data"]["result"]
    }


async def test_backfilled_days_equal_the_truth_and_the_live_exporter_continues_them_without_a_reset(
    tmp_path: Path, promtool: str
) -> None:
    """Three days backfilled from the simulator, blocks made by promtool and loaded by Prometheus: increase() over
    each past whole day equals the runs that ended in it, per series; the live exporter then counts on from the
    backfilled values (resets() is 0 across the seam) and its counters equal the truth since the counting start,
    each run once."""
    world = make_world(sandboxes=("prod",), flows_per_sandbox=4, history_s=4 * DAY_S)
    sim, sim_server = await start_sim(world)
    config = make_config(sim.url, sandboxes=("prod",), state_path=str(tmp_path / "state.db"))
    clock = lambda: world.now_ms() / 1000  # noqa: E731
    output = tmp_path / "history"
    port = free_port()
    target = {"job": "aep-flow-exporter", "instance": f"127.0.0.1:{port}"}  # as Prometheus will label the live series
    try:
        result = await backfill(config, since_s=3 * DAY_S, output=output, clock=clock, target=target)
        start_ms = world.now_ms() - 3 * DAY_S * 1000
        assert result.flows == 4 and result.runs > 100 and result.unreadable == 0
        assert sorted(output.glob("*.om")) == list(result.files) and 3 <= len(result.files) <= 5  # a file per day
        for day in result.files:
            made = subprocess.run(
                [promtool, "tsdb", "create-blocks-from", "openmetrics", str(day), str(tmp_path / "tsdb")],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert made.returncode == 0, made.stderr[-2000:]
        backfilled_to = world.now_ms()
        world.clock.advance(1800)  # runs end after the seam: the live exporter counts them on top
        exporter = make_exporter(config, world=world)
        server = TestServer(exporter.web_app(poll=False), host="127.0.0.1", port=port)
        await server.start_server()
        try:
            await exporter.poll_once()
            truth = _since(world.truth(), start_ms)
            live = parse_samples((await scrape(server))[1])
            counted = assert_matches_truth(live, truth)  # each run once, after a backfill and a restart
            assert counted > result.runs  # and the runs after the seam on top
            async with servers.prometheus(tmp_path, str(server.make_url(""))) as prom:
                await _checks(prom, world.truth(), start_ms, backfilled_to, counter_samples(live))
        finally:
            await server.close()
    finally:
        await sim_server.close()


async def _checks(prom: str, truth: dict[str, Any], start_ms: int, backfilled_to: int, live: dict[Any, float]) -> None:
    names = sorted({name for name, _labels in live})
    for _attempt in range(150):  # until Prometheus has scraped the live exporter twice
        if await _query(prom, "count_over_time(aep_exporter_build_info[1m]) >= 2", time.time()):
            break
        await asyncio.sleep(0.2)
    # every whole day inside the backfill: increase() equals what ended in it
    last_hour = backfilled_to // 1000 // HOUR_S * HOUR_S
    checked = 0
    for days_back in (0, 1):
        at = last_hour - days_back * DAY_S
        if (at - DAY_S) * 1000 < start_ms:
            continue
        expected = expected_counters(_since(truth, (at - DAY_S) * 1000 + 1, at * 1000))
        for name in names:
            got = await _query(prom, f"increase({name}[1d])", at)
            for (ename, labels), want in expected.items():
                if ename != name or (name, labels) not in live:
                    continue
                shown = got.get(labels, 0.0)
                assert math.isclose(shown, want, abs_tol=1e-6), (name, dict(labels), shown, want)
                checked += 1
    assert checked > 100
    now = time.time()
    # one series each, backfilled and live together (the same job and instance), never reset across the seam
    series = await _query(prom, "count(count_over_time(aep_flow_runs_total[10d]))", now)
    assert series == {frozenset(): float(sum(1 for name, _l in live if name == "aep_flow_runs_total"))}
    for name in names:
        assert await _query(prom, f"sum(resets({name}[10d]))", now) == {frozenset(): 0.0}, name
    newest = await _query(prom, "aep_flow_runs_total", now)
    assert newest == {labels: v for (name, labels), v in live.items() if name == "aep_flow_runs_total"}


def test_the_day_files_are_openmetrics_holding_every_point_of_every_series(tmp_path: Path) -> None:
    """Each day file is OpenMetrics (one # EOF) holding exactly that day's points of each series, in time order,
    with the target labels; a run's counts land at its end, the first point is 0 at the counting start."""
    now = 1_800_000_000_000
    flow = parse_flow({"id": "f1", "name": "n", "state": "enabled"}, now)
    state = new_flow_state(
        sandbox="prod", flow_id="f1", now_ms=now, initial_lookback=3 * DAY_S, duration_buckets=(60.0, 600.0)
    )
    runs = [
        parse_run(
            {
                "id": f"r{i}",
                "createdAt": now - (60 - i) * HOUR_S * 1000,
                "metrics": {
                    "durationSummary": {
                        "startedAtUTC": now - (60 - i) * HOUR_S * 1000,
                        "completedAtUTC": now - (60 - i) * HOUR_S * 1000 + 90_000,
                    },
                    "recordSummary": {"inputRecordCount": 10 + i},
                    "statusSummary": {"status": "failed" if i % 5 == 0 else "success"},
                },
            },
            now,
        )
        for i in range(50)
    ]
    update = apply_runs(state, flow, runs, now_ms=now, metrics=MetricsConfig())
    history = flow_history(
        update.state, update.counted, MetricsConfig(), end_ms=now, step_s=HOUR_S, target={"job": "j", "instance": "i"}
    )
    out = OpenMetricsDir(tmp_path / "out")
    out.add(history)
    files, _size = out.finish()
    parsed: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]] = {}
    for day in files:
        text = day.read_text()
        assert text.endswith("# EOF\n") and text.count("# EOF") == 1
        # prometheus-client's parser drops a histogram's later points in one group (it reads one point per
        # group); promtool, the reader that matters, takes them (the end-to-end test above): read the lines here
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            match = re.fullmatch(r"(\w+)\{(.*)\} (\S+) (\S+)", line)
            assert match, line
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            point = (round(float(match.group(4)) * 1000), float(match.group(3)))
            parsed.setdefault((match.group(1), labels), []).append(point)
    expected = {
        (sample, frozenset({"job": "j", "instance": "i", **dict(labels)}.items())): points
        for (_name, _doc, _typ, sample, labels), points in history.series.items()
    }
    assert parsed == expected
    inputs = expected[("aep_flow_input_records_total", frozenset({"job": "j", "instance": "i", "sandbox": "prod",
                                                                   "flow_id": "f1"}.items()))]  # fmt: skip
    assert inputs[0] == (update.state.counting_start_ms, 0.0)
    assert inputs[-1] == (now, float(sum(10 + i for i in range(50))))
    first_end = now - 60 * HOUR_S * 1000 + 90_000
    assert (first_end, 10.0) in inputs


def test_the_command_refuses_what_cannot_give_a_correct_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], simulator_process: str
) -> None:
    """backfill exits 2 listing every bad option (--since over Adobe's 90 days, --step, no state file), and 1 when
    the state file already holds flows (it would count twice or leave a reset at the seam); the first backfill
    into a new state file works and says what to do next."""
    saved, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    try:
        _refusals(tmp_path, capsys, simulator_process)
    finally:  # the command set logging up on pytest's captured stderr, which closes after this test
        structlog.configure(**saved)
        logging.getLogger().handlers = handlers


def _refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], simulator_process: str) -> None:
    listed = "  - name: prod\n    discover: {enabled: true}"
    memory = tmp_path / "memory.yaml"
    memory.write_text(sim_config_yaml(simulator_process, sandboxes=listed, rest="state:\n  path: null\n"))
    assert main(["backfill", "--config", str(memory), "--since", "120d", "--step", "5s"]) == 2
    err = capsys.readouterr().err
    assert "--since: between 1s and 90d" in err and "--step: between 1m and 1d" in err and "state.path" in err
    config = tmp_path / "config.yaml"
    config.write_text(sim_config_yaml(simulator_process, sandboxes=listed, rest="state:\n  path: state.db\n"))
    output = tmp_path / "out"
    assert main(["backfill", "--config", str(config), "--since", "1d", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert f"to {output}" in out and "promtool tsdb create-blocks-from openmetrics" in out
    assert list(output.glob("*.om"))
    assert main(["backfill", "--config", str(config), "--since", "1d", "--output", str(output)]) == 1
    assert "already holds" in capsys.readouterr().err


async def test_a_sandbox_that_cannot_be_listed_at_first_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flows listing fails more often than the client retries (the sandbox's first cycle fails): the backfill
    tries the sandbox again after a pause and writes every flow's history once."""
    monkeypatch.setattr(backfill_module, "RETRY_PAUSE_S", 0.1)
    world = make_world(sandboxes=("prod",), flows_per_sandbox=3, history_s=DAY_S)
    sim, sim_server = await start_sim(world)
    sim.simulator.fail_next("flows", 500, times=6)
    config = make_config(sim.url, sandboxes=("prod",), state_path=str(tmp_path / "state.db"))
    try:
        result = await backfill(config, since_s=DAY_S, output=tmp_path / "out", clock=lambda: world.now_ms() / 1000)
    finally:
        await sim_server.close()
    assert (result.flows, result.sandboxes_failed, result.unreadable) == (3, (), 0)
    assert sim.simulator.requests["flows"] >= 2
