"""The SQLite state store: round trips, refusal of foreign or corrupt files, bounded growth."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from exporter.config import PROFILES, MetricsConfig
from exporter.errors import StateError
from exporter.store import SqliteStore
from tests.simulation import Sim, make_config, make_exporter


async def test_state_round_trips_through_the_file(sim: Sim, tmp_path: Path) -> None:
    """Every flow state written by a poll reads back equal (labels come from config, not the file)."""
    path = tmp_path / "s.db"
    exporter = make_exporter(make_config(sim.url, state_path=str(path)))
    await exporter.start()
    for _ in range(3):
        assert await exporter.poll_once()
        sim.world.clock.advance(1800)
    states = {s.key: s for s in exporter.snapshot().flows}
    await exporter.close()
    store = SqliteStore(path)
    loaded, resets = store.load(MetricsConfig().duration_buckets)
    store.close()
    assert resets == []
    assert len(loaded) == len(states) == 12
    for state in loaded:
        original = states[state.key]
        assert state == original.__class__(**{**original.__dict__, "labels": {}})


def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A SQLite database of another program gives StateError and is not modified."""
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="another program"):
        SqliteStore(path)
    assert path.read_bytes() == before


def test_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A text file at state.path gives StateError naming the file, and keeps its content."""
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(StateError) as info:
        SqliteStore(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


async def test_corrupt_entry_gives_a_clear_error(sim: Sim, tmp_path: Path) -> None:
    """A damaged row makes loading fail with StateError naming the flow, never a KeyError."""
    path = tmp_path / "s.db"
    exporter = make_exporter(make_config(sim.url, state_path=str(path)))
    await exporter.start()
    assert await exporter.poll_once()
    await exporter.close()
    db = sqlite3.connect(path)
    sandbox, flow_id, text = db.execute("SELECT sandbox, flow_id, state FROM flows LIMIT 1").fetchone()
    data = json.loads(text)
    del data["runs_total"]
    db.execute("UPDATE flows SET state = ? WHERE sandbox = ? AND flow_id = ?", (json.dumps(data), sandbox, flow_id))
    db.commit()
    db.close()
    again = make_exporter(make_config(sim.url, state_path=str(path)))
    with pytest.raises(StateError, match=flow_id):
        await again.start()  # the state file is opened and loaded at start, not in the constructor
    await again.close()


async def test_changed_buckets_reset_only_the_histogram(sim: Sim, tmp_path: Path) -> None:
    """New duration buckets reset the stored histograms (reported), while run counters are kept."""
    path = tmp_path / "s.db"
    exporter = make_exporter(make_config(sim.url, state_path=str(path)))
    await exporter.start()
    assert await exporter.poll_once()
    totals = {s.key: dict(s.runs_total) for s in exporter.snapshot().flows}
    await exporter.close()
    again = make_exporter(
        make_config(sim.url, state_path=str(path), metrics=MetricsConfig(duration_buckets=(10.0, 100.0)))
    )
    await again.start()
    for state in again.snapshot().flows:
        assert state.durations.bounds == (10.0, 100.0)
        assert state.durations.count == 0
        assert dict(state.runs_total) == totals[state.key]
    await again.close()


async def test_switching_profile_full_to_lean_rebuckets_the_histogram_exactly(sim: Sim, tmp_path: Path) -> None:
    """A state written under metrics.profile full loads under lean with the same observations in the lean buckets
    (each shared bound's cumulative count, the count and the sum kept: Prometheus sees no reset)."""
    path = tmp_path / "s.db"
    full = make_exporter(make_config(sim.url, state_path=str(path), metrics=PROFILES["full"]))
    await full.start()
    assert await full.poll_once()
    before = {s.key: s.durations for s in full.snapshot().flows}
    await full.close()
    lean = make_exporter(make_config(sim.url, state_path=str(path), metrics=MetricsConfig()))
    await lean.start()
    after = {s.key: s.durations for s in lean.snapshot().flows}
    await lean.close()
    assert sum(h.count for h in after.values()) > 0
    for key, hist in after.items():
        old = before[key]
        assert hist.bounds == MetricsConfig().duration_buckets
        assert (hist.count, hist.sum) == (old.count, old.sum)
        for i, bound in enumerate(hist.bounds):
            assert sum(hist.counts[: i + 1]) == sum(
                c for b, c in zip(old.bounds, old.counts, strict=False) if b <= bound
            )


async def test_counted_run_ids_stay_bounded_over_many_cycles(sim: Sim, tmp_path: Path) -> None:
    """After days of runs, each flow remembers only the run ids its count floor has not passed."""
    exporter = make_exporter(make_config(sim.url, state_path=str(tmp_path / "s.db")), world=sim.world)
    await exporter.start()
    for _ in range(48):  # two simulated days, one poll every hour
        sim.world.clock.advance(3600)
        assert await exporter.poll_once()
    states = exporter.snapshot().flows
    await exporter.close()
    counted_total = sum(sum(s.runs_total.values()) for s in states)
    remembered = max(len(s.counted) for s in states)
    assert counted_total > 500
    assert remembered <= 12  # at most the runs of the last ~hour and ten minutes of a 15-minute flow, plus long runs
