"""One flow's bad data breaks at most that flow: every value from Adobe is validated where it enters (model.py),
state read back from disk is validated the same way, and a flow that still fails to render is left out alone."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from exporter.app import Exporter
from exporter.config import MetricsConfig
from exporter.counting import apply_runs, new_flow_state
from exporter.exposition import FlowExposition
from exporter.model import Flow, parse_flow, parse_run
from exporter.values import Snapshot
from tests.helpers import assert_matches_truth, parse_samples, pick, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter

NOW = 1_790_000_000_000
FLOW = "f0000000-0000-4000-8000-000000000002"


def run_payload(**records: Any) -> dict[str, Any]:
    return {
        "id": "r1",
        "flowId": FLOW,
        "createdAt": NOW - 60_000,
        "metrics": {
            "durationSummary": {"startedAtUTC": NOW - 60_000, "completedAtUTC": NOW - 1000},
            "statusSummary": {"status": "success"},
            "recordSummary": records,
        },
    }


@pytest.mark.parametrize(
    "text",
    [
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "-5",
        "-1",
        "2.5",
        "true",
        '"7"',
        "{}",
        "[]",
        "null",
        "1" + "0" * 400,
        str(2**53 + 1),
    ],
)
def test_a_count_that_is_not_a_finite_integer_in_range_is_unknown_never_a_number(text: str) -> None:
    """NaN, Infinity, 1e400, 10^400, negatives, fractions, booleans, strings and objects give no value at all."""
    payload = json.loads(
        json.dumps(run_payload(outputRecordCount=5)).replace('"outputRecordCount": 5', f'"outputRecordCount": {text}')
    )
    run = parse_run(payload, NOW)
    assert run.counts.records["output"] is None
    if text != "null":
        assert "outputRecordCount" in run.unknown_fields
    assert parse_run(run_payload(outputRecordCount=2**53), NOW).counts.records["output"] == 2**53


@pytest.mark.parametrize(
    "when", [1_000_000_000_000_000, NOW + 2 * 86_400_000, 1_300_000_000_000, float("nan"), float("inf"), -1]
)
def test_an_implausible_timestamp_is_unknown(when: float) -> None:
    """Before 2015, over a day ahead, NaN or infinite: the time is unknown, not a date."""
    payload = run_payload()
    payload["metrics"]["durationSummary"]["completedAtUTC"] = when
    assert parse_run(payload, NOW).completed_at_ms is None


def test_a_future_end_never_pins_the_last_success() -> None:
    """A run 'completed' in the year 33658 leaves aep_flow_last_success_timestamp_seconds at the last real one."""
    good = run_payload()
    future = {**run_payload(), "id": "r2", "createdAt": NOW - 30_000}
    future["metrics"] = {
        **future["metrics"],
        "durationSummary": {"startedAtUTC": NOW - 30_000, "completedAtUTC": 1_000_000_000_000_000},
    }
    flow = parse_flow(
        {
            "id": FLOW,
            "name": "F",
            "lastRunDetails": {"id": "r2", "state": "success", "completedAtUTC": 1_000_000_000_000_000},
        },
        NOW,
    )
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=NOW, initial_lookback=3600, duration_buckets=())
    update = apply_runs(
        state,
        flow,
        [parse_run(good, NOW), parse_run(future, NOW)],
        now_ms=NOW,
        metrics=MetricsConfig(max_error_codes_per_flow=5),
    )
    assert update.state.last_success_ms == NOW - 1000
    assert "lastRunDetails.completedAtUTC" in flow.invalid_fields


def test_lone_surrogates_and_control_characters_are_replaced_in_every_string() -> None:
    """A lone UTF-16 surrogate (valid JSON) or a control character in a name, a state or an error code becomes
    U+FFFD, so it can be encoded anywhere; an id that is not clean makes the item unusable."""
    flow = parse_flow(json.loads('{"id": "f1", "name": "Orders \\ud800 \\u0007bell", "state": "enab\\udfffled"}'))
    assert flow.name == "Orders \ufffd \ufffdbell"
    assert flow.state == "enab\ufffdled"
    flow.name.encode()
    run = parse_run(
        json.loads(
            json.dumps(run_payload()).replace(
                '"status": "success"}', '"status": "failed", "errors": [{"code": "X-\\ud800-1"}]}'
            )
        ),
        NOW,
    )
    assert run.error_codes == frozenset({"X-\ufffd-1"})
    with pytest.raises(Exception, match="unusable id"):
        parse_flow(json.loads('{"id": "f\\ud800"}'))


def test_activities_per_flow_are_capped() -> None:
    """A run with 3,000 activities gives per-activity series for at most max_activities_per_flow of them."""
    payload = run_payload(inputRecordCount=1)
    payload["activities"] = [
        {"id": f"a{i}", "name": f"Step {i}", "statusSummary": {"status": "success"}} for i in range(3000)
    ]
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=NOW, initial_lookback=3600, duration_buckets=())
    update = apply_runs(
        state,
        parse_flow({"id": FLOW}, NOW),
        [parse_run(payload, NOW)],
        now_ms=NOW,
        metrics=MetricsConfig(max_error_codes_per_flow=5, max_activities_per_flow=20),
    )
    assert update.state.last_completed is not None
    assert len(update.state.last_completed.activities) == 20
    assert update.activities_dropped == 2980


def test_a_flow_that_still_fails_to_render_is_left_out_alone(promtool: str) -> None:
    """Defence in depth: a state that bypassed validation (here built by hand) costs only its own series; it
    shows aep_exporter_flow_up 0 and every other flow is served."""
    good = new_flow_state(sandbox="prod", flow_id="good", now_ms=NOW, initial_lookback=0, duration_buckets=(1.0,))
    good = dataclasses.replace(good, flow=parse_flow({"id": "good", "name": "Good", "state": "enabled"}))
    bad_flow = Flow(
        id="bad",
        name="Bad \ud800",
        flow_spec_id="",
        source_connection_spec_id="",
        target_connection_spec_id="",
        kind="source",
        state="enabled",
        schedule_interval_seconds=None,
        last_run=None,
    )
    bad = dataclasses.replace(good, flow_id="bad", flow=bad_flow)
    text = (
        FlowExposition(MetricsConfig(), openmetrics=False)
        .render(Snapshot(version=1, flows=(bad, good), sandboxes=()))
        .decode()
    )
    samples = parse_samples(text)
    assert value(samples, "aep_exporter_flow_up", flow_id="bad") == 0
    assert value(samples, "aep_exporter_flow_up", flow_id="good") == 1
    assert not pick(samples, "aep_flow_info", flow_id="bad")
    assert value(samples, "aep_flow_enabled", flow_id="good") == 1
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


async def test_hostile_payloads_in_one_flow_blind_nothing_and_change_no_counter(
    sim: Sim, served: tuple[Exporter, TestServer], promtool: str
) -> None:
    """A flow whose payloads carry a lone surrogate, 10^400 and 1e400 counts, an end in the year 33658 and 3,000
    activities: /metrics and / answer 200, every counter equals ground truth, that flow's name shows U+FFFD."""
    exporter, server = served
    victim = next(iter(sim.world.flows["prod"]))
    sim.simulator.faults.hostile_flows = [victim]
    for _ in range(3):
        assert await exporter.poll_once()
        sim.world.clock.advance(20 * 60)
    assert await exporter.poll_once()
    status, text, _h = await scrape(server)
    page_status, page, _h = await scrape(server, "/")
    assert (status, page_status) == (200, 200)
    assert "\ufffd" in page  # the victim's cleaned name is on the landing page
    samples = parse_samples(text)
    assert_matches_truth(samples, sim.world.truth())
    assert sum(pick(samples, "aep_exporter_flow_up").values()) == 12
    info = dict(next(iter(pick(samples, "aep_flow_info", flow_id=victim))))
    assert "\ufffd" in info["flow_name"]
    assert (
        len({dict(k)["activity"] for k in pick(samples, "aep_flow_last_run_activity_duration_seconds", flow_id=victim)})
        <= 20
    )
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


async def test_a_state_file_holding_bad_values_loads_and_serves(sim: Sim, tmp_path: Path) -> None:
    """A state file already holding a lone surrogate, a 10^400 total, a NaN histogram sum and a last success in
    the year 33658 (as the previous version could write) loads: /metrics and / answer 200, the bad values are
    unknown (no sample), and the good ones are kept."""
    path = tmp_path / "state.db"
    first = make_exporter(make_config(sim.url, state_path=str(path)), world=sim.world)
    await first.start()
    assert await first.poll_once()
    await first.close()
    db = sqlite3.connect(path)
    ((sandbox, flow_id, text),) = db.execute("SELECT sandbox, flow_id, state FROM flows LIMIT 1").fetchall()
    data = json.loads(text)
    data["flow"]["name"] = "Bad \ud800 name"
    data["totals"]["records.input"] = 10**400
    data["durations"]["sum"] = float("nan")
    data["last_success_ms"] = 1_000_000_000_000_000
    data["error_codes"]["E-\udfff"] = 1
    bad = json.dumps(data)  # as json.dumps writes them: \ud800 escapes, NaN, a 401-digit integer
    db.execute("UPDATE flows SET state = ? WHERE sandbox = ? AND flow_id = ?", (bad, sandbox, flow_id))
    db.commit()
    db.close()
    second = make_exporter(make_config(sim.url, state_path=str(path)), world=sim.world)
    server = await serve(second)
    try:
        status, metrics, _h = await scrape(server)
        page_status, _page, _h = await scrape(server, "/")
    finally:
        await server.close()
        await second.close()
    assert (status, page_status) == (200, 200)
    samples = parse_samples(metrics)
    assert value(samples, "aep_flow_input_records_total", sandbox=sandbox, flow_id=flow_id) is None
    assert value(samples, "aep_flow_last_success_timestamp_seconds", sandbox=sandbox, flow_id=flow_id) is None
    assert value(samples, "aep_flow_run_duration_seconds_count", sandbox=sandbox, flow_id=flow_id) == 0
    assert value(samples, "aep_flow_output_records_total", sandbox=sandbox, flow_id=flow_id) is not None
    assert "\ufffd" in dict(next(iter(pick(samples, "aep_flow_info", flow_id=flow_id))))["flow_name"]


def test_an_activation_run_reports_identities_and_record_codes_and_a_failure_only_in_failed_info() -> None:
    """A destination run's created/updated/deleted identities, skipped and failed bytes, skipped files and its
    skippedInfo/failedInfo/warningInfo codes are read; a run whose failure is only in failedInfo (no
    failedRecordCount, no sizeSummary) still shows it, by code; an entry without a code is noted and left out, one
    whose count is not valid is noted and shows its code without inventing records."""
    payload = {
        "id": "r1",
        "flowId": FLOW,
        "createdAt": NOW - 60_000,
        "metrics": {
            "durationSummary": {"startedAtUTC": NOW - 60_000, "completedAtUTC": NOW - 1000},
            "statusSummary": {"status": "Failed"},
            "recordSummary": {
                "createdRecordCount": 40,
                "updatedRecordCount": 5,
                "deletedRecordCount": 2,
                "failedInfo": [{"code": "DESTINATION-5001", "count": 7}, {"code": "DESTINATION-5001", "count": 3}],
                "skippedInfo": [
                    {"code": "SKIP-1", "count": 4},
                    {"code": "", "count": 1},
                    {"code": "SKIP-2", "count": -1},
                ],
            },
            "sizeSummary": {"skippedBytes": 100, "failedBytes": 20},
            "fileSummary": {"skippedFileCount": 1},
        },
    }
    run = parse_run(payload, NOW)
    assert (run.counts.records["created"], run.counts.records["updated"], run.counts.records["deleted"]) == (40, 5, 2)
    assert (run.counts.bytes["skipped"], run.counts.bytes["failed"], run.counts.files["skipped"]) == (100, 20, 1)
    assert run.record_codes == (("failed", "DESTINATION-5001", 10), ("skipped", "SKIP-1", 4), ("skipped", "SKIP-2", 0))
    assert {"recordSummary.skippedInfo", "recordSummary.skippedInfo.count"} <= set(run.unknown_fields)
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=NOW, initial_lookback=3600, duration_buckets=())
    update = apply_runs(
        state, parse_flow({"id": FLOW}, NOW), [run], now_ms=NOW, metrics=MetricsConfig(max_error_codes_per_flow=1)
    )
    assert update.state.record_codes == {"failed": {"DESTINATION-5001": 10}, "skipped": {"SKIP-1": 4, "other": 0}}
    samples = parse_samples(
        FlowExposition(MetricsConfig(), openmetrics=False)
        .render(
            Snapshot(
                version=1, flows=(dataclasses.replace(update.state, flow=parse_flow({"id": FLOW}, NOW)),), sandboxes=()
            )
        )
        .decode()
    )
    assert value(samples, "aep_flow_record_codes_total", outcome="failed", code="DESTINATION-5001") == 10
    assert value(samples, "aep_flow_created_records_total") == 40
    assert value(samples, "aep_flow_failed_records_total") is None  # unknown, not 0: the codes say it


def _activation_run(run_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": run_id,
        "flowId": FLOW,
        "createdAt": NOW - 60_000,
        "metrics": {
            "durationSummary": {"startedAtUTC": NOW - 60_000, "completedAtUTC": NOW - 1000},
            "statusSummary": {"status": "Success"},
            "recordSummary": summary,
        },
    }


def test_audience_counts_come_from_the_target_side_and_the_source_side_fills_in() -> None:
    """entitySummaries: target summaries are summed (two targets of one audience add up), source summaries give
    only the (audience, outcome) pairs no target reports, so a skipped count on both sides is counted once; an
    entity without an id, a -1 or a non-list is noted and left out, never a 0."""
    a1, a2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    run = parse_run(
        _activation_run(
            "r1",
            {
                "sourceSummaries": [
                    {
                        "id": "src",
                        "entitySummaries": [
                            {"id": f"segment:{a1}", "inputRecordCount": 100, "skippedRecordCount": 3},
                            {"id": f"segment:{a2}", "inputRecordCount": 50, "failedRecordCount": -1},
                            {"inputRecordCount": 9},
                        ],
                    }
                ],
                "targetSummaries": [
                    {
                        "id": "t1",
                        "entitySummaries": [
                            {
                                "id": f"segment:{a1}",
                                "outputRecordCount": 60,
                                "createdRecordCount": 10,
                                "skippedRecordCount": 3,
                            }
                        ],
                    },
                    {"id": "t2", "entitySummaries": [{"id": f"segment:{a1}", "outputRecordCount": 30}]},
                    {"id": "t3", "entitySummaries": "not a list"},
                ],
            },
        ),
        NOW,
    )
    assert run.audience_counts == (
        (a1, "created", 10),
        (a1, "input", 100),
        (a1, "output", 90),
        (a1, "skipped", 3),
        (a2, "input", 50),
    )
    assert {
        "recordSummary.sourceSummaries.entitySummaries.id",
        "recordSummary.sourceSummaries.entitySummaries.failedRecordCount",
        "recordSummary.targetSummaries.entitySummaries",
    } <= set(run.unknown_fields)


def test_audiences_are_counted_only_when_asked_and_capped_with_the_rest_as_other() -> None:
    """max_audiences 0 (metrics.audiences off) keeps no per-audience state; with a cap of 2 the third audience's
    counts go to audience_id="other", and the family is served only with the collector's audiences option."""
    entities = [{"id": f"segment:a{i}", "outputRecordCount": 10 * (i + 1)} for i in range(3)]
    runs = [
        parse_run(_activation_run(f"r{k}", {"targetSummaries": [{"id": "t", "entitySummaries": entities}]}), NOW)
        for k in range(2)
    ]
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=NOW, initial_lookback=3600, duration_buckets=())
    flow = parse_flow({"id": FLOW}, NOW)
    assert (
        apply_runs(state, flow, runs, now_ms=NOW, metrics=MetricsConfig(max_error_codes_per_flow=5)).state.audiences
        == {}
    )
    capped = apply_runs(
        state,
        flow,
        runs,
        now_ms=NOW,
        metrics=MetricsConfig(max_error_codes_per_flow=5, audiences=True, max_audiences_per_flow=2),
    ).state
    assert capped.audiences == {"a0": {"output": 20}, "a1": {"output": 40}, "other": {"output": 60}}

    def served(options: MetricsConfig) -> dict[frozenset[tuple[str, str]], float]:
        snapshot = Snapshot(version=1, flows=(capped,), sandboxes=())
        text = FlowExposition(options, openmetrics=False).render(snapshot).decode()
        return pick(parse_samples(text), "aep_flow_audience_records_total")

    assert served(MetricsConfig()) == {}
    assert sorted(served(MetricsConfig(audiences=True)).values()) == [20.0, 40.0, 60.0]


async def test_per_audience_counters_equal_the_simulators_ground_truth(sim: Sim) -> None:
    """With metrics.audiences on, every destination flow's per-audience counters equal ground truth after cycles
    of new runs (a failed run may report only its source side), with the rest of the counters exact too."""
    exporter = make_exporter(make_config(sim.url, metrics=MetricsConfig(audiences=True)), world=sim.world)
    server = await serve(exporter)
    try:
        for _ in range(4):
            assert await exporter.poll_once()
            sim.world.clock.advance(3 * 3600)
        assert await exporter.poll_once()
        _status, text, _h = await scrape(server)
    finally:
        await server.close()
        await exporter.close()
    samples = parse_samples(text)
    assert_matches_truth(samples, sim.world.truth(), audiences=True)
    audiences = pick(samples, "aep_flow_audience_records_total")
    assert {dict(k)["outcome"] for k in audiences} >= {"input", "output", "created", "updated", "skipped"}


async def test_every_scheduled_flow_shows_its_interval_segment_exports_included(
    sim: Sim, served: tuple[Exporter, TestServer]
) -> None:
    """Against the simulator: every flow with a fixed schedule (source, dataset export, or segment export with
    audience schedules) has aep_flow_schedule_interval_seconds equal to it; segment exports show their end."""
    exporter, server = served
    assert await exporter.poll_once()
    samples = parse_samples((await scrape(server))[1])
    segment_exports = 0
    for sandbox, flows in sim.world.truth()["sandboxes"].items():
        for flow_id, flow in flows.items():
            shown = value(samples, "aep_flow_schedule_interval_seconds", sandbox=sandbox, flow_id=flow_id)
            sim_flow = sim.world.flow(flow_id)
            if sim_flow.frequency in ("once", None):
                assert shown is None, flow_id
                continue
            assert shown == flow["schedule_seconds"], (flow_id, shown, flow["schedule_seconds"])
            end = value(samples, "aep_flow_schedule_end_timestamp_seconds", sandbox=sandbox, flow_id=flow_id)
            if sim_flow.kind == "destination" and sim_flow.index % 10 == 4:
                segment_exports += 1
                assert end is not None and end > sim.world.now_ms() / 1000 + 50 * 86400
            else:
                assert end is None
    assert segment_exports == 2
