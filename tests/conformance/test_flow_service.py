"""Adobe's Flow Service examples served as Adobe shows them, read by the running exporter: the values on /metrics
are exactly the ones the payloads imply, and the requests it sends have the forms Adobe documents."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import unquote_plus

from exporter.config import AEP_UI, DiscoverConfig
from exporter.flowpage import flow_json
from tests.conformance.examples import load, replay
from tests.helpers import parse_samples, pick, poll_and_scrape, value
from tests.simulation import Sim, make_config, make_exporter

TUTORIAL_FLOW = "0000f10a-0000-4000-8000-000000000001"


def serve_flow(sim: Sim, flow: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    sim.simulator.fixture_flows.setdefault("prod", []).append(flow)
    sim.simulator.fixture_runs[flow["id"]] = runs


def tutorial_flow(sim: Sim, flow_id: str, run: dict[str, Any]) -> dict[str, Any]:
    """The monitoring tutorial's flow, renamed to ``flow_id``, its lastRunDetails naming ``run``."""
    flow = replay(load("monitor_flows"), sim.world.now_ms(), {TUTORIAL_FLOW: flow_id})["items"][0]
    duration = run["metrics"].get("durationSummary", {})
    flow["lastRunDetails"] = {
        "id": run["id"],
        "state": run["metrics"]["statusSummary"]["status"],
        **{k: v for k, v in duration.items() if k in ("startedAtUTC", "completedAtUTC")},
    }
    return flow


async def scrape_prod(sim: Sim) -> dict[Any, float]:
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",)), world=sim.world)
    return parse_samples(await poll_and_scrape(exporter))


async def test_the_monitoring_tutorials_flow_and_run_give_their_values(sim: Sim) -> None:
    """ "Monitor dataflows using the Flow Service API": its /flows and /runs answers give one successful run with
    100 input, 99 output and 1 failed record, 24,012 and 17,128 bytes, its three error codes, and no schedule
    interval (a once flow)."""
    run = replay(load("monitor_runs"), sim.world.now_ms())["items"][0]
    serve_flow(sim, tutorial_flow(sim, TUTORIAL_FLOW, run), [run])
    samples = await scrape_prod(sim)
    flow = {"sandbox": "prod", "flow_id": TUTORIAL_FLOW}
    assert value(samples, "aep_flow_runs_total", status="success", **flow) == 1
    records = [value(samples, f"aep_flow_{k}_records_total", **flow) for k in ("input", "output", "failed")]
    assert records == [100, 99, 1]
    assert [value(samples, f"aep_flow_{k}_bytes_total", **flow) for k in ("input", "output")] == [24012, 17128]
    assert [value(samples, f"aep_flow_{k}_files_total", **flow) for k in ("input", "output")] == [1, 1]
    codes = {dict(k)["code"]: v for k, v in pick(samples, "aep_flow_run_errors_total", **flow).items()}
    assert codes == {"CONNECTOR-2001-500": 1, "INGEST-1212-400": 1, "MAPPER-3700-400": 1}
    assert value(samples, "aep_flow_run_duration_seconds_count", **flow) == 1
    assert abs(value(samples, "aep_flow_run_duration_seconds_sum", **flow) - 55.108) < 1e-6
    assert value(samples, "aep_flow_schedule_interval_seconds", **flow) is None
    assert value(samples, "aep_flow_last_run_status", status="success", **flow) == 1
    copy = next(a for a in run["activities"] if a["id"] == "copyActivity")
    window_end = copy["durationSummary"]["extensions"]["windowEnd"]
    assert value(samples, "aep_flow_data_as_of_timestamp_seconds", **flow) == window_end / 1000  # its data window
    assert value(samples, "aep_flow_next_run_expected_timestamp_seconds", **flow) is None  # a once flow: no next


async def test_a_destination_run_without_created_at_is_counted_and_demotes_the_created_at_query(sim: Sim) -> None:
    """ "View detailed activation results": a destination run as /runs gives it, with no createdAt and a null
    latencySummary, counts its identities, records, bytes and files; and the sandbox stops asking /runs by
    createdAt, which could never return such a run."""
    flow_id = "0000f50a-0000-4000-8000-000000000001"
    run = replay(load("activation_results_runs"), sim.world.now_ms())["items"][0]
    serve_flow(sim, tutorial_flow(sim, flow_id, run), [run])
    samples = await scrape_prod(sim)
    flow = {"sandbox": "prod", "flow_id": flow_id}
    assert value(samples, "aep_flow_runs_total", status="success", **flow) == 1
    assert [
        value(samples, f"aep_flow_{k}_records_total", **flow) for k in ("input", "output", "created", "skipped")
    ] == [1, 1, 1, 0]
    assert [value(samples, f"aep_flow_{k}_bytes_total", **flow) for k in ("input", "output")] == [122, 122]
    assert value(samples, "aep_exporter_runs_query_strategy", sandbox="prod", strategy="created_at") == 0


async def test_the_alert_rules_run_objects_are_read_as_runs(sim: Sim) -> None:
    """ "Standard alert rules": its Sources Flow Run Success and Failure payloads are run objects. Served as /runs
    items, the success counts 0 input records (a known 0, not unknown); the failure counts a failed run with its
    run and activity error codes, and its failedInfo code without a count shows at 0 records; the Start payload's
    run (no durationSummary yet) is the flow's newest run, in progress."""
    now = sim.world.now_ms()
    flows = []
    for name, flow_id in (
        ("alert_source_flow_run_success", "0000f41a-0000-4000-8000-000000000001"),
        ("alert_source_flow_run_failure", "0000f42a-0000-4000-8000-000000000001"),
        ("alert_source_flow_run_start", "0000f40a-0000-4000-8000-000000000001"),
    ):
        run = replay(load(name), now)
        run["sandboxName"] = "prod"
        for key in ("header", "flowName"):
            run.pop(key)  # the event's own fields, not the run's
        serve_flow(sim, tutorial_flow(sim, flow_id, run), [run])
        flows.append({"sandbox": "prod", "flow_id": flow_id})
    samples = await scrape_prod(sim)
    success, failure, start = flows
    assert value(samples, "aep_flow_runs_total", status="success", **success) == 1
    assert value(samples, "aep_flow_input_records_total", **success) == 0
    assert value(samples, "aep_flow_runs_total", status="failed", **failure) == 1
    codes = {dict(k)["code"]: v for k, v in pick(samples, "aep_flow_run_errors_total", **failure).items()}
    assert codes == {"CONNECTOR-1001-500": 1, "2200": 1}
    assert value(samples, "aep_flow_record_codes_total", outcome="failed", code="2200", **failure) == 0
    assert value(samples, "aep_flow_failed_records_total", **failure) is None  # unknown, not 0
    assert value(samples, "aep_flow_last_run_status", status="in_progress", **start) == 1
    assert value(samples, "aep_flow_runs_total", status="success", **start) == 0


async def test_the_requests_have_the_forms_adobe_documents(sim: Sim) -> None:
    """ "Sorting and filtering responses in the Flow Service API": runs of a flow by property=flowId==<id>, in a
    period by property=metrics.durationSummary.startedAtUTC><ms>, flows by property=id==a,b (several ids) and
    destination flows only by property=inheritedAttributes.properties.isDestinationFlow==true."""
    run = replay(load("monitor_runs"), sim.world.now_ms())["items"][0]
    serve_flow(sim, tutorial_flow(sim, TUTORIAL_FLOW, run), [run])
    ids = sorted(sim.world.flows["dev"])[:2]
    config = make_config(
        sim.url, sandboxes=("prod", "dev"), discover=False, flows={"prod": [TUTORIAL_FLOW], "dev": ids}
    )
    await poll_and_scrape(make_exporter(config, world=sim.world))
    queries = [unquote_plus(r["query"]) for r in sim.simulator.request_log]
    assert any(re.search(r"property=flowId==[0-9a-f-]{36}(&|$)", q) for q in queries)
    assert any(re.search(r"property=metrics\.durationSummary\.startedAtUTC>\d{13}(&|$)", q) for q in queries)
    assert any(re.search(rf"property=id=={ids[0]},{ids[1]}(&|$)", q) for q in queries)
    only = dataclasses.replace(
        config,
        sandboxes=(
            dataclasses.replace(
                config.sandboxes[0], flows=(), discover=DiscoverConfig(enabled=True, kinds=("destination",))
            ),
        ),
    )
    sim.simulator.request_log.clear()
    await poll_and_scrape(make_exporter(only, world=sim.world))
    flows_queries = [unquote_plus(r["query"]) for r in sim.simulator.request_log if r["endpoint"] == "flows"]
    assert any("property=inheritedAttributes.properties.isDestinationFlow==true" in q for q in flows_queries)


async def test_the_api_references_flow_and_run_examples_are_read_as_shown(sim: Sim) -> None:
    """ "Flow Service API" reference (flow-service.yaml), its FlowItemDTO and FlowRunItemDTO examples with their
    oddities (flowSpec a bare string, eTag, "activites", a count beside items): one successful run of 2 input,
    2 output, 2 created and 0 failed records, 124 and 1,884 bytes; the flow kind unknown (no isSourceFlow)."""
    now = sim.world.now_ms()
    flow = replay(load("api_reference_flows"), now)["items"][0]
    run = replay(load("api_reference_runs"), now)["items"][0]
    serve_flow(sim, flow, [run])
    samples = await scrape_prod(sim)
    labels = {"sandbox": "prod", "flow_id": flow["id"]}
    assert value(samples, "aep_flow_runs_total", status="success", **labels) == 1
    assert [
        value(samples, f"aep_flow_{k}_records_total", **labels) for k in ("input", "output", "created", "failed")
    ] == [2, 2, 2, 0]
    assert [value(samples, f"aep_flow_{k}_bytes_total", **labels) for k in ("input", "output")] == [124, 1884]
    info = pick(samples, "aep_flow_info", **labels)
    assert [dict(k)["kind"] for k in info] == ["unknown"]


async def test_the_monitoring_tutorials_error_messages_reach_the_flow_page(sim: Sim) -> None:
    """ "Monitor dataflows using the Flow Service API": its run's errors (run level and the activities') reach the
    flow page with Adobe's own messages, each code once, the first message it came with."""
    run = replay(load("monitor_runs"), sim.world.now_ms())["items"][0]
    serve_flow(sim, tutorial_flow(sim, TUTORIAL_FLOW, run), [run])
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",)), world=sim.world)
    await poll_and_scrape(exporter)
    state = next(s for s in exporter.snapshot().flows if s.flow_id == TUTORIAL_FLOW)
    shown = flow_json(state, aep_ui=AEP_UI)["runs"][0]["errors"]
    summaries = [run["metrics"]["statusSummary"], *(a.get("statusSummary", {}) for a in run["activities"])]
    sent: dict[str, str] = {}
    for summary in summaries:
        for error in [*summary.get("errors", []), *summary.get("extensions", {}).get("errors", [])]:
            sent.setdefault(error["code"], error.get("message", ""))
    assert shown == [{"code": code, "message": sent[code]} for code in sorted(sent)]
    assert [e["code"] for e in shown] == ["CONNECTOR-2001-500", "INGEST-1212-400", "MAPPER-3700-400"]
