"""Poller behaviour: API economy, flows that fail or vanish, discovery filters, caps and sharding."""

from __future__ import annotations

import math

import pytest

from exporter.config import MetricsConfig
from exporter.flowlist import shard_of
from tests.helpers import parse_samples, pick, poll_and_scrape, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter, make_world, start_sim


@pytest.mark.parametrize(("flows", "discover"), [(250, False), (250, True), (40, False)])
async def test_quiet_cycle_costs_ceil_n_over_100_flow_calls_and_no_runs_call(flows: int, discover: bool) -> None:
    """With nothing new upstream, a cycle over N flows makes ceil(N/100) /flows calls and no /runs call."""
    world = make_world(sandboxes=("prod",), flows_per_sandbox=flows, min_interval_s=86400, max_duration_s=90)
    handle, server = await start_sim(world)
    try:
        ids = {"prod": list(world.flows["prod"])} if not discover else None
        exporter = make_exporter(make_config(handle.url, sandboxes=("prod",), discover=discover, flows=ids))
        await exporter.start()
        assert await exporter.poll_once()  # first sight: every flow's runs are read once
        assert handle.simulator.requests["runs"] == flows
        world.clock.advance(300)  # every run has finished; nothing new starts for a day
        assert await exporter.poll_once()
        handle.simulator.reset_counts()
        assert await exporter.poll_once()
        assert handle.simulator.requests["flows"] == math.ceil(flows / 100)
        assert handle.simulator.requests["runs"] == 0
        await exporter.close()
    finally:
        await server.close()


async def test_only_changed_flows_get_a_runs_call(sim: Sim) -> None:
    """When one flow gets a new run, the next cycle reads /runs for that flow only (plus flows still running)."""
    world = make_world(sandboxes=("prod",), flows_per_sandbox=30, min_interval_s=86400, max_duration_s=90)
    handle, server = await start_sim(world)
    try:
        exporter = make_exporter(make_config(handle.url, sandboxes=("prod",)))
        await exporter.start()
        assert await exporter.poll_once()
        world.clock.advance(300)
        assert await exporter.poll_once()
        flow = next(iter(world.flows["prod"].values()))
        flow.trigger_run(world.now_ms(), 1.0)  # someone clicked "run now" on this flow
        world.clock.advance(60)
        handle.simulator.reset_counts()
        assert await exporter.poll_once()
        runs_calls = [r for r in handle.simulator.request_log if r["endpoint"] == "runs"]
        assert len(runs_calls) == 1 and flow.id in runs_calls[0]["query"]
        await exporter.close()
    finally:
        await server.close()


async def test_flow_that_fails_keeps_its_values_and_others_go_on(sim: Sim) -> None:
    """A flow whose /runs fails shows flow_up 0 and keeps its series; the other flows update normally."""
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",)))
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        _s, before_text, _h = await scrape(server)
        before = parse_samples(before_text)
        sim.world.clock.advance(2 * 3600)
        flow_id = next(iter(sim.world.flows["prod"]))
        sim.simulator.faults.failing_flows = [flow_id]
        assert await exporter.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    samples = parse_samples(text)
    ups = pick(samples, "aep_exporter_flow_up")
    down = [dict(k)["flow_id"] for k, v in ups.items() if v == 0]
    assert down == [flow_id] and sum(ups.values()) == len(ups) - 1
    for name in ("aep_flow_runs_total", "aep_flow_last_run_status", "aep_flow_last_success_timestamp_seconds"):
        kept = pick(samples, name, flow_id=flow_id)
        assert kept and kept == pick(before, name, flow_id=flow_id), name
    others_before = sum(v for k, v in pick(before, "aep_flow_runs_total").items() if ("flow_id", flow_id) not in k)
    others_after = sum(v for k, v in pick(samples, "aep_flow_runs_total").items() if ("flow_id", flow_id) not in k)
    assert others_after > others_before


async def test_configured_flow_that_404s_is_down_and_vanished_discovered_flow_disappears(sim: Sim) -> None:
    """An explicit flow id the API does not know shows flow_up 0; a discovered flow that was deleted vanishes."""
    victim = next(iter(sim.world.flows["prod"]))
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",), flows={"prod": ["not-a-real-flow"]}))
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        sim.world.delete_flow(victim)
        assert await exporter.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    samples = parse_samples(text)
    assert value(samples, "aep_exporter_flow_up", sandbox="prod", flow_id="not-a-real-flow") == 0
    assert not pick(samples, "aep_flow_info", flow_id="not-a-real-flow")
    assert not [k for k in samples if ("flow_id", victim) in k[1]]
    assert value(samples, "aep_exporter_flows", sandbox="prod") == 6  # five discovered + the configured one


async def test_a_flow_hidden_by_an_access_label_is_unreadable_with_both_causes_named(sim: Sim) -> None:
    """A configured flow that gets an access label the credential's role lacks ("Apply access labels to sources
    dataflows": no longer listed, its runs neither) shows flow_up 0, keeps its values, and is logged once with a
    reason naming both a wrong id and an access label, since Adobe's answer cannot tell them apart."""
    from structlog.testing import capture_logs

    flow_id = next(iter(sim.world.flows["prod"]))
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",), flows={"prod": [flow_id]}))
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        sim.simulator.faults.labelled_flows = [flow_id]
        with capture_logs() as logs:
            assert await exporter.poll_once()
            assert await exporter.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    samples = parse_samples(text)
    assert value(samples, "aep_exporter_flow_up", sandbox="prod", flow_id=flow_id) == 0
    assert pick(samples, "aep_flow_info", flow_id=flow_id)  # its last values are kept
    (line,) = [entry for entry in logs if entry["event"] == "flow_unreadable"]
    assert line["flow_id"] == flow_id
    assert "wrong or deleted id" in line["reason"] and "access label" in line["reason"]
    assert "FLOW-1439-404" in line["reason"]


async def test_discovery_filters_by_kind_and_name(sim: Sim) -> None:
    """discover.kinds and include/exclude regexes decide which flows are tracked."""
    from dataclasses import replace

    from exporter.config import DiscoverConfig

    config = make_config(sim.url, sandboxes=("prod",))
    names = [f.name for f in sim.world.flows["prod"].values() if f.kind == "source"]
    excluded = names[0]
    import re

    sandbox = replace(
        config.sandboxes[0],
        discover=DiscoverConfig(enabled=True, kinds=("source",), exclude=(re.compile(re.escape(excluded)),)),
    )
    exporter = make_exporter(replace(config, sandboxes=(sandbox,)))
    await exporter.start()
    try:
        assert await exporter.poll_once()
    finally:
        await exporter.close()
    tracked = {s.flow.name for s in exporter.snapshot().flows if s.flow}
    assert tracked == set(names) - {excluded}
    queries = [r["query"] for r in sim.simulator.request_log if r["endpoint"] == "flows"]
    assert all("isSourceFlow" in q for q in queries)


async def test_max_flows_per_sandbox_drops_the_rest_and_says_so(sim: Sim) -> None:
    """Beyond max_flows_per_sandbox, flows are not tracked and aep_exporter_flows_dropped counts them."""
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",), metrics=MetricsConfig(max_flows_per_sandbox=4)))
    samples = parse_samples(await poll_and_scrape(exporter))
    assert len(pick(samples, "aep_flow_info")) == 4
    assert value(samples, "aep_exporter_flows_dropped", sandbox="prod") == 2


@pytest.mark.parametrize("total", [1, 2, 3, 7])
def test_shards_partition_the_fleet(total: int) -> None:
    """For n shards, each flow belongs to exactly one shard: disjoint sets whose union is the whole fleet."""
    world = make_world(sandboxes=("prod", "dev", "stage"), flows_per_sandbox=200)
    fleet = {(sb, fid) for sb, flows in world.flows.items() for fid in flows}
    shards = [{k for k in fleet if shard_of(k[0], k[1], total) == i} for i in range(total)]
    assert set().union(*shards) == fleet
    assert sum(len(s) for s in shards) == len(fleet)
    if total > 1:
        assert min(len(s) for s in shards) > len(fleet) / total / 2  # roughly even


def test_shard_hash_is_stable_across_processes() -> None:
    """The shard of a flow is a fixed function of sandbox/flow_id (SHA-256), not Python's salted hash()."""
    assert [shard_of("prod", f"flow-{i}", 5) for i in range(8)] == [shard_of("prod", f"flow-{i}", 5) for i in range(8)]
    assert shard_of("prod", "c9cef9cb-c934-4467-8ef9-cbc934546741", 4) == 3
