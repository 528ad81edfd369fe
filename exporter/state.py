"""Per-flow state and the counting rule. Pure: values in, new values out; persistence lives in store.py.

The counting rule (metrics.md): a run is counted when it is first seen in a terminal state and ended at
or after the flow's counting start (first time the flow was seen, minus ``poll.initial_lookback``). Each
counted run id is remembered until the runs query can no longer return it (its ``createdAt`` is below the
query's lower bound), which keeps the id set bounded while making a second count impossible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.model import Activity, Counts, Flow, LastRunDetails, Run, normalize_status

OVERLAP_MS = 10 * 60 * 1000
"""How far below the newest seen ``createdAt`` each runs query reaches, for runs that show up late."""

COUNT_KEYS = tuple(
    [f"records.{k}" for k in ("input", "output", "failed", "skipped", "warning")]
    + [f"bytes.{k}" for k in ("input", "output")]
    + [f"files.{k}" for k in ("input", "output", "failed")]
)
ALWAYS_PRESENT_RUN_STATUSES = ("success", "partial_success", "failed")


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

    def runs_lower_bound_ms(self) -> int | None:
        """The ``createdAt`` lower bound of the next runs query; None means first sight (page from newest)."""
        if self.newest_created_ms is None:
            return None
        bound = self.newest_created_ms - OVERLAP_MS
        for created, _started in self.in_progress.values():
            if created is not None:
                bound = min(bound, created)
        return max(bound, 0)

    @property
    def first_sight_floor_ms(self) -> int:
        """On first sight, paging stops once runs are older than this."""
        return self.counting_start_ms - OVERLAP_MS


def new_flow_state(*, sandbox: str, flow_id: str, now_ms: int, lookback_s: float,
                   buckets: tuple[float, ...]) -> FlowState:
    """The state of a flow seen for the first time: counting starts ``lookback`` before now."""
    return FlowState(
        sandbox=sandbox,
        flow_id=flow_id,
        counting_start_ms=now_ms - int(lookback_s * 1000),
        durations=Histogram.empty(buckets),
    )


@dataclass(frozen=True, kw_only=True)
class Update:
    """What ``apply_runs`` did: the new state, and what the caller should log once."""

    state: FlowState
    counted: tuple[Run, ...] = ()
    unknown_statuses: tuple[str, ...] = ()


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _end_of(run: Run) -> int | None:
    return run.completed_at_ms if run.completed_at_ms is not None else _max(run.started_at_ms, run.created_at_ms)


def _order_key(run: Run) -> tuple[int, int]:
    return (run.created_at_ms or run.started_at_ms or -1, run.started_at_ms or -1)


def apply_runs(state: FlowState, flow: Flow, runs: Iterable[Run], *, now_ms: int, max_error_codes: int,
               complete: bool = True) -> Update:
    """Fold one runs query answer into a flow's state, counting each newly completed run once.

    ``complete`` says the answer covers the whole query window, so tracked in-progress runs missing from it
    have vanished and are dropped.
    """
    unique: dict[str, Run] = {}
    for run in runs:
        if run.flow_id is not None and run.flow_id != flow.id:
            continue  # a filter the server ignored: never count another flow's run here
        unique.setdefault(run.id, run)
    ordered = sorted(unique.values(), key=_order_key)

    in_progress = dict(state.in_progress)
    counted = dict(state.counted)
    runs_total = dict(state.runs_total)
    totals = dict(state.totals)
    codes = dict(state.error_codes)
    durations = state.durations
    last_success, last_failure = state.last_success_ms, state.last_failure_ms
    last_completed = state.last_completed
    newest_created = state.newest_created_ms
    newly_counted: list[Run] = []
    unknown_statuses: list[str] = []

    for run in ordered:
        newest_created = _max(newest_created, run.created_at_ms)
        if run.status == "other" and run.raw_status:
            unknown_statuses.append(run.raw_status)
        if not run.is_terminal:
            in_progress[run.id] = (run.created_at_ms, run.started_at_ms)
            continue
        in_progress.pop(run.id, None)
        end = _end_of(run)
        if run.final_status in ("success", "partial_success"):
            last_success = _max(last_success, run.completed_at_ms)
        elif run.final_status == "failed":
            last_failure = _max(last_failure, run.completed_at_ms)
        if end is not None and (last_completed is None or end >= last_completed.ended_ms):
            last_completed = CompletedRun(id=run.id, ended_ms=end, counts=run.counts, activities=run.activities)
        if run.id in counted or (end is not None and end < state.counting_start_ms):
            continue
        counted[run.id] = run.created_at_ms if run.created_at_ms is not None else (end or now_ms)
        newly_counted.append(run)
        runs_total[run.final_status] = runs_total.get(run.final_status, 0) + 1
        for group in ("records", "bytes", "files"):
            for name, value in getattr(run.counts, group).items():
                if value is not None:
                    totals[f"{group}.{name}"] = totals.get(f"{group}.{name}", 0) + value
        if run.duration_seconds is not None:
            durations = durations.observe(run.duration_seconds)
        for code in sorted(run.error_codes):
            known = code in codes or len([c for c in codes if c != "other"]) < max_error_codes
            label = code if known else "other"
            codes[label] = codes.get(label, 0) + 1

    if complete:
        for run_id in [r for r in in_progress if r not in unique]:
            del in_progress[run_id]
    if newest_created is None:
        newest_created = state.counting_start_ms  # no runs yet: later queries start at the counting start

    new_state = dataclasses.replace(
        state,
        flow=flow,
        up=True,
        seen_key=flow.change_key,
        newest_created_ms=newest_created,
        in_progress=in_progress,
        last_run=_newest_run(state.last_run, flow, ordered),
        last_completed=last_completed,
        last_success_ms=_max(last_success, _last_details_end(flow, ("success", "partial_success"))),
        last_failure_ms=_max(last_failure, _last_details_end(flow, ("failed",))),
        runs_total=runs_total,
        totals=totals,
        durations=durations,
        error_codes=codes,
    )
    bound = new_state.runs_lower_bound_ms()
    if bound is not None:
        counted = {rid: created for rid, created in counted.items() if created >= bound}
    return Update(state=dataclasses.replace(new_state, counted=counted), counted=tuple(newly_counted),
                  unknown_statuses=tuple(dict.fromkeys(unknown_statuses)))


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


def _counts_from(data: Mapping[str, Any]) -> Counts:
    return Counts(records=dict(data["records"]), bytes=dict(data["bytes"]), files=dict(data["files"]))


def _flow_from(data: Mapping[str, Any] | None) -> Flow | None:
    if data is None:
        return None
    last = data.get("last_run")
    return Flow(**{**data, "last_run": LastRunDetails(**last) if last else None})


def state_from_json(data: Mapping[str, Any], buckets: tuple[float, ...]) -> tuple[FlowState, bool]:
    """Rebuild a flow's state; the bool says the histogram was reset because the buckets changed.

    Raises KeyError, TypeError or ValueError on a malformed document; the store turns that into StateError.
    """
    completed = data.get("last_completed")
    last_run = data.get("last_run")
    hist = data["durations"]
    histogram = Histogram(bounds=tuple(hist["bounds"]), counts=tuple(hist["counts"]), sum=float(hist["sum"]))
    reset = histogram.bounds != tuple(buckets)
    if reset:
        histogram = Histogram.empty(tuple(buckets))
    seen_key = data.get("seen_key")
    state = FlowState(
        sandbox=str(data["sandbox"]),
        flow_id=str(data["flow_id"]),
        counting_start_ms=int(data["counting_start_ms"]),
        flow=_flow_from(data.get("flow")),
        seen_key=(seen_key[0], seen_key[1]) if seen_key else None,
        newest_created_ms=data.get("newest_created_ms"),
        in_progress={k: (v[0], v[1]) for k, v in data["in_progress"].items()},
        counted={k: int(v) for k, v in data["counted"].items()},
        last_run=LastRun(**last_run) if last_run else None,
        last_completed=CompletedRun(
            id=completed["id"],
            ended_ms=int(completed["ended_ms"]),
            counts=_counts_from(completed["counts"]),
            activities=tuple(
                Activity(name=a["name"], status=a["status"], duration_seconds=a["duration_seconds"],
                         counts=_counts_from(a["counts"]))
                for a in completed["activities"]
            ),
        ) if completed else None,
        last_success_ms=data.get("last_success_ms"),
        last_failure_ms=data.get("last_failure_ms"),
        runs_total={str(k): int(v) for k, v in data["runs_total"].items()},
        totals={str(k): int(v) for k, v in data["totals"].items()},
        durations=histogram,
        error_codes={str(k): int(v) for k, v in data["error_codes"].items()},
    )
    return state, reset
