"""Data as of when, and when the next run is due: aep_flow_data_as_of, next_run_expected and schedule_since against
the simulator's ground truth, across a schedule change, and through a restart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from exporter.config import MetricsConfig
from exporter.counting import apply_runs, new_flow_state, refresh_flow
from exporter.model import parse_flow, parse_run
from tests.helpers import parse_samples, pick, poll_and_scrape, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter

HOUR_MS = 3_600_000


async def test_data_as_of_is_the_newest_successful_data_window_and_next_run_follows_the_schedule(sim: Sim) -> None:
    """For every flow: data as of = the newest success's copy windowEnd (a destination's: its end), as the
    simulator says; the next run is due at the newest run's start plus the schedule's interval (an hour for a
    streaming flow); one-time and disabled flows have no next run."""
    exporter = make_exporter(make_config(sim.url), world=sim.world)
    samples = parse_samples(await poll_and_scrape(exporter, cycles=3, world=sim.world, step_s=20 * 60))
    truth = sim.world.truth()
    checked = {"data": 0, "next": 0, "none": 0}
    for sandbox, flows in truth["sandboxes"].items():
        for flow_id, flow in flows.items():
            ids = {"sandbox": sandbox, "flow_id": flow_id}
            good = [r["data_as_of_ms"] for r in flow["runs"] if r["status"] in ("success", "partial_success")]
            shown = value(samples, "aep_flow_data_as_of_timestamp_seconds", **ids)
            assert shown == (max(good) / 1000 if good else None), (flow_id, shown, good)
            checked["data"] += bool(good)
            newest = max(flow["runs"], key=lambda r: r["created_ms"], default=None)
            due = value(samples, "aep_flow_next_run_expected_timestamp_seconds", **ids)
            if flow["state"] != "enabled" or flow["schedule_seconds"] is None or newest is None:
                assert due is None, flow_id
                checked["none"] += 1
                continue
            if value(samples, "aep_flow_schedule_interval_seconds", **ids) is None and flow["kind"] == "destination":
                continue  # a segment export: its interval is its audiences' (test_schedules.py)
            assert due == (newest["started_ms"] + flow["schedule_seconds"] * 1000) / 1000, (flow_id, due)
            checked["next"] += 1
    assert checked["data"] > 5 and checked["next"] > 5 and checked["none"] >= 1, checked


def test_a_schedule_change_moves_the_next_run_from_the_change_not_from_the_last_run() -> None:
    """A daily flow moved to hourly is due an hour after the change was seen, not an hour after its last run (which
    would make it late at once); the schedule's startTime counts the same way."""
    now = 1_790_000_000_000
    daily = {"id": "f1", "state": "enabled", "scheduleParams": {"frequency": "day", "interval": 1}}
    run = {
        "id": "r1",
        "flowId": "f1",
        "createdAt": now - 5 * HOUR_MS,
        "metrics": {
            "durationSummary": {"startedAtUTC": now - 5 * HOUR_MS, "completedAtUTC": now - 5 * HOUR_MS + 60_000},
            "statusSummary": {"status": "success"},
        },
    }
    state = new_flow_state(sandbox="prod", flow_id="f1", now_ms=now, initial_lookback=86400, duration_buckets=())
    state = apply_runs(state, parse_flow(daily, now), [parse_run(run, now)], now_ms=now, metrics=MetricsConfig()).state
    assert state.schedule_since_ms is None
    assert state.next_run_expected_ms == now - 5 * HOUR_MS + 24 * HOUR_MS
    hourly = dict(daily, scheduleParams={"frequency": "hour", "interval": 1})
    later = now + 60_000
    moved = refresh_flow(state, parse_flow(hourly, later), later)
    assert moved.schedule_since_ms == later
    assert moved.next_run_expected_ms == later + HOUR_MS  # not now - 4h: not late the moment it changed
    assert refresh_flow(moved, parse_flow(hourly, later + 1), later + 1).schedule_since_ms == later  # kept
    started = dict(hourly, scheduleParams={"frequency": "hour", "interval": 1, "startTime": (later + HOUR_MS) / 1000})
    assert refresh_flow(moved, parse_flow(started, later), later).next_run_expected_ms == later + 2 * HOUR_MS


def test_a_streaming_flow_is_due_hourly_and_a_disabled_or_ended_one_never() -> None:
    """No schedule of any kind: a streaming flow, whose runs are hourly windows; disabled flows and segment exports
    past their last audience's end expect no run."""
    now = 1_790_000_000_000
    run = {"id": "r1", "metrics": {"durationSummary": {"startedAtUTC": now - 600_000}, "statusSummary": {}}}
    state = new_flow_state(sandbox="prod", flow_id="s1", now_ms=now, initial_lookback=86400, duration_buckets=())
    streaming = parse_flow({"id": "s1", "state": "enabled"}, now)
    assert streaming.streaming and streaming.schedule_interval_seconds is None
    state = apply_runs(state, streaming, [parse_run(run, now)], now_ms=now, metrics=MetricsConfig()).state
    assert state.next_run_expected_ms == now - 600_000 + HOUR_MS
    disabled = parse_flow({"id": "s1", "state": "disabled"}, now)
    assert dataclasses.replace(state, flow=disabled).next_run_expected_ms is None
    once = parse_flow({"id": "s1", "state": "enabled", "scheduleParams": {"frequency": "once"}}, now)
    assert not once.streaming and dataclasses.replace(state, flow=once).next_run_expected_ms is None
    ended = dataclasses.replace(streaming, schedule_end_ms=now)
    assert dataclasses.replace(state, flow=ended).next_run_expected_ms is None


async def test_data_as_of_and_schedule_since_survive_a_restart(sim: Sim, tmp_path: Path) -> None:
    """The state file keeps data as of and schedule since: after a restart, before any poll, both are served as
    they were."""
    path = str(tmp_path / "state.db")
    first = make_exporter(make_config(sim.url, state_path=path), world=sim.world)
    before = parse_samples(await poll_and_scrape(first, cycles=2, world=sim.world, step_s=20 * 60))
    await first.close()
    second = make_exporter(make_config(sim.url, state_path=path), world=sim.world)
    server = await serve(second)  # started, not polled: what it serves comes from the state file
    try:
        _status, text, _headers = await scrape(server)
    finally:
        await server.close()
    after = parse_samples(text)
    for name in ("aep_flow_data_as_of_timestamp_seconds", "aep_flow_schedule_since_timestamp_seconds"):
        assert pick(after, name) == pick(before, name), name
    assert pick(before, "aep_flow_data_as_of_timestamp_seconds") and pick(
        before, "aep_flow_schedule_since_timestamp_seconds"
    )


async def test_a_held_flow_starts_no_run_and_its_next_run_stays_due(sim: Sim) -> None:
    """The simulator's hold (a scheduled run Adobe does not start): no run starts for a while, the exporter's next
    expected run stays where the schedule put it (so the flow is late), and runs resume after the hold."""
    world = sim.world
    flow = next(f for f in world.flows["prod"].values() if f.schedule_s and f.kind == "source" and f.schedule_s <= 3600)
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",)), world=world)
    ids = {"sandbox": "prod", "flow_id": flow.id}
    server = await serve(exporter)

    async def due_after(cycles: int, step_s: float) -> float | None:
        for _ in range(cycles):
            world.clock.advance(step_s)
            assert await exporter.poll_once()
        samples = parse_samples((await scrape(server))[1])
        return value(samples, "aep_flow_next_run_expected_timestamp_seconds", **ids)

    try:
        first = await due_after(1, 0)
        world.hold(flow.id, 3 * flow.schedule_s)
        assert await due_after(2, flow.schedule_s) == first
        assert first is not None and first < world.now_ms() / 1000  # due in the past: the flow is late
        resumed = await due_after(2, 2 * flow.schedule_s)
        assert resumed is not None and resumed > first
    finally:
        await server.close()
