"""The counting rule, in named steps. Pure: values in, new values out; persistence lives in store.py.

The counting rule (metrics.md): a run is counted when it is first seen in a terminal state and ended at
or after the flow's counting start (first time the flow was seen, minus ``poll.initial_lookback``).

Exactly once, whatever the server returns: the ids of counted runs are remembered, and each flow has a count
floor that only rises. A run already counted is either still in the id set or ended (by its own
``completedAtUTC``) before the floor, so it is not counted again even if Adobe returns the flow's whole history
on every poll. The floor rises only to what a verified answer proves was fully seen: the lower of the query's
own bound and ``OVERLAP_MS`` below the newest time the answer carried (Adobe's clock, not ours). Runs without an
end time are kept ``RETENTION_MS`` past their best time (Adobe deletes runs after 90 days), and a run with no
time at all is kept that long past first sight. A run tracked in progress is always counted when it ends.

The steps of folding one runs answer (``apply_runs``): dedupe the answer, then per run in time order track it
while in progress, note the newest results, count it once (``_Fold.see``); then drop tracked runs that
vanished, raise the count floor and prune the counted ids below it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from exporter.config import MetricsConfig
from exporter.model import Flow, LastRunDetails, Run
from exporter.statuses import normalize_status
from exporter.values import (
    ALWAYS_PRESENT_RUN_STATUSES,
    COUNT_KEYS,
    EVERYTHING,
    NOTHING,
    OVERLAP_MS,
    RECENT_RUNS,
    RETENTION_MS,
    CompletedRun,
    Exemplar,
    FlowState,
    Histogram,
    LastRun,
    RecentRun,
    Window,
)


def new_flow_state(
    *, sandbox: str, flow_id: str, now_ms: int, initial_lookback: float, duration_buckets: tuple[float, ...]
) -> FlowState:
    """The state of a flow seen for the first time: counting starts ``poll.initial_lookback`` before now."""
    start = now_ms - int(initial_lookback * 1000)
    return FlowState(
        sandbox=sandbox,
        flow_id=flow_id,
        counting_start_ms=start,
        count_floor_ms=start,
        durations=Histogram.empty(duration_buckets),
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

    def __init__(self, state: FlowState, metrics: MetricsConfig) -> None:
        self.state = state
        self.metrics = metrics
        self.activities_dropped = 0
        self.in_progress = dict(state.in_progress)
        self.counted = dict(state.counted)
        self.runs_total = dict(state.runs_total)
        self.totals = dict(state.totals)
        self.codes = dict(state.error_codes)
        self.record_codes = {outcome: dict(codes) for outcome, codes in state.record_codes.items()}
        self.audiences = {audience: dict(counts) for audience, counts in state.audiences.items()}
        self.durations = state.durations
        self.last_success, self.last_failure = state.last_success_ms, state.last_failure_ms
        self.data_as_of = state.data_as_of_ms
        self.last_completed = state.last_completed
        self.newest_created, self.newest_started = state.newest_created_ms, state.newest_started_ms
        self.exemplars = dict(state.exemplars)
        self.recent = {r.id: r for r in state.recent_runs}
        self.newly_counted: list[Run] = []
        self.unknown_statuses: list[str] = []

    def see(self, run: Run, now_ms: int) -> None:
        """Fold one run: watermarks, in-progress tracking, newest results, and counting once."""
        self.newest_created = _max(self.newest_created, run.created_at_ms)
        self.newest_started = _max(self.newest_started, run.started_at_ms)
        if run.status == "other" and run.raw_status:
            self.unknown_statuses.append(run.raw_status)
        self.recent[run.id] = recent_run(run)
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
            self.data_as_of = _max(self.data_as_of, run.window_end_ms or run.completed_at_ms)
        elif run.final_status == "failed":
            self.last_failure = _max(self.last_failure, run.completed_at_ms)
        if end is not None and (self.last_completed is None or end >= self.last_completed.ended_ms):
            # Activities are capped like error codes: one run with thousands cannot flood the exposition.
            kept = run.activities[: self.metrics.max_activities_per_flow]
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
        ended = _end_of(run) or now_ms
        self.runs_total[run.final_status] = self.runs_total.get(run.final_status, 0) + 1
        self._exemplar(f"runs:{run.final_status}", run, 1, ended)
        for key in COUNT_KEYS:
            value = key.of(run.counts)
            if value is not None:
                self.totals[key.value] = self.totals.get(key.value, 0) + value
                self._exemplar(f"count:{key.value}", run, value, ended)
        if run.duration_seconds is not None:
            self.durations = self.durations.observe(run.duration_seconds)
            self._exemplar(bucket_key(self.durations.bounds, run.duration_seconds), run, run.duration_seconds, ended)
        for code in sorted(run.error_codes):
            label = _capped(code, self.codes, self.metrics.max_error_codes_per_flow)
            self.codes[label] = self.codes.get(label, 0) + 1
            self._exemplar(f"errors:{label}", run, 1, ended)
        for outcome, code, count in run.record_codes:
            codes = self.record_codes.setdefault(outcome, {})
            label = _capped(code, codes, self.metrics.max_error_codes_per_flow)
            codes[label] = codes.get(label, 0) + count
        if self.metrics.audiences:  # audiences beyond metrics.max_audiences_per_flow are summed as "other"
            for audience, outcome, count in run.audience_counts:
                counts = self.audiences.setdefault(
                    _capped(audience, self.audiences, self.metrics.max_audiences_per_flow), {}
                )
                counts[outcome] = counts.get(outcome, 0) + count

    def _exemplar(self, key: str, run: Run, value: float, ended_ms: int) -> None:
        """The newest run (by its end) that changed the series ``key`` becomes its exemplar."""
        current = self.exemplars.get(key)
        if current is None or ended_ms >= current.ended_ms:
            self.exemplars[key] = Exemplar(run_id=run.id, value=float(value), ended_ms=ended_ms)

    def newest_runs(self) -> tuple[RecentRun, ...]:
        """The flow's ``RECENT_RUNS`` newest runs seen, newest first."""
        ordered = sorted(self.recent.values(), key=_recent_order, reverse=True)
        return tuple(ordered[:RECENT_RUNS])

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


def bucket_key(bounds: tuple[float, ...], seconds: float) -> str:
    """The exemplar key of the duration bucket (non-cumulative) a duration falls in: ``le:<bound>``."""
    bound = next((b for b in bounds if seconds <= b), float("inf"))
    return f"le:{bound}"


def recent_run(run: Run) -> RecentRun:
    """A run as the flow page keeps it."""
    last = _as_last_run(run)
    return RecentRun(
        id=run.id,
        status=last.status,
        started_ms=run.started_at_ms,
        ended_ms=last.ended_ms,
        duration_seconds=run.duration_seconds if run.is_terminal else None,
        counts=run.counts,
        errors=run.errors,
    )


def _recent_order(run: RecentRun) -> tuple[int, str]:
    return (run.started_ms or run.ended_ms or 0, run.id)


def _capped(code: str, seen: Mapping[str, object], limit: int) -> str:
    """A code's label: itself while the flow has fewer than ``limit`` distinct codes (or already has it),
    else ``other`` (labels from data stay bounded)."""
    if code in seen or len([c for c in seen if c != "other"]) < limit:
        return code
    return "other"


def apply_runs(
    state: FlowState,
    flow: Flow,
    runs: Iterable[Run],
    *,
    now_ms: int,
    metrics: MetricsConfig,
    window: Window = EVERYTHING,
) -> Update:
    """Fold one runs answer into a flow's state, counting each newly completed run exactly once.

    ``window`` says which runs the answer is known to hold: tracked in-progress runs it should hold but does not
    have vanished, and the count floor rises to what it proves. Runs of another flow (a ``flowId`` filter the
    server ignored) are never counted here. Per-audience counts are kept only when ``metrics.audiences`` is on.
    """
    unique: dict[str, Run] = {}
    for run in runs:
        if run.flow_id is None or run.flow_id == flow.id:
            unique.setdefault(run.id, run)
    ordered = sorted(unique.values(), key=_order_key)
    fold = _Fold(state, metrics)
    for run in ordered:
        fold.see(run, now_ms)
    if window.field == "created" and (state.undated_runs or any(r.created_at_ms is None for r in ordered)):
        window = NOTHING  # runs without createdAt are never in a createdAt window: its gaps prove nothing
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
        record_codes=fold.record_codes,
        audiences=fold.audiences,
        undated_runs=state.undated_runs or any(run.created_at_ms is None for run in ordered),
        data_as_of_ms=_data_as_of(fold.data_as_of, flow, unique, state),
        schedule_since_ms=schedule_since(state, flow, now_ms),
        recent_runs=fold.newest_runs(),
        exemplars=fold.exemplars,
    )
    return Update(
        state=new_state,
        counted=tuple(fold.newly_counted),
        unknown_statuses=tuple(dict.fromkeys(fold.unknown_statuses)),
        activities_dropped=fold.activities_dropped,
    )


def _data_as_of(folded: int | None, flow: Flow, answer: Mapping[str, Run], state: FlowState) -> int | None:
    """The newest data window a success ingested; a newest success that lastRunDetails names but that neither this
    answer nor an earlier one held (its data window unknown) shows data at least as new as its end."""
    details = flow.last_run
    known = state.last_completed.id if state.last_completed is not None else None
    if details is None or details.id in answer or details.id == known:
        return folded
    return _max(folded, _last_details_end(flow, ("success", "partial_success")))


def _last_details_end(flow: Flow, statuses: tuple[str, ...]) -> int | None:
    last = flow.last_run
    if last is None or normalize_status(last.state) not in statuses:
        return None
    return last.completed_at_ms


def _newest_run(previous: LastRun | None, flow: Flow, ordered: list[Run]) -> LastRun | None:
    """The newest run: the one ``lastRunDetails`` names, from the runs answer when it is there; or a run the answer
    holds that started after it (an event's refresh reads runs newer than the flow as last listed)."""
    details = flow.last_run
    by_id = {run.id: run for run in ordered}
    if details is not None and details.id in by_id:
        named = _as_last_run(by_id[details.id])
    elif details is not None:
        named = _details_as_last_run(details)
    else:
        return _as_last_run(ordered[-1]) if ordered else previous
    if named.started_ms is None:
        return named
    newer = [r for r in ordered if r.started_at_ms is not None and r.started_at_ms > named.started_ms]
    return _as_last_run(max(newer, key=_order_key)) if newer else named


def _as_last_run(run: Run) -> LastRun:
    status = run.status or ("other" if run.is_terminal else "in_progress")
    end = run.completed_at_ms if run.is_terminal else None
    return LastRun(id=run.id, status=status, started_ms=run.started_at_ms, ended_ms=end)


def _details_as_last_run(details: LastRunDetails) -> LastRun:
    status = normalize_status(details.state) or ("other" if details.completed_at_ms is not None else "in_progress")
    running = status in ("in_progress", "scheduled")
    return LastRun(
        id=details.id,
        status=status,
        started_ms=details.started_at_ms,
        ended_ms=None if running else details.completed_at_ms,
    )


def zero_counts(state: FlowState) -> FlowState:
    """The state with nothing counted: where a backfill's replay starts (the counting start)."""
    return dataclasses.replace(
        state,
        runs_total=dict.fromkeys(ALWAYS_PRESENT_RUN_STATUSES, 0),
        totals={},
        durations=Histogram.empty(state.durations.bounds),
        error_codes={},
        record_codes={},
        audiences={},
        exemplars={},
    )


def replay(state: FlowState, runs: Iterable[Run], metrics: MetricsConfig) -> Iterator[tuple[int, FlowState]]:
    """Count ``runs`` one at a time in the order they ended, from ``state`` with nothing counted: (the run's end,
    the flow's counts after it), the history a backfill writes. The last state is the one to continue from."""
    fold = _Fold(zero_counts(state), metrics)
    for run in sorted(runs, key=lambda r: (_end_of(r) or state.counting_start_ms, r.id)):
        ended = _end_of(run) or state.counting_start_ms
        fold._count(run, ended)  # noqa: SLF001 -- the counting step itself, on the fold this module owns
        yield (
            ended,
            dataclasses.replace(
                state,
                runs_total=dict(fold.runs_total),
                totals=dict(fold.totals),
                durations=fold.durations,
                error_codes=dict(fold.codes),
                record_codes={outcome: dict(codes) for outcome, codes in fold.record_codes.items()},
                audiences={audience: dict(counts) for audience, counts in fold.audiences.items()},
                exemplars=dict(fold.exemplars),
            ),
        )


def still_countable(state: FlowState, run_id: str, ended_ms: int | None) -> bool:
    """Whether a run the flow's state has not seen counted may still be counted: it is not counted, not the newest
    completed run, and did not end before the count floor (such a run was counted before, or ended before
    counting started). ``ended_ms`` is the run's end when known."""
    newest = state.last_completed.id if state.last_completed is not None else None
    if run_id in state.counted or run_id == newest:
        return False
    return ended_ms is None or ended_ms >= state.count_floor_ms


def refresh_flow(state: FlowState, flow: Flow, now_ms: int) -> FlowState:
    """A poll that read the flow but needed no runs: keep the counts, take the new description."""
    return dataclasses.replace(state, flow=flow, up=True, schedule_since_ms=schedule_since(state, flow, now_ms))


def schedule_since(state: FlowState, flow: Flow, now_ms: int) -> int | None:
    """When the flow's current schedule took effect: Adobe's ``scheduleParams.startTime``, and when the exporter
    sees the expected interval change, that moment (so a flow moved from daily to hourly is not late at once)."""
    known = state.schedule_since_ms
    if state.flow is not None and state.flow.expected_interval_seconds != flow.expected_interval_seconds:
        known = now_ms
    starts = [t for t in (known, flow.schedule_start_ms) if t is not None]
    return max(starts) if starts else None


def mark_down(state: FlowState) -> FlowState:
    """The flow could not be read: its series keep their last values, ``flow_up`` says 0."""
    return state if not state.up else dataclasses.replace(state, up=False)
