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


def test_four_dashboards_are_shipped_and_provisioned() -> None:
    """Fleet overview, flow drill-down, SLOs and exporter health exist, and the provisioning points at them."""
    assert {p.stem for p in DASHBOARDS} == {
        "aep-fleet-overview",
        "aep-flow-drilldown",
        "aep-slo",
        "aep-exporter-health",
    }
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


def by_uid() -> dict[str, dict[str, Any]]:
    return {load(path)["uid"]: load(path) for path in DASHBOARDS}


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in dashboard["templating"]["list"] if v["name"] == name)


def query_result_line(series: dict[str, Any]) -> str:
    """One series as Grafana's query_result() variable query shows it to the variable's regex."""
    labels = dict(series["metric"])
    name = labels.pop("__name__", "")
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}} {series['value'][1]} {series['value'][0]}"


async def check_flow_picker_and_failed_first(prom: str, world: Any) -> None:
    """The drill-down's flow picker shows "name (sandbox)" and keeps the flow id as the value; the fleet table's
    query ranks failed flows first (its rows sort by that rank)."""
    picker = variable(by_uid()["aep-flow"], "flow")
    expr = picker["query"]["query"].replace("$sandbox", ".*")
    assert expr.startswith("query_result(") and expr.endswith(")")
    answer = await query(prom, expr.removeprefix("query_result(").removesuffix(")"))
    regex = re.compile(picker["regex"].strip("/").replace("(?<", "(?P<"))
    shown = {}
    for series in answer["data"]["result"]:
        match = regex.search(query_result_line(series))
        assert match is not None, query_result_line(series)
        shown[match.group("value")] = match.group("text")
    truth = {fid: f"{flow.name} ({sb})" for sb, flows in world.flows.items() for fid, flow in flows.items()}
    assert shown == truth
    table = next(p for p in by_uid()["aep-fleet"]["panels"] if p["title"] == "Every flow's newest run")
    rows = (await query(prom, table["targets"][0]["expr"].replace("$sandbox", ".*")))["data"]["result"]
    order = ["failed", "partial_success", "in_progress", "scheduled", "cancelled", "other", "success"]
    assert rows and {float(r["value"][1]) for r in rows} <= set(map(float, range(len(order))))
    for row in rows:  # the value is the status's rank: failed 0 ... success 6
        assert order[int(float(row["value"][1]))] == row["metric"]["status"], row
    assert table["options"]["sortBy"] == [{"displayName": "rank", "desc": False}]


LINK_VAR = re.compile(r"\$\{([^}:]+)(?::[a-z]+)?\}")


def links_of(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any]]]:
    """(the panel or None for the dashboard's own links, the link) for every link of a dashboard."""
    for link in dashboard.get("links", []):
        yield None, link
    for panel in dashboard["panels"]:
        config = panel.get("fieldConfig", {})
        for link in config.get("defaults", {}).get("links", []):
            yield panel, link
        for override in config.get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    for link in prop["value"]:
                        yield panel, link


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_data_link_targets_an_existing_dashboard_and_variable(path: Path) -> None:
    """A link to /d/<uid>/ names a shipped dashboard and sets only variables it has; every ${var} a link uses is a
    variable of its own dashboard, or a field (label) its panel's queries keep."""
    dashboards = by_uid()
    dashboard = load(path)
    own = {v["name"] for v in dashboard["templating"]["list"]}
    count = 0
    for panel, link in links_of(dashboard):
        url = link["url"]
        count += 1
        if url.startswith("/d/"):
            uid = url.split("/")[2]
            assert uid in dashboards, url
            theirs = {v["name"] for v in dashboards[uid]["templating"]["list"]}
            assert set(re.findall(r"var-(\w+)=", url)) <= theirs, url
            assert set(re.findall(r"\$\{(\w+):queryparam\}", url)) <= theirs & own, url
        for var in LINK_VAR.findall(url):
            if var.startswith("__data.fields."):
                assert panel is not None, url
                field = var.removeprefix("__data.fields.")
                exprs = " ".join(t["expr"] for t in panel["targets"])
                assert field in exprs, (panel["title"], field)
            else:
                assert var in own, (url, var)
    assert count >= 1


def test_the_fleet_links_each_flow_to_its_drill_down_and_to_adobe_and_tables_hide_noise() -> None:
    """Every fleet table with a flow name links it to the drill-down (sandbox and flow set) and to the flow in
    Experience Platform's UI (the aep_ui variable); no table shows Value, job or instance columns as such."""
    fleet = by_uid()["aep-fleet"]
    with_names = [p for p in fleet["panels"] if p["type"] == "table" and "flow_name" in json.dumps(p["targets"])]
    assert len(with_names) >= 4
    for panel in with_names:
        urls = [link["url"] for p, link in links_of(fleet) if p is panel]
        assert any(u.startswith("/d/aep-flow/") and "var-flow=${__data.fields.flow_id}" in u for u in urls), panel
        assert any(u.startswith("${aep_ui}/sname:${__data.fields.sandbox}/") for u in urls), panel["title"]
    for path in DASHBOARDS:
        for panel in load(path)["panels"]:
            if panel["type"] != "table":
                continue
            organize = next(t["options"] for t in panel["transformations"] if t["id"] == "organize")
            assert organize["excludeByName"].get("job") and organize["excludeByName"].get("instance"), panel["title"]
            renamed, hidden = organize.get("renameByName", {}), organize["excludeByName"]
            refs = [t["refId"] for t in panel["targets"]]
            for column in ["Value"] if len(refs) == 1 else [f"Value #{r}" for r in refs]:
                assert column in renamed or hidden.get(column), f"{path.stem} / {panel['title']}: a bare {column}"


def test_the_token_expiry_stat_shows_no_token_yet_instead_of_decades_ago() -> None:
    """The IMS token gauge is 0 until the first token: the stat leaves 0 out (promtool tests that expression)
    and says "no token yet"."""
    panel = next(p for p in by_uid()["aep-exporter"]["panels"] if p["title"] == "IMS token expires in")
    assert panel["targets"][0]["expr"] == "min(aep_exporter_token_expiry_timestamp_seconds > 0) - time()"
    assert panel["fieldConfig"]["defaults"]["noValue"] == "no token yet"
    tests = yaml.safe_load((Path(__file__).parent / "rules" / "aep-flows.test.yml").read_text())["tests"]
    exprs = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}
    assert panel["targets"][0]["expr"] in exprs


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
        async with prometheus(tmp_path, str(exp_server.make_url("")).rstrip("/"), every_group_each_second=True) as prom:
            for _ in range(100):  # bounded: until rates over the dashboards' windows have two samples
                ready = await query(prom, "count(count_over_time(aep_flow_info[1m]) >= 4)")
                recorded = await query(prom, "count(aep:sandbox_runs:increase1h) and count(aep:flow_stale:ratio_1h)")
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
            await check_flow_picker_and_failed_first(prom, world)
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


def test_run_panels_show_exemplars_and_an_exemplar_opens_its_run_on_the_exporter() -> None:
    """The drill-down's runs, durations and records panels ask for exemplars; the provisioned data source turns
    an exemplar's run_id into a link to the exporter's /runs/<run id> (which leads to the run on its flow page)."""
    drill = load(next(p for p in DASHBOARDS if p.stem == "aep-flow-drilldown"))
    with_exemplars = {panel["title"] for panel, target in targets(drill) if target.get("exemplar")}
    assert {"Completed runs by status (per hour)", "Run duration quantiles (6h window)", "Records over time"} <= (
        with_exemplars
    )
    for panel, target in targets(drill):
        if target.get("exemplar"):
            assert any(name in target["expr"] for name in ("_total", "_bucket")), panel["title"]
    source = yaml.safe_load(
        (DASHBOARDS[0].parent.parent / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    links = source["datasources"][0]["jsonData"]["exemplarTraceIdDestinations"]
    assert links == [
        {"name": "run_id", "url": "http://localhost:9847/runs/${__value.raw}", "urlDisplayLabel": "Open the run"}
    ]
