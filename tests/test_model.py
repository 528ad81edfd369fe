"""Parsing Flow Service payloads into values, and the metric values they imply."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.config import MetricsConfig
from exporter.counting import apply_runs, new_flow_state
from exporter.errors import PayloadError
from exporter.exposition import generate
from exporter.metrics import build_families
from exporter.model import parse_flow, parse_run, snake_case
from exporter.statuses import normalize_status
from exporter.store import MemoryStore
from exporter.tracker import Tracker
from tests.helpers import Samples, parse_samples, value
from tests.simulation import DATA

FLOW_ID = "c9cef9cb-c934-4467-8ef9-cbc934546741"
RUN_ID = "9830305a-985f-47d0-b030-5a985fd7d004"
TUTORIAL_NOW_MS = 1596656200000


def tutorial() -> tuple[dict[str, Any], dict[str, Any]]:
    flows = json.loads((DATA / "tutorial_flows.json").read_text())
    runs = json.loads((DATA / "tutorial_runs.json").read_text())
    return flows["items"][0], runs["items"][0]


def render(
    flow_json: dict[str, Any],
    runs_json: list[dict[str, Any]],
    *,
    now_ms: int = TUTORIAL_NOW_MS,
    options: MetricsConfig | None = None,
    initial_lookback: float = 86400.0,
) -> Samples:
    """Fold payloads through the real state and collector, and parse the exposition back."""
    flow = parse_flow(flow_json)
    state = new_flow_state(
        sandbox="prod",
        flow_id=flow.id,
        now_ms=now_ms,
        initial_lookback=initial_lookback,
        duration_buckets=(30.0, 60.0, 120.0),
    )
    update = apply_runs(
        state,
        flow,
        [parse_run(r) for r in runs_json],
        now_ms=now_ms,
        metrics=MetricsConfig(max_error_codes_per_flow=20),
    )
    tracker = Tracker(MemoryStore(), ["prod"])
    tracker.put(update.state)
    families = build_families(tracker.publish(), options or MetricsConfig(profile="full", sparse_status=False))
    text = generate(families, openmetrics=False).decode()
    return parse_samples(text)


def test_tutorial_flow_and_run_give_the_metric_values_they_imply() -> None:
    """The tutorial's sample flow and run produce exactly the counts, times, statuses and codes they contain."""
    flow, run = tutorial()
    s = render(flow, [run])
    ids = {"sandbox": "prod", "flow_id": FLOW_ID}
    info = value(
        s,
        "aep_flow_info",
        **ids,
        flow_name="Monitoring Dataflow",
        kind="unknown",
        state="enabled",
        flow_spec_id="9753525b-82c7-4dce-8a9b-5ccfce2b9876",
        source_connection_spec_id="ecadc60c-7455-4d87-84dc-2a0e293d997b",
        target_connection_spec_id="c604ff05-7f1a-43c0-8e18-33bf874cb11c",
    )
    assert info == 1.0
    assert value(s, "aep_flow_enabled", **ids) == 1.0
    assert value(s, "aep_flow_schedule_interval_seconds", **ids) is None  # frequency "once"
    assert value(s, "aep_flow_last_run_status", **ids, status="success") == 1.0
    assert value(s, "aep_flow_last_run_status", **ids, status="failed") == 0.0
    assert value(s, "aep_flow_last_run_start_timestamp_seconds", **ids) == 1596656058.198
    assert value(s, "aep_flow_last_run_end_timestamp_seconds", **ids) == 1596656113.306
    assert value(s, "aep_flow_last_run_duration_seconds", **ids) == pytest.approx(55.108)
    assert value(s, "aep_flow_last_success_timestamp_seconds", **ids) == 1596656113.306
    assert value(s, "aep_flow_last_failure_timestamp_seconds", **ids) is None
    assert value(s, "aep_flow_runs_in_progress", **ids) == 0.0
    expected_last = {
        "input_records": 100,
        "output_records": 99,
        "failed_records": 1,
        "input_bytes": 24012,
        "output_bytes": 17128,
        "input_files": 1,
        "output_files": 1,
    }
    for name, number in expected_last.items():
        assert value(s, f"aep_flow_last_run_{name}", **ids) == number, name
        assert value(s, f"aep_flow_{name}_total", **ids) == number, name
    for absent in ("skipped_records", "warning_records", "failed_files"):
        assert value(s, f"aep_flow_last_run_{absent}", **ids) is None  # not reported: no sample, never 0
        assert value(s, f"aep_flow_{absent}_total", **ids) is None
    assert value(s, "aep_flow_runs_total", **ids, status="success") == 1.0
    assert value(s, "aep_flow_runs_total", **ids, status="failed") == 0.0
    for code in ("CONNECTOR-2001-500", "INGEST-1212-400", "MAPPER-3700-400"):
        assert value(s, "aep_flow_run_errors_total", **ids, code=code) == 1.0  # once per run, run or activity level
    assert value(s, "aep_flow_run_duration_seconds_bucket", **ids, le="30.0") == 0.0
    assert value(s, "aep_flow_run_duration_seconds_bucket", **ids, le="60.0") == 1.0
    assert value(s, "aep_flow_run_duration_seconds_sum", **ids) == pytest.approx(55.108)
    copy = {**ids, "activity": "copy_activity"}
    promo = {**ids, "activity": "promotion_activity"}
    assert value(s, "aep_flow_last_run_activity_duration_seconds", **copy) == pytest.approx(31.452)
    assert value(s, "aep_flow_last_run_activity_duration_seconds", **promo) == pytest.approx(17.973)
    assert value(s, "aep_flow_last_run_activity_input_bytes", **copy) == 24012
    assert value(s, "aep_flow_last_run_activity_input_records", **copy) is None  # recordSummary {}
    assert value(s, "aep_flow_last_run_activity_output_records", **promo) == 99
    assert value(s, "aep_flow_last_run_activity_status", **promo, status="success") == 1.0
    assert value(s, "aep_exporter_flow_up", **ids) == 1.0


def test_run_with_minus_one_counts_gives_no_sample_and_records_the_fields() -> None:
    """A failed run's -1 counts produce no sample (never 0 by guess) and are listed as unknown."""
    flow, run = tutorial()
    run = json.loads(json.dumps(run))
    run["metrics"]["statusSummary"]["status"] = "failed"
    run["metrics"]["sizeSummary"]["inputBytes"] = -1
    run["metrics"]["recordSummary"]["inputRecordCount"] = -1
    parsed = parse_run(run)
    assert parsed.counts.bytes["input"] is None
    assert set(parsed.unknown_fields) == {"inputBytes", "inputRecordCount"}
    s = render(flow, [run])
    ids = {"sandbox": "prod", "flow_id": FLOW_ID}
    assert value(s, "aep_flow_last_run_input_bytes", **ids) is None
    assert value(s, "aep_flow_input_bytes_total", **ids) is None
    assert value(s, "aep_flow_output_bytes_total", **ids) == 17128
    assert value(s, "aep_flow_runs_total", **ids, status="failed") == 1.0
    assert value(s, "aep_flow_last_failure_timestamp_seconds", **ids) == 1596656113.306


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("success", "success"),
        ("Success", "success"),
        ("partialSuccess", "partial_success"),
        ("Failed", "failed"),
        ("inProgress", "in_progress"),
        ("Processing", "in_progress"),
        ("Waiting", "scheduled"),
        ("scheduled", "scheduled"),
        ("CANCELLED", "cancelled"),
        ("somethingNew", "other"),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_statuses_are_normalised_whatever_their_case_and_unknown_ones_become_other(
    raw: object, expected: str | None
) -> None:
    """Adobe's source and destination spellings map to one status set; unknown ones map to other."""
    assert normalize_status(raw) == expected


def test_run_without_sections_is_in_progress_and_shows_no_counts() -> None:
    """A just-created run (no durationSummary, no summaries) is tracked in progress with no count samples."""
    flow = tutorial()[0]
    young = {"id": "r-young", "flowId": FLOW_ID, "createdAt": TUTORIAL_NOW_MS - 1000, "metrics": {}}
    flow = {**flow, "lastRunDetails": {"id": "r-young", "state": "inProgress"}}
    s = render(flow, [young])
    ids = {"sandbox": "prod", "flow_id": FLOW_ID}
    assert value(s, "aep_flow_runs_in_progress", **ids) == 1.0
    assert value(s, "aep_flow_last_run_status", **ids, status="in_progress") == 1.0
    assert value(s, "aep_flow_last_run_end_timestamp_seconds", **ids) is None
    assert value(s, "aep_flow_last_run_input_records", **ids) is None
    assert value(s, "aep_flow_oldest_in_progress_run_start_timestamp_seconds", **ids) is None  # start unknown
    assert value(s, "aep_flow_runs_total", **ids, status="success") == 0.0


def test_unknown_terminal_status_is_counted_as_other() -> None:
    """A completed run with a status nobody documented is counted under status other, not dropped."""
    flow, run = tutorial()
    run = {**run, "metrics": {**run["metrics"], "statusSummary": {"status": "retryExhausted"}}}
    s = render(flow, [run])
    assert value(s, "aep_flow_runs_total", sandbox="prod", flow_id=FLOW_ID, status="other") == 1.0
    assert value(s, "aep_flow_last_run_status", sandbox="prod", flow_id=FLOW_ID, status="other") == 1.0


def test_uuid_activities_are_keyed_by_their_snake_cased_names() -> None:
    """Newer payloads with UUID activity ids and names give the same activity labels as the legacy ids."""
    run = tutorial()[1]
    run = json.loads(json.dumps(run))
    run["activities"][0]["id"] = "2b5f8a3c-0000-4000-8000-000000000001"
    run["activities"][0]["name"] = "Copy Activity"
    run["activities"][1]["id"] = "2b5f8a3c-0000-4000-8000-000000000002"
    run["activities"][1]["name"] = "Promotion Activity"
    names = [a.name for a in parse_run(run).activities]
    assert names == ["copy_activity", "promotion_activity"]
    assert snake_case("exportActivity") == "export_activity"


def test_activities_can_be_switched_off_and_status_made_sparse() -> None:
    """metrics.activities false drops activity series; sparse_status keeps only the current status series."""
    flow, run = tutorial()
    s = render(flow, [run], options=MetricsConfig(activities=False, sparse_status=True))
    assert not [k for k in s if k[0].startswith("aep_flow_last_run_activity_")]
    statuses = [dict(k[1])["status"] for k in s if k[0] == "aep_flow_last_run_status"]
    assert statuses == ["success"]


def test_the_duration_histogram_can_be_switched_off_and_counted_runs_stay() -> None:
    """metrics.duration_histogram false drops every aep_flow_run_duration_seconds series, and nothing else."""
    flow, run = tutorial()
    with_histogram = render(flow, [run])
    without = render(flow, [run], options=MetricsConfig(profile="full", sparse_status=False, duration_histogram=False))
    dropped = {k for k in with_histogram if k not in without}
    assert dropped and all(k[0].startswith("aep_flow_run_duration_seconds") for k in dropped)
    assert value(without, "aep_flow_runs_total", status="success") == 1


@pytest.mark.parametrize("payload", [None, [], "run", 5, {}, {"id": ""}, {"id": 7}])
def test_payload_without_usable_id_raises_only_payload_error(payload: object) -> None:
    """Items that are not objects with an id raise the package's PayloadError and nothing else."""
    with pytest.raises(PayloadError):
        parse_run(payload)
    with pytest.raises(PayloadError):
        parse_flow(payload)


def test_flow_kind_schedule_and_destination_time_unit_are_read() -> None:
    """isSourceFlow/isDestinationFlow give the kind; minute/hour/day and timeUnit schedules give seconds."""
    src = parse_flow(
        {
            "id": "a",
            "inheritedAttributes": {"properties": {"isSourceFlow": True}},
            "scheduleParams": {"frequency": "minute", "interval": "15"},
        }
    )
    dst = parse_flow(
        {
            "id": "b",
            "inheritedAttributes": {"properties": {"isDestinationFlow": True}},
            "scheduleParams": {"interval": 3, "timeUnit": "hour"},
        }
    )
    streaming = parse_flow({"id": "c", "name": 5, "state": None})
    assert (src.kind, src.schedule_interval_seconds) == ("source", 900.0)
    assert (dst.kind, dst.schedule_interval_seconds) == ("destination", 10800.0)
    assert (streaming.kind, streaming.schedule_interval_seconds, streaming.name, streaming.state) == (
        "unknown",
        None,
        "",
        "unknown",
    )


def test_a_run_of_another_flow_is_never_counted_here() -> None:
    """If the API ignored the flowId filter, runs of other flows are not counted against this one."""
    flow, run = tutorial()
    other = {**run, "id": "someone-else", "flowId": "another-flow"}
    s = render(flow, [run, other])
    assert value(s, "aep_flow_runs_total", sandbox="prod", flow_id=FLOW_ID, status="success") == 1.0


def test_times_in_seconds_are_read_as_the_same_instant_as_in_milliseconds() -> None:
    """A durationSummary in epoch seconds (as in Adobe's "Flow run notifications" success example) gives the same
    times as in milliseconds, and is not noted as invalid; a value in neither range is."""
    seconds = parse_run(
        {
            "id": "r1",
            "flowId": FLOW_ID,
            "createdAt": 1596656079576,
            "metrics": {
                "durationSummary": {"startedAtUTC": 1596656058, "completedAtUTC": 1596656113},
                "statusSummary": {"status": "success"},
            },
        },
        TUTORIAL_NOW_MS,
    )
    assert (seconds.started_at_ms, seconds.completed_at_ms) == (1596656058000, 1596656113000)
    assert seconds.duration_seconds == 55.0 and seconds.unknown_fields == ()
    nonsense = parse_run({"id": "r2", "metrics": {"durationSummary": {"startedAtUTC": 87473822}}}, TUTORIAL_NOW_MS)
    assert nonsense.started_at_ms is None and "startedAtUTC" in nonsense.unknown_fields


def test_a_final_run_without_its_own_end_ended_with_its_last_activity() -> None:
    """A failed run whose durationSummary has no completedAtUTC (Adobe's "Flow run notifications" failure example)
    ends when its last activity completed; a run still in progress gets no end from its activities."""
    activities = [
        {"id": "promotionActivity", "durationSummary": {"startedAtUTC": 1596656058198, "completedAtUTC": 1596656068000}}
    ]
    failed = parse_run(
        {
            "id": "r1",
            "metrics": {"durationSummary": {"startedAtUTC": 1596656058198}, "statusSummary": {"status": "failed"}},
            "activities": activities,
        },
        TUTORIAL_NOW_MS,
    )
    assert failed.completed_at_ms == 1596656068000 and failed.is_terminal
    running = parse_run(
        {
            "id": "r2",
            "metrics": {"durationSummary": {"startedAtUTC": 1596656058198}, "statusSummary": {"status": "inProgress"}},
            "activities": activities,
        },
        TUTORIAL_NOW_MS,
    )
    assert running.completed_at_ms is None and not running.is_terminal


def test_a_record_code_without_a_count_is_shown_and_not_noted() -> None:
    """A failedInfo entry with a code and a message and no count (Adobe's "Standard alert rules" failure payload)
    gives its code at 0 records, and no field is noted as invalid."""
    run = parse_run(
        {
            "id": "r1",
            "metrics": {
                "statusSummary": {"status": "failed"},
                "recordSummary": {"failedInfo": [{"code": "2200", "message": "A connection attempt failed"}]},
            },
        },
        TUTORIAL_NOW_MS,
    )
    assert run.record_codes == (("failed", "2200", 0),)
    assert run.unknown_fields == ()
