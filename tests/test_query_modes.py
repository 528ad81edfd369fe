"""Exactly once whatever Adobe's filters do: honoured, refused (either error shape), ignored, or runs without
createdAt. Every phase (backfill, new runs, in-progress runs ending, restart with runs added while down) ends
with every counter equal to the simulator's ground truth, and the strategy in use is visible."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from exporter.simulator import Faults
from tests.helpers import assert_matches_truth, parse_samples, pick, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter, make_world, start_sim

# mode name -> (simulator behaviour, the strategy the exporter must end up using)
MODES: dict[str, tuple[dict[str, Any], str]] = {
    "honour": ({}, "created_at"),
    "refuse_platform": ({"runs_filters": "refuse", "refuse_shape": "platform"}, "started_at"),
    "refuse_gateway": ({"runs_filters": "refuse", "refuse_shape": "gateway"}, "started_at"),
    "refuse_every_time_filter": ({"runs_filters": "refuse_time"}, "newest_first"),
    "ignore_filter_and_order": ({"runs_filters": "ignore"}, "full"),
    "runs_without_created_at": ({"omit_created_at": 0.35}, "started_at"),
    "ignore_and_without_created_at": ({"runs_filters": "ignore", "omit_created_at": 0.35}, "full"),
    # Where Adobe lists runs without createdAt, and its default order, are documented nowhere: each is tried.
    "without_created_at_listed_last": ({"omit_created_at": 0.35, "missing_created_at": "last"}, "started_at"),
    "without_created_at_listed_first": ({"omit_created_at": 0.35, "missing_created_at": "first"}, "started_at"),
    "oldest_first_by_default": ({"default_order": "oldest_first"}, "created_at"),
    "refuse_time_without_created_at_last": (
        {"runs_filters": "refuse_time", "omit_created_at": 0.35, "missing_created_at": "last"},
        "newest_first",
    ),
    "refuse_time_oldest_first": (
        {
            "runs_filters": "refuse_time",
            "default_order": "oldest_first",
            "omit_created_at": 0.35,
            "missing_created_at": "first",
        },
        "full",
    ),
}


@pytest.fixture(params=sorted(MODES))
async def mode_sim(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Sim, str]]:
    """A simulator behaving in one of Adobe's plausible ways, and the strategy expected for it."""
    behaviour, expected = MODES[request.param]
    handle, server = await start_sim(make_world(), faults=Faults(**behaviour))
    yield handle, expected
    await server.close()


def strategies(samples: dict[Any, float]) -> dict[str, str]:
    """The strategy each sandbox uses, from the one-hot aep_exporter_runs_query_strategy."""
    out = {}
    for labels, val in pick(samples, "aep_exporter_runs_query_strategy").items():
        lbl = dict(labels)
        assert val in (0.0, 1.0)
        if val == 1.0:
            assert lbl["sandbox"] not in out, "one-hot: one strategy per sandbox"
            out[lbl["sandbox"]] = lbl["strategy"]
    return out


async def test_every_phase_counts_each_run_exactly_once_under_every_mode(
    mode_sim: tuple[Sim, str], tmp_path: Path
) -> None:
    """Backfill, new runs, in-progress runs ending, then a restart with runs added while down: exact after each."""
    sim, expected = mode_sim
    state = str(tmp_path / "state.db")
    first = make_exporter(make_config(sim.url, state_path=state), world=sim.world)
    server = await serve(first)
    seen_running: set[str] = set()
    try:
        assert await first.poll_once()  # backfill: first sight of every flow
        _s, text, _h = await scrape(server)
        assert_matches_truth(parse_samples(text), sim.world.truth())
        for _ in range(6):  # new runs appear; runs in progress at one poll end before a later one
            seen_running |= {run_id for s in first.snapshot().flows for run_id in s.in_progress}
            sim.world.clock.advance(17 * 60)
            assert await first.poll_once()
            _s, text, _h = await scrape(server)
            assert_matches_truth(parse_samples(text), sim.world.truth())
        _s, page, _h = await scrape(server, "/")
    finally:
        await server.close()
        await first.close()
    truth_at_stop = sim.world.truth()
    ended = {
        r["id"] for f in truth_at_stop["sandboxes"].values() for fl in f.values() for r in fl["runs"] if r["completed"]
    }
    assert seen_running & ended, "some runs were seen in progress and counted once they ended"
    samples = parse_samples(text)
    assert strategies(samples) == {"prod": expected, "dev": expected}
    assert f"<code>{expected}</code>" in page

    sim.world.clock.advance(3 * 3600)  # downtime: runs start and end unseen
    refused_before_restart = sim.simulator.faults_injected["refused_filter"]
    second = make_exporter(make_config(sim.url, state_path=state), world=sim.world)
    server = await serve(second)
    try:
        _s, restored, _h = await scrape(server)
        assert_matches_truth(parse_samples(restored), truth_at_stop)
        for _ in range(3):
            assert await second.poll_once()
            _s, text, _h = await scrape(server)
            assert_matches_truth(parse_samples(text), sim.world.truth())
            sim.world.clock.advance(11 * 60)
        assert await second.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
        await second.close()
    counted = assert_matches_truth(parse_samples(text), sim.world.truth())
    assert counted > 60
    # Learned once per sandbox (2 sandboxes x at most 2 refused strategies, over 11 cycles of 12 flows: sent per
    # flow and cycle, that would be well over 100), and kept in the state file: the restart sends none again.
    assert refused_before_restart <= 4
    assert sim.simulator.faults_injected["refused_filter"] == refused_before_restart


@pytest.mark.parametrize("shape", ["platform", "gateway"])
async def test_refused_filter_is_sent_once_per_sandbox_and_then_never(shape: str) -> None:
    """A createdAt filter refused with a 400 is probed once per sandbox (not once per flow or cycle), logged, and
    replaced by the documented startedAtUTC filter, which the following cycles use."""
    world = make_world(flows_per_sandbox=12)
    handle, server = await start_sim(world, faults=Faults(runs_filters="refuse", refuse_shape=shape))
    exporter = make_exporter(make_config(handle.url), world=world)
    web = await serve(exporter)
    try:
        for _ in range(5):
            world.clock.advance(20 * 60)
            assert await exporter.poll_once()
        _s, text, _h = await scrape(web)
    finally:
        await web.close()
        await exporter.close()
        await server.close()
    queries = [unquote_plus(r["query"]) for r in handle.simulator.request_log if r["endpoint"] == "runs"]
    refused = [q for q in queries if "createdAt>=" in q]
    assert len(refused) == 2, refused  # one probe in each of the two sandboxes
    assert handle.simulator.faults_injected["refused_filter"] == 2
    assert sum("startedAtUTC>" in q for q in queries) > 10
    samples = parse_samples(text)
    assert strategies(samples) == {"prod": "started_at", "dev": "started_at"}
    assert sum(pick(samples, "aep_exporter_flow_up").values()) == 24  # no flow went down over it
    assert_matches_truth(samples, world.truth())


async def test_ignored_filter_returning_whole_history_every_poll_never_counts_twice() -> None:
    """When Adobe ignores the filter and order, each changed flow's whole history comes back on every poll; over
    many polls the counted ids are pruned by the count floor and still nothing is counted twice."""
    world = make_world(sandboxes=("prod",), min_interval_s=900, max_duration_s=600)
    handle, server = await start_sim(world, faults=Faults(runs_filters="ignore"))
    exporter = make_exporter(make_config(handle.url, sandboxes=("prod",)), world=world)
    web = await serve(exporter)
    try:
        for _ in range(12):
            assert await exporter.poll_once()
            world.clock.advance(15 * 60)
        assert await exporter.poll_once()
        _s, text, _h = await scrape(web)
    finally:
        await web.close()
        await exporter.close()
        await server.close()
    counted = assert_matches_truth(parse_samples(text), world.truth())
    kept = max(len(s.counted) for s in exporter.snapshot().flows)
    runs_per_flow = max(len(f["runs"]) for f in world.truth()["sandboxes"]["prod"].values())
    assert counted > 100
    assert kept < runs_per_flow / 4, (kept, runs_per_flow)  # the id memory stays bounded while everything returns
    assert value(parse_samples(text), "aep_exporter_runs_query_strategy", sandbox="prod", strategy="full") == 1


async def test_a_flows_own_400_marks_that_flow_down_and_keeps_the_sandbox_strategy() -> None:
    """A 400 that every strategy gets (the flow's fault, not the filter's) marks only that flow down; the
    sandbox keeps its createdAt filter, and the flow is back, exact, at the next poll."""
    world = make_world(sandboxes=("prod",))
    handle, server = await start_sim(world)
    exporter = make_exporter(make_config(handle.url, sandboxes=("prod",)), world=world)
    web = await serve(exporter)
    try:
        assert await exporter.poll_once()
        world.clock.advance(20 * 60)
        handle.simulator.fail_next("runs", 400, times=3)  # created_at, started_at, newest_first: all refused
        assert await exporter.poll_once()
        _s, text, _h = await scrape(web)
        samples = parse_samples(text)
        assert sorted(pick(samples, "aep_exporter_flow_up").values()) == [0.0] + [1.0] * 5
        assert strategies(samples) == {"prod": "created_at"}
        world.clock.advance(60)
        assert await exporter.poll_once()
        _s, text, _h = await scrape(web)
    finally:
        await web.close()
        await exporter.close()
        await server.close()
    samples = parse_samples(text)
    assert sum(pick(samples, "aep_exporter_flow_up").values()) == 6
    assert strategies(samples) == {"prod": "created_at"}
    assert_matches_truth(samples, world.truth())
