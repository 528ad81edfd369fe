"""What an event says, whatever its shape: every place Adobe's payloads have put the flow, the run and the event
code, arrays and message batches of several events, and what is counted rather than refused."""

from __future__ import annotations

from exporter.events import MAX_EVENTS_PER_PAYLOAD, Event, Unusable, parse_events

FLOW, RUN = "c9cef9cb-c934-4467-8ef9-cbc934546741", "9830305a-985f-47d0-b030-5a985fd7d004"
NOW = 1_800_000_000_000


def events(payload: object) -> list[Event]:
    found = parse_events(payload, NOW)
    assert all(isinstance(e, Event) for e in found), found
    return [e for e in found if isinstance(e, Event)]


def test_the_run_object_names_its_flow_and_run_wherever_it_sits() -> None:
    """A run object (flowId and metrics) gives its own id as the run; an envelope's body.data, an alert's
    flowRunId and a bare flow id are read too."""
    run = {"id": RUN, "flowId": FLOW, "sandboxName": "prod", "metrics": {"statusSummary": {"status": "success"}}}
    shapes = [
        {"event_id": "e1", "event": run},
        run,
        {"event": {"body": {"data": {"flowId": FLOW, "flowRunId": RUN}}}},
        {"flowId": FLOW, "flowRunId": RUN, "id": "alert-1", "status": "FIRING"},
    ]
    assert [(e.flow_id, e.run_id) for s in shapes for e in events(s)] == [(FLOW, RUN)] * 4
    assert events({"flowId": FLOW, "id": "alert-2"})[0].run_id is None  # an alert's own id is not a run


def test_arrays_and_message_batches_give_every_event_they_hold() -> None:
    """An array of envelopes and a batch of several messages give one event per run, each with its code."""
    value = {"id": RUN, "flowId": FLOW, "metrics": {"statusSummary": {"status": "failed"}}}
    batch = [
        {
            "messages": [
                {"_eventNotificationMeta": {"type": "sources_flow_run_failed"}, "value": value},
                {"_eventNotificationMeta": {"type": "sources_flow_run_failed"}, "value": {**value, "id": "other-run"}},
            ]
        }
    ]
    found = events(batch)
    assert [(e.run_id, e.code) for e in found] == [
        (RUN, "sources_flow_run_failed"),
        ("other-run", "sources_flow_run_failed"),
    ]
    envelopes = [{"event_id": f"e{i}", "event": {**value, "id": f"r{i}"}} for i in range(3)]
    assert [e.run_id for e in events(envelopes)] == ["r0", "r1", "r2"]


def test_events_without_an_id_are_told_apart_by_what_they_say() -> None:
    """Without an event id, the same run and code are one event (any shape); another code or run is another; an
    alert naming no run is told by its content."""
    run = {
        "id": RUN,
        "flowId": FLOW,
        "metrics": {"statusSummary": {"status": "success"}},
        "header": {"_adobeio": {"eventCode": "sources_flow_run_success"}},
    }
    inner = events(run)[0]
    wrapped = events({"event_id": "some-id", "event": run})[0]
    assert inner.key == wrapped.key
    other = events({**run, "header": {"_adobeio": {"eventCode": "source_flow_run_info"}}})[0]
    assert other.key != inner.key
    alerts = [events({"flowId": FLOW, "status": s})[0].key for s in ("FIRING", "INACTIVE", "FIRING")]
    assert alerts[0] == alerts[2] != alerts[1]


def test_a_start_event_asks_for_one_read_and_an_end_event_for_its_count() -> None:
    """A run in progress (or scheduled) is not final; a success, a failure or an unknown status is; times in
    seconds are read as milliseconds."""
    running = events({"id": RUN, "flowId": FLOW, "metrics": {"statusSummary": {"status": "inProgress"}}})[0]
    ended = events(
        {
            "id": RUN,
            "flowId": FLOW,
            "metrics": {"statusSummary": {"status": "success"}, "durationSummary": {"completedAtUTC": 1_799_999_000}},
        }
    )[0]
    assert not running.final and ended.final and ended.ended_ms == 1_799_999_000_000


def test_what_names_no_flow_or_is_not_an_event_is_counted_not_refused() -> None:
    """A data ingestion notification is not_a_flow; a number, a string, an unusable flow id and a payload of more
    events than the cap are invalid; nothing raises."""
    assert parse_events({"event_id": "x", "event": {"xdm:datasetId": "d1", "xdm:eventCode": "ing_load_success"}}) == [
        Unusable(outcome="not_a_flow", reason="a data ingestion notification (names a dataset, no flow)", key="id:x")
    ]
    assert [u.outcome for u in parse_events([7, "x", {"flowId": "../etc"}])] == ["invalid"] * 3  # type: ignore[union-attr]
    many = parse_events([{"flowId": FLOW, "n": i} for i in range(MAX_EVENTS_PER_PAYLOAD + 5)])
    assert len(many) == MAX_EVENTS_PER_PAYLOAD + 1 and isinstance(many[-1], Unusable)
