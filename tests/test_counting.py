"""Each completed run is counted exactly once: across cycles, restarts, and downtime, against ground truth."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import assert_matches_truth, parse_samples, pick, poll_and_scrape, scrape, serve
from tests.simulation import Sim, make_config, make_exporter


async def test_counters_equal_ground_truth_after_runs_appear_complete_and_fail(sim: Sim) -> None:
    """After several cycles with runs appearing, completing and failing, every counter equals the simulator's truth."""
    exporter = make_exporter(make_config(sim.url))
    server = await serve(exporter)
    try:
        statuses_seen: set[str] = set()
        for _ in range(8):
            assert await exporter.poll_once()
            sim.world.clock.advance(17 * 60)
        assert await exporter.poll_once()
        _status, text, _ = await scrape(server)
    finally:
        await server.close()
    truth = sim.world.truth()
    counted = assert_matches_truth(parse_samples(text), truth)
    for flows in truth["sandboxes"].values():
        for flow in flows.values():
            statuses_seen |= {r["status"] for r in flow["runs"]}
    assert counted > 50
    assert {"success", "partial_success", "failed", "in_progress"} <= statuses_seen


async def test_restart_with_state_file_keeps_counts_and_adds_only_new_runs(sim: Sim, tmp_path: Path) -> None:
    """A restart on the same state file neither loses nor re-counts: only runs new since the stop are added."""
    state = str(tmp_path / "state.db")
    first = make_exporter(make_config(sim.url, state_path=state))
    text_before = await poll_and_scrape(first, cycles=3, world=sim.world, step_s=20 * 60)
    await first.close()
    assert_matches_truth(parse_samples(text_before), sim.world.truth())

    second = make_exporter(make_config(sim.url, state_path=state))
    server = await serve(second)
    try:
        _s, restored, _h = await scrape(server)  # before any poll: the counts come from the file
        assert_matches_truth(parse_samples(restored), sim.world.truth())
        assert await second.poll_once()  # nothing new: still exactly the truth, nothing counted twice
        _s, again, _h = await scrape(server)
    finally:
        await server.close()
        await second.close()
    assert_matches_truth(parse_samples(again), sim.world.truth())


async def test_runs_that_ended_while_stopped_are_counted_once_at_next_poll(sim: Sim, tmp_path: Path) -> None:
    """Runs that started and ended while the exporter was down are counted at the next poll, exactly once."""
    state = str(tmp_path / "state.db")
    first = make_exporter(make_config(sim.url, state_path=state))
    before = parse_samples(await poll_and_scrape(first, world=sim.world, step_s=60))
    await first.close()
    runs_before = sum(v for (n, _), v in before.items() if n == "aep_flow_runs_total")

    sim.world.clock.advance(3 * 3600)  # three hours of downtime: many runs start and end unseen
    second = make_exporter(make_config(sim.url, state_path=state))
    after = parse_samples(await poll_and_scrape(second, cycles=2, world=sim.world, step_s=1))
    await second.close()
    runs_after = assert_matches_truth(after, sim.world.truth())
    assert runs_after > runs_before + 10


async def test_first_sight_counts_only_runs_that_ended_after_the_lookback_start(sim: Sim) -> None:
    """With a 1h lookback, runs that ended earlier are not counted, but the newest run's gauges still show."""
    exporter = make_exporter(make_config(sim.url, initial_lookback=3600.0), world=sim.world)
    try:
        text = await poll_and_scrape(exporter)
    finally:
        await exporter.close()
    samples = parse_samples(text)
    truth = sim.world.truth()
    start_ms = truth["now_ms"] - 3600 * 1000
    for sandbox, flows in truth["sandboxes"].items():
        for flow_id, flow in flows.items():
            done = [r for r in flow["runs"] if r["completed"]]
            expected = sum(1 for r in done if r["end_ms"] >= start_ms)
            counted = sum(
                v for lbls, v in samples.items() if lbls[0] == "aep_flow_runs_total" and ("flow_id", flow_id) in lbls[1]
            )
            assert counted == expected, (flow_id, counted, expected)
            if done:
                assert pick(samples, "aep_flow_last_run_status", sandbox=sandbox, flow_id=flow_id)
