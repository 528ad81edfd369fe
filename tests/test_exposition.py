"""The per-flow render cache writes exactly what prometheus-client writes, and re-renders only what changed."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.config import MetricsConfig
from exporter.exposition import OPENMETRICS_EOF, FlowExposition
from exporter.metrics import FlowCollector
from exporter.values import Snapshot
from tests.helpers import parse_samples, pick
from tests.simulation import Sim, make_config, make_exporter


def reference(snapshot: Snapshot, options: MetricsConfig, openmetrics: bool) -> bytes:
    """What plain prometheus-client renders for the snapshot through a registered collector."""
    registry = CollectorRegistry()
    registry.register(FlowCollector(lambda: snapshot, options))
    if openmetrics:
        body: bytes = generate_openmetrics(registry)
        return body[: -len(OPENMETRICS_EOF)]
    return generate_latest(registry)


@pytest.mark.parametrize("openmetrics", [False, True])
@pytest.mark.parametrize("options", [MetricsConfig(), MetricsConfig(activities=False, sparse_status=True)])
async def test_cached_render_is_byte_for_byte_prometheus_client(
    sim: Sim, openmetrics: bool, options: MetricsConfig
) -> None:
    """After incremental updates over several cycles, the assembled block equals prometheus-client's output."""
    exporter = make_exporter(make_config(sim.url))
    await exporter.start()
    cache = FlowExposition(options, openmetrics=openmetrics)
    try:
        for _ in range(4):
            assert await exporter.poll_once()
            snapshot = exporter.snapshot()
            assert cache.render(snapshot) == reference(snapshot, options, openmetrics)
            sim.world.clock.advance(20 * 60)
    finally:
        await exporter.close()


async def test_only_flows_whose_state_changed_are_rendered_again(sim: Sim) -> None:
    """A quiet cycle renders no flow again; a cycle where some flows changed renders just those. (The cycle after
    first sight may still change a flow that has runs in progress: first sight reads by start time, whose window
    proves less, so the next read raises that flow's count floor.)"""
    exporter = make_exporter(make_config(sim.url))
    await exporter.start()
    cache = FlowExposition(MetricsConfig(), openmetrics=False)
    try:
        assert await exporter.poll_once()
        assert await exporter.poll_once()
        cache.render(exporter.snapshot())
        assert cache.flows_rendered == 12
        assert await exporter.poll_once()  # nothing new upstream
        cache.render(exporter.snapshot())
        assert cache.flows_rendered == 12
        before = {s.key: s for s in exporter.snapshot().flows}
        sim.world.clock.advance(16 * 60)
        assert await exporter.poll_once()
        changed = sum(1 for s in exporter.snapshot().flows if before[s.key] is not s)
        cache.render(exporter.snapshot())
        assert 0 < changed < 12
        assert cache.flows_rendered == 12 + changed
    finally:
        await exporter.close()


def test_hostile_label_values_render_and_parse_back(sim: Sim, promtool: str) -> None:
    """Quotes, backslashes, newlines and non-ASCII in names and labels are escaped, parse back intact,
    and pass `promtool check metrics`."""
    from exporter.counting import new_flow_state
    from exporter.model import parse_flow

    name = 'Ünïcødé "quoted" back\\slash\nnew line 数据流'
    flow = parse_flow({"id": "f-1", "name": name, "state": "enabled"})
    state = dataclasses.replace(
        new_flow_state(sandbox="prod", flow_id="f-1", now_ms=0, initial_lookback=0, duration_buckets=(1.0,)),
        flow=flow,
        labels={"team": 'a"b\\c\nd'},
    )
    snapshot = Snapshot(version=1, flows=(state,), sandboxes=())
    text = FlowExposition(MetricsConfig(), openmetrics=False).render(snapshot).decode()
    samples = parse_samples(text)
    info = pick(samples, "aep_flow_info")
    assert len(info) == 1
    labels = dict(next(iter(info)))
    assert labels["flow_name"] == name
    assert labels["team"] == 'a"b\\c\nd'
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
