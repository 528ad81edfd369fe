"""Snapshot -> metric families. Pure: knows nothing of aiohttp, the poller or the store.

A custom collector builds fresh families from an immutable snapshot at each collect, so a flow that is
no longer tracked simply vanishes from ``/metrics``. Output for one flow looks like::

    aep_flow_info{sandbox="prod",flow_id="c9ce...",flow_name="Monitoring Dataflow",kind="source",...} 1.0
    aep_flow_last_run_status{sandbox="prod",flow_id="c9ce...",status="success"} 1.0
    aep_flow_last_run_status{sandbox="prod",flow_id="c9ce...",status="failed"} 0.0
    aep_flow_last_run_input_records{sandbox="prod",flow_id="c9ce..."} 100.0
    aep_flow_runs_total{sandbox="prod",flow_id="c9ce...",status="success"} 1.0
    aep_flow_run_duration_seconds_bucket{sandbox="prod",flow_id="c9ce...",le="60.0"} 1.0
    aep_flow_run_errors_total{sandbox="prod",flow_id="c9ce...",code="CONNECTOR-2001-500"} 1.0
    aep_exporter_flow_up{sandbox="prod",flow_id="c9ce..."} 1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.model import STATUSES, TERMINAL_STATUSES, Counts
from exporter.values import COUNT_KEYS, FlowState, Snapshot

# name, type, help: every family the collector can produce, in exposition order
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("aep_flow_info", "gauge", "Description of a dataflow (always 1); join on sandbox, flow_id for flow_name."),
    ("aep_flow_enabled", "gauge", "1 when the flow's state is enabled, else 0."),
    ("aep_flow_schedule_interval_seconds", "gauge", "Expected time between runs, from scheduleParams."),
    ("aep_flow_last_run_status", "gauge", "Status of the newest run (one-hot)."),
    ("aep_flow_last_run_start_timestamp_seconds", "gauge", "Start of the newest run."),
    ("aep_flow_last_run_end_timestamp_seconds", "gauge", "End of the newest run; absent while it runs."),
    ("aep_flow_last_run_duration_seconds", "gauge", "Duration of the newest run; absent while it runs."),
    ("aep_flow_last_success_timestamp_seconds", "gauge", "End of the newest success or partial_success run."),
    ("aep_flow_last_failure_timestamp_seconds", "gauge", "End of the newest failed run."),
    ("aep_flow_runs_in_progress", "gauge", "Runs seen that have not completed yet."),
    ("aep_flow_oldest_in_progress_run_start_timestamp_seconds", "gauge", "Start of the oldest run in progress."),
    *[(f"aep_flow_last_run_{k.split('.')[1]}_{k.split('.')[0]}", "gauge",
       f"{k.split('.')[1].capitalize()} {k.split('.')[0]} of the newest completed run.") for k in COUNT_KEYS],
    ("aep_flow_last_run_activity_duration_seconds", "gauge", "Duration of each activity of the newest completed run."),
    ("aep_flow_last_run_activity_status", "gauge", "Status of each activity of the newest completed run (one-hot)."),
    *[(f"aep_flow_last_run_activity_{k.split('.')[1]}_{k.split('.')[0]}", "gauge",
       f"{k.split('.')[1].capitalize()} {k.split('.')[0]} of each activity of the newest completed run.")
      for k in ("records.input", "records.output", "records.failed", "bytes.input", "bytes.output")],
    ("aep_flow_runs", "counter", "Completed runs by final status."),
    *[(f"aep_flow_{k.split('.')[1]}_{k.split('.')[0]}", "counter",
       f"{k.split('.')[1].capitalize()} {k.split('.')[0]}, summed over completed runs.") for k in COUNT_KEYS],
    ("aep_flow_run_duration_seconds", "histogram", "Durations of completed runs."),
    ("aep_flow_run_errors", "counter", "Completed runs that reported each error code (once per run and code)."),
    ("aep_exporter_flow_up", "gauge", "1 when the flow was read on the last poll, 0 when it could not be."),
)


@dataclass(frozen=True, kw_only=True)
class CollectorOptions:
    """Cardinality controls (``metrics:`` in the config)."""

    activities: bool = True
    sparse_status: bool = False


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it (``60.0``, ``+Inf``)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


class _Families:
    def __init__(self) -> None:
        self.by_name = {name: Metric(name, doc, typ) for name, typ, doc in FAMILIES}

    def add(self, family: str, labels: Mapping[str, str], value: float | int | None, sample: str = "") -> None:
        if value is None:
            return
        metric = self.by_name[family]
        metric.add_sample(sample or metric.name, dict(labels), float(value))

    def one_hot(self, family: str, labels: Mapping[str, str], status: str | None, sparse: bool,
                statuses: tuple[str, ...] = STATUSES) -> None:
        if status is None:
            return
        for candidate in statuses:
            if sparse and candidate != status:
                continue
            self.add(family, {**labels, "status": candidate}, 1 if candidate == status else 0)

    def counts(self, prefix: str, labels: Mapping[str, str], counts: Counts,
               keys: tuple[str, ...] = COUNT_KEYS) -> None:
        for key in keys:
            group, name = key.split(".")
            self.add(f"{prefix}{name}_{group}", labels, getattr(counts, group).get(name))


def build_families(snapshot: Snapshot, options: CollectorOptions) -> list[Metric]:
    """Every upstream metric family of the snapshot, in a fixed order; empty families are left out."""
    fam = _Families()
    for state in snapshot.flows:
        _flow(fam, state, options)
    return [m for m in fam.by_name.values() if m.samples]


def flow_families(state: FlowState, options: CollectorOptions) -> list[Metric]:
    """The families of one flow alone (the unit the exposition cache renders)."""
    fam = _Families()
    _flow(fam, state, options)
    return [m for m in fam.by_name.values() if m.samples]


def _flow(fam: _Families, state: FlowState, options: CollectorOptions) -> None:
    fam.add("aep_exporter_flow_up", {"sandbox": state.sandbox, "flow_id": state.flow_id}, 1 if state.up else 0)
    flow = state.flow
    if flow is None:  # never read (a configured id the API does not know): only flow_up says so
        return
    base = {"sandbox": state.sandbox, "flow_id": state.flow_id, **state.labels}
    fam.add("aep_flow_info", {**base, "flow_name": flow.name, "flow_spec_id": flow.flow_spec_id,
                              "source_connection_spec_id": flow.source_connection_spec_id,
                              "target_connection_spec_id": flow.target_connection_spec_id,
                              "kind": flow.kind, "state": flow.state}, 1)
    fam.add("aep_flow_enabled", base, 1 if flow.state == "enabled" else 0)
    fam.add("aep_flow_schedule_interval_seconds", base, flow.schedule_interval_seconds)

    last = state.last_run
    if last is not None:
        fam.one_hot("aep_flow_last_run_status", base, last.status, options.sparse_status)
        fam.add("aep_flow_last_run_start_timestamp_seconds", base, _seconds(last.started_ms))
        if last.ended_ms is not None:
            fam.add("aep_flow_last_run_end_timestamp_seconds", base, _seconds(last.ended_ms))
            if last.started_ms is not None and last.ended_ms >= last.started_ms:
                fam.add("aep_flow_last_run_duration_seconds", base, (last.ended_ms - last.started_ms) / 1000.0)
    fam.add("aep_flow_last_success_timestamp_seconds", base, _seconds(state.last_success_ms))
    fam.add("aep_flow_last_failure_timestamp_seconds", base, _seconds(state.last_failure_ms))
    fam.add("aep_flow_runs_in_progress", base, len(state.in_progress))
    starts = [started for _created, started in state.in_progress.values() if started is not None]
    fam.add("aep_flow_oldest_in_progress_run_start_timestamp_seconds", base, _seconds(min(starts, default=None)))

    completed = state.last_completed
    if completed is not None:
        fam.counts("aep_flow_last_run_", base, completed.counts)
        if options.activities:
            for act in completed.activities:
                labels = {**base, "activity": act.name}
                fam.add("aep_flow_last_run_activity_duration_seconds", labels, act.duration_seconds)
                fam.one_hot("aep_flow_last_run_activity_status", labels, act.status, options.sparse_status)
                fam.counts("aep_flow_last_run_activity_", labels, act.counts,
                           ("records.input", "records.output", "records.failed", "bytes.input", "bytes.output"))

    for status in TERMINAL_STATUSES:
        if status in state.runs_total:
            fam.add("aep_flow_runs", {**base, "status": status}, state.runs_total[status], "aep_flow_runs_total")
    for key in COUNT_KEYS:
        group, name = key.split(".")
        if key in state.totals:
            fam.add(f"aep_flow_{name}_{group}", base, state.totals[key], f"aep_flow_{name}_{group}_total")
    hist = state.durations
    cumulative = 0
    for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
        cumulative += count
        fam.add("aep_flow_run_duration_seconds", {**base, "le": _le(bound)}, cumulative,
                "aep_flow_run_duration_seconds_bucket")
    fam.add("aep_flow_run_duration_seconds", base, hist.count, "aep_flow_run_duration_seconds_count")
    fam.add("aep_flow_run_duration_seconds", base, hist.sum, "aep_flow_run_duration_seconds_sum")
    for code in sorted(state.error_codes):
        fam.add("aep_flow_run_errors", {**base, "code": code}, state.error_codes[code], "aep_flow_run_errors_total")


class FlowCollector(Collector):
    """A prometheus-client collector over whatever snapshot ``source`` returns at collect time."""

    def __init__(self, source: Callable[[], Snapshot], options: CollectorOptions | None = None) -> None:
        self._source = source
        self._options = options or CollectorOptions()

    def collect(self) -> Iterator[Metric]:
        yield from build_families(self._source(), self._options)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families vary with the flows; describing them would force a collect at register time
