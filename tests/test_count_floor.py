"""The counting rule's memory: counted ids and the count floor make a second count impossible whatever the
server returns, runs without createdAt are counted once, and older state files keep their guarantee."""

from __future__ import annotations

import json
from typing import Any

from exporter.config import MetricsConfig
from exporter.counting import apply_runs, new_flow_state
from exporter.model import parse_flow, parse_run
from exporter.statecodec import state_from_json, state_to_json
from exporter.values import EVERYTHING, OVERLAP_MS, RETENTION_MS, Window

FLOW = "f0000000-0000-4000-8000-000000000001"
T0 = 1_790_000_000_000  # a fixed "now" in epoch ms
MIN = 60_000


def flow_json(last_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": FLOW, "name": "Orders", "state": "enabled"}
    if last_id:
        body["lastRunDetails"] = {"id": last_id, "state": "success"}
    return body


def run_json(
    n: int | str,
    *,
    created: int | None,
    start: int | None = None,
    end: int | None = None,
    status: str = "success",
    updated: int | None = None,
) -> dict[str, Any]:
    duration: dict[str, int] = {}
    if start is not None:
        duration["startedAtUTC"] = start
    if end is not None:
        duration["completedAtUTC"] = end
    body: dict[str, Any] = {
        "id": f"run-{n}",
        "flowId": FLOW,
        "metrics": {
            "durationSummary": duration,
            "statusSummary": {"status": status},
            "recordSummary": {"inputRecordCount": 10},
        },
    }
    if created is not None:
        body["createdAt"] = created
    if updated is not None:
        body["updatedAt"] = updated
    return body


def history(count: int, *, every_ms: int = 15 * MIN, first: int = T0) -> list[dict[str, Any]]:
    """``count`` finished runs, one every ``every_ms``, each lasting five minutes."""
    return [
        run_json(
            f"h{first + i * every_ms}",
            created=first + i * every_ms,
            start=first + i * every_ms + 1000,
            end=first + i * every_ms + 5 * MIN,
        )
        for i in range(count)
    ]


def total(state: Any) -> int:
    return int(sum(state.runs_total.values()))


def test_whole_history_returned_on_every_poll_is_counted_once_and_ids_are_pruned() -> None:
    """A server that returns every run on every poll (filter ignored) never gets a run counted twice, while the
    id memory keeps only runs the count floor has not passed."""
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=T0, initial_lookback=3600, duration_buckets=())
    runs: list[dict[str, Any]] = []
    for poll in range(40):
        runs.append(history(poll + 1)[-1])
        now = T0 + poll * 15 * MIN + 6 * MIN
        flow = parse_flow(flow_json(runs[-1]["id"]))
        state = apply_runs(
            state,
            flow,
            [parse_run(r) for r in runs],
            now_ms=now,
            metrics=MetricsConfig(max_error_codes_per_flow=5),
            window=EVERYTHING,
        ).state
        assert total(state) == len(runs)
    assert len(state.counted) <= 2
    assert state.count_floor_ms > T0 + 30 * 15 * MIN


def test_count_floor_never_rises_above_the_query_bound_nor_past_newest_minus_overlap() -> None:
    """The floor rises only to what the answer proves: min(window bound, newest time seen - overlap)."""
    state = new_flow_state(
        sandbox="prod", flow_id=FLOW, now_ms=T0 + 60 * MIN, initial_lookback=3600, duration_buckets=()
    )
    flow = parse_flow(flow_json())
    runs = [parse_run(r) for r in history(4)]
    newest = max(r.latest_ms or 0 for r in runs)
    bounded = apply_runs(
        state,
        flow,
        runs,
        now_ms=T0,
        metrics=MetricsConfig(max_error_codes_per_flow=5),
        window=Window(field="created", bound=T0 + 10 * MIN),
    ).state
    assert bounded.count_floor_ms == max(state.count_floor_ms, T0 + 10 * MIN)
    everything = apply_runs(
        state, flow, runs, now_ms=T0, metrics=MetricsConfig(max_error_codes_per_flow=5), window=EVERYTHING
    ).state
    assert everything.count_floor_ms == max(state.count_floor_ms, newest - OVERLAP_MS)
    cut_short = apply_runs(
        state, flow, runs, now_ms=T0, metrics=MetricsConfig(max_error_codes_per_flow=5), window=Window(empty=True)
    ).state
    assert cut_short.count_floor_ms == state.count_floor_ms


def test_run_with_no_time_at_all_is_counted_once_on_first_sight() -> None:
    """A finished run that carries no createdAt, updatedAt, start or end is counted when first seen, once."""
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=T0, initial_lookback=3600, duration_buckets=())
    timeless = run_json(1, created=None)
    for poll in range(5):
        others = history(poll + 1, first=T0 + 20 * MIN)
        state = apply_runs(
            state,
            parse_flow(flow_json()),
            [parse_run(r) for r in [timeless, *others]],
            now_ms=T0 + (poll + 2) * 20 * MIN,
            metrics=MetricsConfig(max_error_codes_per_flow=5),
            window=EVERYTHING,
        ).state
        assert total(state) == 1 + len(others)
    assert state.counted["run-1"] >= T0 + RETENTION_MS  # kept for Adobe's retention past first sight


def test_runs_without_created_at_are_ordered_and_watermarked_by_their_best_time() -> None:
    """updatedAt, then the start, then the end stand in for a missing createdAt; the newest run is the latest."""
    only_updated = parse_run(run_json(1, created=None, updated=T0 + 5 * MIN))
    only_started = parse_run(run_json(2, created=None, start=T0 + 7 * MIN))
    only_ended = parse_run(run_json(3, created=None, end=T0 + 9 * MIN))
    assert (only_updated.time_ms, only_started.time_ms, only_ended.time_ms) == (
        T0 + 5 * MIN,
        T0 + 7 * MIN,
        T0 + 9 * MIN,
    )
    state = new_flow_state(
        sandbox="prod", flow_id=FLOW, now_ms=T0 + 20 * MIN, initial_lookback=3600, duration_buckets=()
    )
    update = apply_runs(
        state,
        parse_flow(flow_json()),
        [only_ended, only_updated, only_started],
        now_ms=T0 + 20 * MIN,
        metrics=MetricsConfig(max_error_codes_per_flow=5),
    )
    assert total(update.state) == 3
    assert update.state.last_run is not None and update.state.last_run.id == "run-3"
    assert update.state.newest_started_ms == T0 + 7 * MIN


def test_run_watched_in_progress_is_counted_when_it_ends_even_below_the_floor() -> None:
    """A run seen running is counted when it ends, even if Adobe dates its end before the floor has reached."""
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=T0, initial_lookback=3600, duration_buckets=())
    flow = parse_flow(flow_json())
    running = run_json(1, created=T0, start=T0 + 1000, status="inProgress")
    state = apply_runs(
        state, flow, [parse_run(running)], now_ms=T0 + MIN, metrics=MetricsConfig(max_error_codes_per_flow=5)
    ).state
    later = history(3, first=T0 + 60 * MIN)
    state = apply_runs(
        state,
        flow,
        [parse_run(running), *map(parse_run, later)],
        now_ms=T0 + 100 * MIN,
        metrics=MetricsConfig(max_error_codes_per_flow=5),
    ).state
    assert state.count_floor_ms > T0 + 2 * MIN
    ended = run_json(1, created=T0, start=T0 + 1000, end=T0 + 2 * MIN)
    state = apply_runs(
        state,
        flow,
        [parse_run(ended)],
        now_ms=T0 + 110 * MIN,
        metrics=MetricsConfig(max_error_codes_per_flow=5),
        window=Window(field="created", bound=T0),
    ).state
    assert total(state) == 4


def test_state_file_of_the_previous_version_loads_and_counts_nothing_twice() -> None:
    """A state written before the count floor existed (counted ids mapped to createdAt) loads, and a server
    returning the whole history after the upgrade adds nothing already counted."""
    state = new_flow_state(sandbox="prod", flow_id=FLOW, now_ms=T0, initial_lookback=3600, duration_buckets=())
    runs = [parse_run(r) for r in history(6)]
    state = apply_runs(
        state, parse_flow(flow_json()), runs, now_ms=T0 + 90 * MIN, metrics=MetricsConfig(max_error_codes_per_flow=5)
    ).state
    old = state_to_json(state)
    for key in ("count_floor_ms", "newest_started_ms"):
        del old[key]
    old["counted"] = {r.id: r.created_at_ms for r in runs}  # what the previous version stored
    loaded, _reset = state_from_json(json.loads(json.dumps(old)), ())
    assert loaded.count_floor_ms == loaded.counting_start_ms
    again = apply_runs(
        loaded,
        parse_flow(flow_json()),
        runs,
        now_ms=T0 + 95 * MIN,
        metrics=MetricsConfig(max_error_codes_per_flow=5),
        window=EVERYTHING,
    ).state
    assert total(again) == total(state) == 6
