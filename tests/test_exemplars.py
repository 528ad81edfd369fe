"""Run ids as exemplars: in the OpenMetrics exposition each run counter and duration bucket names the newest run
that changed it, at no series cost; the text format is unchanged; a real Prometheus stores them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.config import MetricsConfig
from tests import servers
from tests.helpers import parse_samples, scrape, serve
from tests.simulation import Sim, make_config, make_exporter

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _newest(runs: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    done = [r for r in runs if r["completed"] and all(r[k] == v for k, v in match.items())]
    return max(done, key=lambda r: r["end_ms"], default=None)


async def test_run_counters_and_duration_buckets_carry_the_newest_run_that_changed_them(sim: Sim) -> None:
    """aep_flow_runs_total{status} names the newest run of that status; each duration bucket the newest run whose
    duration fell in it; the exemplar holds the run id and flow id, the run's end as its time; the text format has
    no exemplars and both formats have the same series."""
    exporter = make_exporter(make_config(sim.url), world=sim.world)
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        _s, om, _h = await scrape(server, Accept=OPENMETRICS)
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    truth = sim.world.truth()["sandboxes"]
    checked = 0
    series = 0
    for family in text_string_to_metric_families(om):
        for sample in family.samples:
            if not sample.name.startswith(("aep_flow_", "aep_exporter_flow_up")):
                continue
            series += 1
            if sample.name == "aep_flow_runs_total" and sample.value > 0:
                runs = truth[sample.labels["sandbox"]][sample.labels["flow_id"]]["runs"]
                newest = _newest(runs, status=sample.labels["status"])
                assert newest is not None and sample.exemplar is not None, sample
                assert sample.exemplar.labels == {"run_id": newest["id"], "flow_id": sample.labels["flow_id"]}
                assert float(sample.exemplar.timestamp) == newest["end_ms"] / 1000
                checked += 1
            if sample.name == "aep_flow_run_duration_seconds_bucket" and sample.exemplar is not None:
                runs = truth[sample.labels["sandbox"]][sample.labels["flow_id"]]["runs"]
                run = next(r for r in runs if r["id"] == sample.exemplar.labels["run_id"])
                assert run["duration_seconds"] == sample.exemplar.value
                assert sample.labels["le"] == "+Inf" or run["duration_seconds"] <= float(sample.labels["le"])
                checked += 1
    assert checked > 20
    assert "# {" not in text
    flow_series = [k for k in parse_samples(text) if k[0].startswith(("aep_flow_", "aep_exporter_flow_up"))]
    assert series == len(flow_series)  # zero added series


async def test_a_real_prometheus_with_exemplar_storage_stores_the_run_ids(sim: Sim, tmp_path: Path) -> None:
    """Prometheus (--enable-feature=exemplar-storage) scraping the exporter answers /api/v1/query_exemplars with the
    run ids of each flow's runs."""
    exporter = make_exporter(make_config(sim.url), world=sim.world)
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        url = str(server.make_url(""))
        async with servers.prometheus(tmp_path, url, flags=("--enable-feature=exemplar-storage",)) as prom:
            found: list[dict[str, Any]] = []
            async with aiohttp.ClientSession() as session:
                for _attempt in range(100):
                    now = time.time()
                    params = {"query": "aep_flow_runs_total", "start": f"{now - 600}", "end": f"{now + 60}"}
                    async with session.get(f"{prom}/api/v1/query_exemplars", params=params) as resp:
                        body = await resp.json()
                    found = body["data"]
                    if found:
                        break
                    await asyncio.sleep(0.2)
    finally:
        await server.close()
    truth = sim.world.truth()["sandboxes"]
    assert found
    for entry in found:
        runs = {r["id"] for r in truth[entry["seriesLabels"]["sandbox"]][entry["seriesLabels"]["flow_id"]]["runs"]}
        for exemplar in entry["exemplars"]:
            assert exemplar["labels"]["run_id"] in runs
            assert exemplar["labels"]["flow_id"] == entry["seriesLabels"]["flow_id"]


async def test_metrics_exemplars_false_leaves_them_out_of_openmetrics(sim: Sim) -> None:
    """metrics.exemplars: false serves OpenMetrics without a single exemplar, the same samples otherwise."""
    config = make_config(sim.url, metrics=MetricsConfig(exemplars=False))
    exporter = make_exporter(config, world=sim.world)
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        _s, om, _h = await scrape(server, Accept=OPENMETRICS)
    finally:
        await server.close()
    assert "aep_flow_runs_total{" in om and " # {" not in om
