"""Grafana dashboards: sound structure, and every panel query returns data from a real Prometheus."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from exporter.config import EventsConfig
from exporter.simulator import SimClock
from exporter.simulator.events import JOURNAL_PATH
from tests.helpers import parse_samples, scrape
from tests.servers import RULES, prometheus, query
from tests.simulation import make_config, make_exporter, make_world, start_sim

DASHBOARDS = sorted((Path(__file__).parent.parent / "grafana" / "dashboards").glob("*.json"))
METRIC = re.compile(r"\b(aep:[a-z0-9_:]+|aep_[a-z0-9_]+)")


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_three_dashboards_are_shipped_and_provisioned() -> None:
    """Fleet overview, flow drill-down and exporter health exist, and the provisioning points at them."""
    assert {p.stem for p in DASHBOARDS} == {"aep-fleet-overview", "aep-flow-drilldown", "aep-exporter-health"}
    provider = yaml.safe_load(
        (DASHBOARDS[0].parent.parent / "provisioning" / "dashboards" / "aep-flow-exporter.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    """Current schema, unique panel ids, data source taken from the variable everywhere, flows shown by name."""
    dash = load(path)
    assert dash["schemaVersion"] >= 38  # Grafana 10 or newer
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "sandbox" in variables
    for panel, target in targets(dash):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert target["expr"].strip()
    if "flow" in variables:
        assert "(?<text>" in variables["flow"]["regex"] and "(?<value>" in variables["flow"]["regex"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}"


async def test_every_metric_name_a_dashboard_uses_exists(sim: Any) -> None:
    """Each metric a dashboard query names is produced by the exporter (events journal on) or recorded by the
    shipped rules."""
    config = dataclasses.replace(make_config(sim.url), events=EventsConfig(journal_url=f"{sim.url}{JOURNAL_PATH}"))
    exporter = make_exporter(config)
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    try:
        assert await exporter.poll_once()
        await exporter.start_events()
        _status, text, _h = await scrape(server)
    finally:
        await server.close()
    produced = {name for name, _labels in parse_samples(text)}
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    for path in DASHBOARDS:
        for panel, target in targets(load(path)):
            for name in METRIC.findall(target["expr"]):
                assert name in produced or name in recorded, f"{path.stem} / {panel['title']}: {name}"


def pick_flow(world: Any) -> tuple[str, str]:
    """A scheduled source flow whose history has failed runs with error codes: one every panel has data for."""
    truth = world.truth()
    for sandbox, flows in truth["sandboxes"].items():
        for flow_id, flow in flows.items():
            codes = any(r["error_codes"] for r in flow["runs"] if r["completed"])
            if flow["kind"] == "source" and flow["schedule_seconds"] and codes:
                return sandbox, flow_id
    raise AssertionError("the seeded world has no flow with errors")


async def test_every_panel_query_returns_data_from_real_prometheus(tmp_path: Path) -> None:
    """Simulator, exporter and Prometheus (shipped rules loaded) run; each panel target gives a non-empty result."""
    world = make_world(clock=SimClock(speed=120))
    handle, sim_server = await start_sim(world)
    sandbox, flow_id = pick_flow(world)
    world.flows[sandbox][flow_id].trigger_run(world.now_ms(), 6 * 3600)  # a run in progress for the stuck-runs panel
    dest_sandbox, dest_id = next(
        (sb, fid) for sb, flows in world.flows.items() for fid, f in flows.items() if f.kind == "destination"
    )
    destination = world.flows[dest_sandbox][dest_id]
    destination.materialize(world.now_ms(), world.max_duration_s)
    destination.forced_status = "failed"  # the activation panels' failed-by-code series, whatever the history holds
    destination.trigger_run(world.now_ms(), 1.0)
    handle.simulator.fail_next("runs", 429, times=3, retry_after="0")  # exporter-health panels need retries
    handle.simulator.fail_next("flows", 503, times=2)
    config = make_config(handle.url, interval=1.0)  # with the events journal on, for the events panels
    config = dataclasses.replace(
        config, events=EventsConfig(journal_url=f"{handle.url}{JOURNAL_PATH}", journal_wait=0.2)
    )
    exporter = make_exporter(config)
    exp_server = TestServer(exporter.web_app(poll=True), host="127.0.0.1")
    await exp_server.start_server()
    try:
        async with prometheus(tmp_path, str(exp_server.make_url("")).rstrip("/")) as prom:
            for _ in range(100):  # bounded: until rates over the dashboards' windows have two samples
                ready = await query(prom, "count(count_over_time(aep_flow_info[1m]) >= 4)")
                recorded = await query(prom, "count(aep:sandbox_runs:increase1h)")
                if ready["data"]["result"] and recorded["data"]["result"]:
                    break
                await asyncio.sleep(0.5)
            substitutions = {"$__rate_interval": "1m", "$sandbox": ".*", "$flow": flow_id}
            empty = []
            checked = 0
            for path in DASHBOARDS:
                for panel, target in targets(load(path)):
                    expr = target["expr"]
                    for var, val in substitutions.items():
                        expr = expr.replace(var, val)
                    answer = await query(prom, expr)
                    assert answer["status"] == "success", (panel["title"], expr, answer)
                    checked += 1
                    if not answer["data"]["result"]:
                        empty.append(f"{path.stem} / {panel['title']}: {expr}")
    finally:
        await exp_server.close()
        await exporter.close()
        await sim_server.close()
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    assert checked >= 40
    assert sandbox


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_no_panels_overlap_and_every_panel_fits_the_grid(path: Path) -> None:
    """Every panel lies within Grafana's 24 columns, and no two panels share a cell of the grid."""
    taken: dict[tuple[int, int], str] = {}
    for panel in load(path)["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def _colours(panel: dict[str, Any]) -> dict[str, str]:
    """Status name -> colour, from the panel's per-series overrides and value mappings (its own or a column's)."""
    found: dict[str, str] = {}
    config = panel.get("fieldConfig", {})
    mapping_sets = [config.get("defaults", {}).get("mappings", [])]
    for override in config.get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "color" and override["matcher"]["id"] == "byName":
                found[override["matcher"]["options"]] = prop["value"]["fixedColor"]
            if prop["id"] == "mappings":
                mapping_sets.append(prop["value"])
    for mappings in mapping_sets:
        for mapping in mappings:
            for key, result in mapping.get("options", {}).items():
                if "color" in result:
                    found[result.get("text", key)] = result["color"]
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_trouble_shows_in_red_and_success_in_green(path: Path) -> None:
    """Panels by run status colour failed red and success green; every stat panel has thresholds (or mappings)
    and those that can be bad have red among them; record rates are in records, not Grafana's reads/sec."""
    for panel, target in targets(load(path)):
        expr = target["expr"]
        if re.search(r"by \([^)]*\bstatus\)", expr):  # one series (or row) per status
            colours = _colours(panel)
            assert colours.get("failed") == "red" and colours.get("success") == "green", panel["title"]
        if "records" in expr and panel["type"] == "timeseries":
            assert panel["fieldConfig"]["defaults"]["unit"].startswith("suffix: records"), panel["title"]
    for panel in load(path)["panels"]:
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        assert defaults.get("unit") not in ("rps", "wps", "ops"), panel["title"]
        if panel["type"] != "stat":
            continue
        colours = [s["color"] for s in defaults.get("thresholds", {}).get("steps", [])]
        colours += list(_colours(panel).values())
        assert colours, f"{panel['title']}: a stat without thresholds"
        if re.search(r"fail|cannot|since|expires|up\b|can read|tracked", panel["title"], re.IGNORECASE):
            assert "red" in colours, f"{panel['title']}: can be bad, never red"
