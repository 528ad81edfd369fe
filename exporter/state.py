"""Per-flow state and the counting rule. Pure: values in, new values out; persistence lives in store.py.

The counting rule (metrics.md): a run is counted when it is first seen in a terminal state and ended at
or after the flow's counting start (first time the flow was seen, minus ``poll.initial_lookback``).

Exactly once, whatever the server returns: the ids of counted runs are remembered, and each flow has a count
floor that only rises. A run already counted is either still in the id set or ended (by its own
``completedAtUTC``) before the floor, so it is not counted again even if Adobe returns the flow's whole history
on every poll. The floor rises only to what a verified answer proves was fully seen: the lower of the query's
own bound and ``OVERLAP_MS`` below the newest time the answer carried (Adobe's clock, not ours). Runs without an
end time are kept ``RETENTION_MS`` past their best time (Adobe deletes runs after 90 days), and a run with no
time at all is kept that long past first sight. A run tracked in progress is always counted when it ends.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.model import (
    STATUSES,
    Activity,
    Counts,
    Flow,
    LastRunDetails,
    Run,
    clean_text,
    normalize_status,
    plausible_ms,
    snake_case,
    valid_count,
)

OVERLAP_MS = 10 * 60 * 1000
"""How far below the newest seen ``createdAt`` each runs query reaches, for runs that show up late."""
RETENTION_MS = 91 * 86_400_000
"""Adobe keeps dataflow runs for 90 days: a run older than this cannot come back."""

COUNT_KEYS = tuple(
    [f"records.{k}" for k in ("input", "output", "failed", "skipped", "warning")]
    + [f"bytes.{k}" for k in ("input", "output")]
    + [f"files.{k}" for k in ("input", "output", "failed")]
)
ALWAYS_PRESENT_RUN_STATUSES = ("success", "partial_success", "failed")


@dataclass(frozen=True)
class Window:
    """Which runs a runs answer is known to hold: every run whose ``field`` time (``created`` or ``started``) is
    at least ``bound``; every run of the flow when ``field`` is None; none at all when ``empty`` (an answer cut
    short by the page limit proves nothing)."""

    field: str | None = None
    bound: int = 0
    empty: bool = False

    def covers(self, created_ms: int | None, started_ms: int | None) -> bool:
        """Whether a run with these times would be in the answer, were it still listed."""
        if self.empty:
            return False
        if self.field is None:
            return True
        value = created_ms if self.field == "created" else started_ms
        return value is not None and value >= self.bound


EVERYTHING = Window()
NOTHING = Window(empty=True)


@dataclass(frozen=True, kw_only=True)
class LastRun:
    """The newest run of a flow, whatever its state."""

    id: str
    status: str
    started_ms: int | None
    ended_ms: int | None


@dataclass(frozen=True, kw_only=True)
class CompletedRun:
    """The newest completed run: what the ``aep_flow_last_run_*`` count gauges show."""

    id: str
    ended_ms: int
    counts: Counts
    activities: tuple[Activity, ...]


@dataclass(frozen=True, kw_only=True)
class Histogram:
    """Non-cumulative bucket counts (the last one is +Inf), sum and count of run durations."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds=bounds, counts=(0,) * (len(bounds) + 1))

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> Histogram:
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        counts = list(self.counts)
        counts[index] += 1
        return dataclasses.replace(self, counts=tuple(counts), sum=self.sum + value)


@dataclass(frozen=True, kw_only=True)
class FlowState:
    """Everything the exporter knows of one flow. Replaced, never mutated."""

    sandbox: str
    flow_id: str
    counting_start_ms: int
    flow: Flow | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    up: bool = True
    seen_key: tuple[str, str | None] | None = None
    newest_created_ms: int | None = None
    newest_started_ms: int | None = None
    count_floor_ms: int = 0
    in_progress: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)
    counted: Mapping[str, int] = field(default_factory=dict)
    last_run: LastRun | None = None
    last_completed: CompletedRun | None = None
    last_success_ms: int | None = None
    last_failure_ms: int | None = None
    runs_total: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(ALWAYS_PRESENT_RUN_STATUSES, 0))
    totals: Mapping[str, int] = field(default_factory=dict)
    durations: Histogram = field(default_factory=lambda: Histogram.empty(()))
    error_codes: Mapping[str, int] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.sandbox, self.flow_id)

    def needs_runs(self, flow: Flow) -> bool:
        """Whether ``/runs`` must be read: something changed, or runs are still going."""
        return self.newest_created_ms is None or self.seen_key != flow.change_key or bool(self.in_progress)

    @property
    def first_sight(self) -> bool:
        """No runs answer has been read for this flow yet."""
        return self.newest_created_ms is None

    def runs_lower_bound_ms(self) -> int:
        """How far back (in ``createdAt``) the next runs query must reach: the first-sight floor, or
        ``OVERLAP_MS`` below the newest ``createdAt`` seen and below every run still in progress."""
        return self._lower_bound(self.newest_created_ms, 0)

    def started_lower_bound_ms(self) -> int:
        """The same in ``startedAtUTC``, for the documented run time filter."""
        return self._lower_bound(self.newest_started_ms, 1)

    def _lower_bound(self, newest: int | None, index: int) -> int:
        if newest is None:
            return max(self.first_sight_floor_ms, 0)
        bound = newest - OVERLAP_MS
        for times in self.in_progress.values():
            value = times[index]
            if value is not None:
                bound = min(bound, value)
        return max(bound, 0)

    @property
    def first_sight_floor_ms(self) -> int:
        """On first sight, paging stops once runs are older than this."""
        return self.counting_start_ms - OVERLAP_MS


def new_flow_state(*, sandbox: str, flow_id: str, now_ms: int, lookback_s: float,
                   buckets: tuple[float, ...]) -> FlowState:
    """The state of a flow seen for the first time: counting starts ``lookback`` before now."""
    start = now_ms - int(lookback_s * 1000)
    return FlowState(
        sandbox=sandbox,
        flow_id=flow_id,
        counting_start_ms=start,
        count_floor_ms=start,
        durations=Histogram.empty(buckets),
    )


@dataclass(frozen=True, kw_only=True)
class Update:
    """What ``apply_runs`` did: the new state, and what the caller should log once."""

    state: FlowState
    counted: tuple[Run, ...] = ()
    unknown_statuses: tuple[str, ...] = ()
    activities_dropped: int = 0


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _end_of(run: Run) -> int | None:
    return run.completed_at_ms if run.completed_at_ms is not None else _max(run.started_at_ms, run.created_at_ms)


def _order_key(run: Run) -> tuple[int, int]:
    return (run.time_ms or -1, run.started_at_ms or -1)


def keep_until_ms(run: Run, now_ms: int) -> int:
    """How long a counted run's id must be remembered: until the count floor passes its own end, or, without
    an end time, until Adobe's retention has surely deleted it."""
    if run.completed_at_ms is not None:
        return run.completed_at_ms
    best = run.time_ms
    return (best if best is not None else now_ms) + RETENTION_MS


class _Fold:
    """The mutable working copy of a flow's state while one runs answer is folded into it."""

    def __init__(self, state: FlowState, max_error_codes: int, max_activities: int) -> None:
        self.state = state
        self.max_error_codes = max_error_codes
        self.max_activities = max_activities
        self.activities_dropped = 0
        self.in_progress = dict(state.in_progress)
        self.counted = dict(state.counted)
        self.runs_total = dict(state.runs_total)
        self.totals = dict(state.totals)
        self.codes = dict(state.error_codes)
        self.durations = state.durations
        self.last_success, self.last_failure = state.last_success_ms, state.last_failure_ms
        self.last_completed = state.last_completed
        self.newest_created, self.newest_started = state.newest_created_ms, state.newest_started_ms
        self.newly_counted: list[Run] = []
        self.unknown_statuses: list[str] = []

    def see(self, run: Run, now_ms: int) -> None:
        """Fold one run: watermarks, in-progress tracking, newest results, and counting once."""
        self.newest_created = _max(self.newest_created, run.created_at_ms)
        self.newest_started = _max(self.newest_started, run.started_at_ms)
        if run.status == "other" and run.raw_status:
            self.unknown_statuses.append(run.raw_status)
        if not run.is_terminal:
            self.in_progress[run.id] = (run.created_at_ms, run.started_at_ms)
            return
        was_running = self.in_progress.pop(run.id, None) is not None
        self._note_result(run)
        if self._countable(run, was_running, now_ms):
            self._count(run, now_ms)

    def _note_result(self, run: Run) -> None:
        end = _end_of(run)
        if run.final_status in ("success", "partial_success"):
            self.last_success = _max(self.last_success, run.completed_at_ms)
        elif run.final_status == "failed":
            self.last_failure = _max(self.last_failure, run.completed_at_ms)
        if end is not None and (self.last_completed is None or end >= self.last_completed.ended_ms):
            # Activities are capped like error codes: one run with thousands cannot flood the exposition.
            kept = run.activities[:self.max_activities]
            self.activities_dropped = len(run.activities) - len(kept)
            self.last_completed = CompletedRun(id=run.id, ended_ms=end, counts=run.counts, activities=kept)

    def _countable(self, run: Run, was_running: bool, now_ms: int) -> bool:
        """Not counted yet, not below the count floor (unless we watched it run), ended after the counting start."""
        if run.id in self.counted:
            return False
        if not was_running and keep_until_ms(run, now_ms) < self.state.count_floor_ms:
            return False  # ended before everything this flow has fully seen: counted already, or before the start
        end = _end_of(run)
        return end is None or end >= self.state.counting_start_ms

    def _count(self, run: Run, now_ms: int) -> None:
        self.counted[run.id] = keep_until_ms(run, now_ms)
        self.newly_counted.append(run)
        self.runs_total[run.final_status] = self.runs_total.get(run.final_status, 0) + 1
        for group in ("records", "bytes", "files"):
            for name, value in getattr(run.counts, group).items():
                if value is not None:
                    self.totals[f"{group}.{name}"] = self.totals.get(f"{group}.{name}", 0) + value
        if run.duration_seconds is not None:
            self.durations = self.durations.observe(run.duration_seconds)
        for code in sorted(run.error_codes):
            known = code in self.codes or len([c for c in self.codes if c != "other"]) < self.max_error_codes
            label = code if known else "other"
            self.codes[label] = self.codes.get(label, 0) + 1

    def drop_vanished(self, listed: Mapping[str, Run], window: Window) -> None:
        """Runs tracked in progress that the answer should hold but does not were deleted: stop tracking them."""
        for run_id, (created, started) in list(self.in_progress.items()):
            if run_id not in listed and window.covers(created, started):
                del self.in_progress[run_id]

    def raised_floor(self, runs: Iterable[Run], window: Window) -> int:
        """The count floor after this answer: what it proves was fully seen (see the module docstring)."""
        floor = self.state.count_floor_ms
        if window.empty:
            return floor
        newest = max((t for t in (r.latest_ms for r in runs) if t is not None), default=None)
        if newest is None:
            return floor
        proven = newest - OVERLAP_MS
        if window.field is not None:
            proven = min(proven, window.bound)
        return max(floor, proven)


def apply_runs(state: FlowState, flow: Flow, runs: Iterable[Run], *, now_ms: int, max_error_codes: int,
               window: Window = EVERYTHING, max_activities: int = 20) -> Update:
    """Fold one runs answer into a flow's state, counting each newly completed run exactly once.

    ``window`` says which runs the answer is known to hold: tracked in-progress runs it should hold but does not
    have vanished, and the count floor rises to what it proves. Runs of another flow (a ``flowId`` filter the
    server ignored) are never counted here.
    """
    unique: dict[str, Run] = {}
    for run in runs:
        if run.flow_id is None or run.flow_id == flow.id:
            unique.setdefault(run.id, run)
    ordered = sorted(unique.values(), key=_order_key)
    fold = _Fold(state, max_error_codes, max_activities)
    for run in ordered:
        fold.see(run, now_ms)
    fold.drop_vanished(unique, window)
    floor = fold.raised_floor(ordered, window)
    new_state = dataclasses.replace(
        state,
        flow=flow,
        up=True,
        seen_key=flow.change_key,
        newest_created_ms=fold.newest_created if fold.newest_created is not None else state.counting_start_ms,
        newest_started_ms=fold.newest_started if fold.newest_started is not None else state.counting_start_ms,
        count_floor_ms=floor,
        in_progress=fold.in_progress,
        counted={rid: keep for rid, keep in fold.counted.items() if keep >= floor},
        last_run=_newest_run(state.last_run, flow, ordered),
        last_completed=fold.last_completed,
        last_success_ms=_max(fold.last_success, _last_details_end(flow, ("success", "partial_success"))),
        last_failure_ms=_max(fold.last_failure, _last_details_end(flow, ("failed",))),
        runs_total=fold.runs_total,
        totals=fold.totals,
        durations=fold.durations,
        error_codes=fold.codes,
    )
    return Update(state=new_state, counted=tuple(fold.newly_counted),
                  unknown_statuses=tuple(dict.fromkeys(fold.unknown_statuses)),
                  activities_dropped=fold.activities_dropped)


def _last_details_end(flow: Flow, statuses: tuple[str, ...]) -> int | None:
    last = flow.last_run
    if last is None or normalize_status(last.state) not in statuses:
        return None
    return last.completed_at_ms


def _newest_run(previous: LastRun | None, flow: Flow, ordered: list[Run]) -> LastRun | None:
    """The newest run: the one ``lastRunDetails`` names, from the runs answer when it is there."""
    details = flow.last_run
    by_id = {run.id: run for run in ordered}
    if details is not None and details.id in by_id:
        return _as_last_run(by_id[details.id])
    if details is not None:
        return _details_as_last_run(details)
    if ordered:
        return _as_last_run(ordered[-1])
    return previous


def _as_last_run(run: Run) -> LastRun:
    status = run.status or ("other" if run.is_terminal else "in_progress")
    end = run.completed_at_ms if run.is_terminal else None
    return LastRun(id=run.id, status=status, started_ms=run.started_at_ms, ended_ms=end)


def _details_as_last_run(details: LastRunDetails) -> LastRun:
    status = normalize_status(details.state) or ("other" if details.completed_at_ms is not None else "in_progress")
    running = status in ("in_progress", "scheduled")
    return LastRun(id=details.id, status=status, started_ms=details.started_at_ms,
                   ended_ms=None if running else details.completed_at_ms)


def refresh_flow(state: FlowState, flow: Flow) -> FlowState:
    """A poll that read the flow but needed no runs: keep the counts, take the new description."""
    return dataclasses.replace(state, flow=flow, up=True)


def mark_down(state: FlowState) -> FlowState:
    """The flow could not be read: its series keep their last values, ``flow_up`` says 0."""
    return state if not state.up else dataclasses.replace(state, up=False)


# --- JSON form, for the state store -------------------------------------------------------------------------

def state_to_json(state: FlowState) -> dict[str, Any]:
    """A JSON-ready dict of a flow's state (labels and ``up`` are not persisted: config and polls set them)."""
    data = dataclasses.asdict(state)
    del data["labels"], data["up"]
    return data


class _Loaded:
    """The validation of model.py, applied to a state read back from disk: a file written by an older version,
    or by hand, cannot bring a lone surrogate, a 1e400 count or a timestamp from the year 33658 back in."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def text(self, value: object, limit: int = 256) -> str:
        return clean_text(value, limit) if isinstance(value, str) else ""

    def ms(self, value: object) -> int | None:
        return plausible_ms(value, self.now_ms)

    def watermark(self, value: object, fallback: int) -> int | None:
        """None stays None (no runs read yet); an implausible watermark falls back to the counting start."""
        if value is None:
            return None
        checked = self.ms(value)
        return fallback if checked is None else checked

    def counts(self, data: Mapping[str, Any]) -> Counts:
        return Counts(**{group: {self.text(k, 64): valid_count(v) for k, v in data[group].items()}
                         for group in ("records", "bytes", "files")})

    def tally(self, data: Mapping[str, Any], limit: int = 64) -> dict[str, int]:
        """A counter map with only valid keys and counts (an invalid one is dropped: unknown, not 0)."""
        out = {}
        for key, val in data.items():
            count = valid_count(val)
            if count is not None:
                out[self.text(key, limit)] = count
        return out

    def flow(self, data: Mapping[str, Any] | None) -> Flow | None:
        if data is None:
            return None
        last = data.get("last_run")
        interval = _finite(data.get("schedule_interval_seconds"), 366 * 86400.0)
        return Flow(
            id=self.text(data["id"], 128), name=self.text(data.get("name")),
            flow_spec_id=self.text(data.get("flow_spec_id"), 128),
            source_connection_spec_id=self.text(data.get("source_connection_spec_id"), 128),
            target_connection_spec_id=self.text(data.get("target_connection_spec_id"), 128),
            kind=self.text(data.get("kind"), 32) or "unknown", state=self.text(data.get("state"), 64) or "unknown",
            schedule_interval_seconds=interval if interval else None,
            last_run=LastRunDetails(id=self.text(last["id"], 128), state=self.text(last.get("state"), 64) or None,
                                    started_at_ms=self.ms(last.get("started_at_ms")),
                                    completed_at_ms=self.ms(last.get("completed_at_ms"))) if last else None,
        )

    def activity(self, a: Mapping[str, Any]) -> Activity:
        return Activity(name=snake_case(self.text(a["name"], 128)), status=_status_of(a.get("status")),
                        duration_seconds=_finite(a.get("duration_seconds"), 2.0**53), counts=self.counts(a["counts"]))

    def histogram(self, hist: Mapping[str, Any], buckets: tuple[float, ...]) -> tuple[Histogram, bool]:
        bounds = tuple(float(b) for b in hist["bounds"])
        counts = tuple(valid_count(c) for c in hist["counts"])
        total = float(hist["sum"])
        if bounds != tuple(buckets) or None in counts or len(counts) != len(bounds) + 1 \
                or not math.isfinite(total):
            return Histogram.empty(tuple(buckets)), True
        return Histogram(bounds=bounds, counts=tuple(c or 0 for c in counts), sum=total), False


def _finite(value: object, limit: float) -> float | None:
    """A number in 0..limit, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= limit else None


def _status_of(value: object) -> str | None:
    return value if isinstance(value, str) and value in STATUSES else None


def _counted_from(data: Mapping[str, Any]) -> dict[str, int]:
    """The counted-id set; a file from before the count floor stored each id's ``createdAt``, kept here for
    Adobe's retention past it, so no id it held can be counted again."""
    counted = {str(k): int(v) for k, v in data["counted"].items()}
    if "count_floor_ms" not in data:
        counted = {k: v + RETENTION_MS for k, v in counted.items()}
    return counted


def state_from_json(data: Mapping[str, Any], buckets: tuple[float, ...],
                    now_ms: int | None = None) -> tuple[FlowState, bool]:
    """Rebuild a flow's state, validated like a fresh answer (``now_ms`` bounds timestamps; default: the wall
    clock); the bool says the histogram was reset (the buckets changed, or it was not valid).

    Raises KeyError, TypeError or ValueError on a malformed document; the store turns that into StateError.
    """
    load = _Loaded(int(time.time() * 1000) if now_ms is None else now_ms)
    completed = data.get("last_completed")
    last_run = data.get("last_run")
    histogram, reset = load.histogram(data["durations"], buckets)
    seen_key = data.get("seen_key")
    last_status = _status_of(last_run.get("status")) if last_run else None
    state = FlowState(
        sandbox=str(data["sandbox"]),
        flow_id=str(data["flow_id"]),
        counting_start_ms=int(data["counting_start_ms"]),
        flow=load.flow(data.get("flow")),
        seen_key=(seen_key[0], seen_key[1]) if seen_key else None,
        newest_created_ms=load.watermark(data.get("newest_created_ms"), int(data["counting_start_ms"])),
        newest_started_ms=load.watermark(data.get("newest_started_ms", data.get("newest_created_ms")),
                                         int(data["counting_start_ms"])),
        count_floor_ms=int(data.get("count_floor_ms", data["counting_start_ms"])),
        in_progress={load.text(k, 128): (load.ms(v[0]), load.ms(v[1])) for k, v in data["in_progress"].items()},
        counted=_counted_from(data),
        last_run=LastRun(id=load.text(last_run["id"], 128), status=last_status or "other",
                         started_ms=load.ms(last_run.get("started_ms")),
                         ended_ms=load.ms(last_run.get("ended_ms"))) if last_run else None,
        last_completed=CompletedRun(
            id=load.text(completed["id"], 128),
            ended_ms=int(completed["ended_ms"]),
            counts=load.counts(completed["counts"]),
            activities=tuple(load.activity(a) for a in completed["activities"]),
        ) if completed else None,
        last_success_ms=load.ms(data.get("last_success_ms")),
        last_failure_ms=load.ms(data.get("last_failure_ms")),
        runs_total=load.tally(data["runs_total"]),
        totals=load.tally(data["totals"]),
        durations=histogram,
        error_codes=load.tally(data["error_codes"]),
    )
    return state, reset

