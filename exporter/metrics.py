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
from typing import NamedTuple

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from exporter.config import MetricsConfig
from exporter.exemplars import exemplar_of
from exporter.model import Counts
from exporter.statuses import STATUSES, TERMINAL_STATUSES
from exporter.values import COUNT_KEYS, CompletedRun, CountKey, FlowState, Snapshot


class Family(NamedTuple):
    """One metric family of the contract: the only place its name, type, help, labels and unit are written."""

    name: str  # a counter's without ``_total``, as prometheus-client takes it
    type: str
    help: str
    labels: tuple[str, ...] = ()  # beyond sandbox, flow_id and the static labels (for flow families)
    unit: str = ""
    lean: bool = True  # served under metrics.profile lean (the default); False: only under full

    @classmethod
    def of(cls, name: str, typ: str, help_text: str, labels: tuple[str, ...] = (), *, lean: bool = True) -> Family:
        """A family whose unit is its name's base-unit suffix, as the naming conventions have it."""
        unit = next(
            (
                u
                for u in ("seconds", "bytes", "records", "files")
                if name.removesuffix("_total").endswith(u) or f"_{u}_" in name
            ),
            "",
        )
        return cls(name, typ, help_text, labels, unit, lean)


ACTIVITY_KEYS = (
    CountKey.RECORDS_INPUT,
    CountKey.RECORDS_OUTPUT,
    CountKey.RECORDS_FAILED,
    CountKey.BYTES_INPUT,
    CountKey.BYTES_OUTPUT,
)
# The lean profile keeps what the shipped alerts and dashboards read, and every counter: of the newest completed
# run's counts its records in, out and failed; of its activities their duration and output records. What it leaves
# out is in the counters (the newest run's bytes and files are their increase, its newest failure is when
# runs_total{status="failed"} rose, its duration is in the histogram) or in last_success_timestamp_seconds and
# oldest_in_progress_run_start_timestamp_seconds (when a flow last succeeded, and how long a run has been going).
LEAN_LAST_RUN_KEYS = frozenset({CountKey.RECORDS_INPUT, CountKey.RECORDS_OUTPUT, CountKey.RECORDS_FAILED})
LEAN_ACTIVITY_KEYS = frozenset({CountKey.RECORDS_OUTPUT})

FAMILIES: tuple[Family, ...] = (
    Family.of(
        "aep_flow_info",
        "gauge",
        "Description of a dataflow (always 1); join on sandbox, flow_id for flow_name.",
        ("flow_name", "flow_spec_id", "source_connection_spec_id", "target_connection_spec_id", "kind", "state"),
    ),
    Family.of("aep_flow_enabled", "gauge", "1 when the flow's state is enabled, else 0."),
    Family.of(
        "aep_flow_schedule_interval_seconds",
        "gauge",
        "Expected time between runs: from scheduleParams, or for a segment export the shortest fixed "
        "interval among its audiences' schedules still in effect.",
    ),
    Family.of(
        "aep_flow_schedule_end_timestamp_seconds",
        "gauge",
        "When a segment export's last audience schedule ends (when every scheduled audience has an end).",
    ),
    Family.of(
        "aep_flow_schedule_since_timestamp_seconds",
        "gauge",
        "When the flow's current schedule took effect: scheduleParams.startTime, or when the exporter saw its "
        "interval change.",
    ),
    Family.of(
        "aep_flow_next_run_expected_timestamp_seconds",
        "gauge",
        "When the next run should start: the newest run's start (or the schedule's, if later) plus the interval; "
        "an hour for a streaming flow. Absent when no run is expected.",
    ),
    Family.of(
        "aep_flow_data_as_of_timestamp_seconds",
        "gauge",
        "End of the newest data a successful run ingested: its copy activity's windowEnd where Adobe reports one, "
        "else the run's end (a destination's newest successful export).",
    ),
    Family.of("aep_flow_last_run_status", "gauge", "Status of the newest run (one-hot).", ("status",)),
    Family.of("aep_flow_last_run_start_timestamp_seconds", "gauge", "Start of the newest run.", lean=False),
    Family.of(
        "aep_flow_last_run_end_timestamp_seconds", "gauge", "End of the newest run; absent while it runs.", lean=False
    ),
    Family.of(
        "aep_flow_last_run_duration_seconds", "gauge", "Duration of the newest run; absent while it runs.", lean=False
    ),
    Family.of("aep_flow_last_success_timestamp_seconds", "gauge", "End of the newest success or partial_success run."),
    Family.of("aep_flow_last_failure_timestamp_seconds", "gauge", "End of the newest failed run.", lean=False),
    Family.of("aep_flow_runs_in_progress", "gauge", "Runs seen that have not completed yet."),
    Family.of(
        "aep_flow_oldest_in_progress_run_start_timestamp_seconds", "gauge", "Start of the oldest run in progress."
    ),
    *[
        Family.of(
            f"aep_flow_last_run_{k.field}_{k.group}",
            "gauge",
            f"{k.field.capitalize()} {k.group} of the newest completed run.",
            lean=k in LEAN_LAST_RUN_KEYS,
        )
        for k in COUNT_KEYS
    ],
    Family.of(
        "aep_flow_last_run_activity_duration_seconds",
        "gauge",
        "Duration of each activity of the newest completed run.",
        ("activity",),
    ),
    Family.of(
        "aep_flow_last_run_activity_status",
        "gauge",
        "Status of each activity of the newest completed run (one-hot).",
        ("activity", "status"),
        lean=False,
    ),
    *[
        Family.of(
            f"aep_flow_last_run_activity_{k.field}_{k.group}",
            "gauge",
            f"{k.field.capitalize()} {k.group} of each activity of the newest completed run.",
            ("activity",),
            lean=k in LEAN_ACTIVITY_KEYS,
        )
        for k in ACTIVITY_KEYS
    ],
    Family.of("aep_flow_runs", "counter", "Completed runs by final status.", ("status",)),
    *[
        Family.of(
            f"aep_flow_{k.field}_{k.group}", "counter", f"{k.field.capitalize()} {k.group}, summed over completed runs."
        )
        for k in COUNT_KEYS
    ],
    Family.of("aep_flow_run_duration_seconds", "histogram", "Durations of completed runs."),
    Family.of(
        "aep_flow_run_errors",
        "counter",
        "Completed runs that reported each error code (once per run and code).",
        ("code",),
    ),
    Family.of(
        "aep_flow_record_codes",
        "counter",
        "Records skipped, failed or warned about, by outcome and code (destination runs' recordSummary "
        "skippedInfo, failedInfo, warningInfo), summed over counted runs.",
        ("outcome", "code"),
    ),
    Family.of(
        "aep_flow_audience_records",
        "counter",
        "Records of each audience (segment) by outcome, from destination runs' entitySummaries, summed over "
        "counted runs; opt-in (metrics.audiences).",
        ("audience_id", "outcome"),
    ),
    Family.of("aep_exporter_flow_up", "gauge", "1 when the flow was read on the last poll, 0 when it could not be."),
)
"""Every family the flow collector can produce, in exposition order."""

# The exporter's own families (instrumented directly in selfmetrics.py, which takes their definitions from here).
BUILD_INFO = Family.of(
    "aep_exporter_build_info",
    "gauge",
    "Version of the exporter and of the Python running it.",
    ("version", "python_version"),
)
API_REQUESTS = Family.of(
    "aep_exporter_api_requests",
    "counter",
    "Requests to Adobe APIs, by HTTP status (or error for transport failures).",
    ("sandbox", "endpoint", "code"),
)
API_LATENCY = Family.of(
    "aep_exporter_api_request_duration_seconds", "histogram", "Duration of requests to Adobe APIs.", ("endpoint",)
)
API_RETRIES = Family.of("aep_exporter_api_retries", "counter", "Requests retried, by reason.", ("endpoint", "reason"))
POLLS = Family.of("aep_exporter_polls", "counter", "Poll cycles started.", ("sandbox",))
POLL_FAILURES = Family.of("aep_exporter_poll_failures", "counter", "Poll cycles that failed.", ("sandbox",))
POLL_INTERVAL = Family.of(
    "aep_exporter_poll_interval_seconds",
    "gauge",
    "Configured time between poll cycles (for 'no successful poll for N intervals').",
    ("sandbox",),
)
POLL_DURATION = Family.of(
    "aep_exporter_poll_duration_seconds", "gauge", "Duration of the last poll cycle.", ("sandbox",)
)
LAST_POLL_SUCCESS = Family.of(
    "aep_exporter_last_poll_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful poll cycle.",
    ("sandbox",),
)
FLOWS = Family.of("aep_exporter_flows", "gauge", "Flows tracked.", ("sandbox",))
FLOWS_DROPPED = Family.of(
    "aep_exporter_flows_dropped", "gauge", "Flows not tracked because of metrics.max_flows_per_sandbox.", ("sandbox",)
)
TOKEN_EXPIRY = Family.of(
    "aep_exporter_token_expiry_timestamp_seconds", "gauge", "Unix time at which the current IMS access token expires."
)
TOKEN_REQUESTS = Family.of("aep_exporter_token_requests", "counter", "IMS token requests.")
TOKEN_FAILURES = Family.of("aep_exporter_token_request_failures", "counter", "IMS token requests that failed.")
SHARD_INDEX = Family.of("aep_exporter_shard_index", "gauge", "This process's shard.")
# Named like kube-state-metrics' kube_state_metrics_total_shards: a gauge may not end in _total.
TOTAL_SHARDS = Family.of("aep_exporter_total_shards", "gauge", "Number of shards.")
RELOAD_OK = Family.of(
    "aep_exporter_config_last_reload_successful", "gauge", "1 when the last config (re)load succeeded."
)
RELOAD_TIME = Family.of(
    "aep_exporter_config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful config (re)load.",
)
RUNS_STRATEGY = Family.of(
    "aep_exporter_runs_query_strategy",
    "gauge",
    "How /runs is queried in each sandbox (one-hot): created_at, started_at, newest_first or full.",
    ("sandbox", "strategy"),
)
EVENTS = Family.of(
    "aep_exporter_events",
    "counter",
    "Adobe I/O Events received, by source (journal, webhook) and outcome (applied, duplicate, "
    "already_counted, untracked, not_a_flow, rejected_signature, rejected_recipient, invalid).",
    ("source", "outcome"),
)
EVENT_LAG = Family.of(
    "aep_exporter_event_lag_seconds",
    "histogram",
    "From a run's end to its counts on /metrics, for runs an event announced.",
    ("source",),
)
JOURNAL_READ = Family.of(
    "aep_exporter_journal_last_read_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful read of the Adobe I/O Events journal.",
)
SELF_FAMILIES = (
    BUILD_INFO,
    API_REQUESTS,
    API_LATENCY,
    API_RETRIES,
    POLLS,
    POLL_FAILURES,
    POLL_INTERVAL,
    POLL_DURATION,
    LAST_POLL_SUCCESS,
    FLOWS,
    FLOWS_DROPPED,
    TOKEN_EXPIRY,
    TOKEN_REQUESTS,
    TOKEN_FAILURES,
    SHARD_INDEX,
    TOTAL_SHARDS,
    RELOAD_OK,
    RELOAD_TIME,
    RUNS_STRATEGY,
    EVENTS,
    EVENT_LAG,
    JOURNAL_READ,
)


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it (``60.0``, ``+Inf``)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


class _Families:
    def __init__(self, options: MetricsConfig) -> None:
        self.by_name = {f.name: Metric(f.name, f.help, f.type) for f in FAMILIES if f.lean or not options.lean}
        self.exemplars = options.exemplars

    def add(
        self,
        family: str,
        labels: Mapping[str, str],
        value: float | int | None,
        sample: str = "",
        exemplar: Exemplar | None = None,
    ) -> None:
        metric = self.by_name.get(family)
        if value is None or metric is None:  # no value, or a family this profile leaves out
            return
        metric.add_sample(
            sample or metric.name, dict(labels), float(value), exemplar=exemplar if self.exemplars else None
        )

    def one_hot(
        self,
        family: str,
        labels: Mapping[str, str],
        status: str | None,
        sparse: bool,
        statuses: tuple[str, ...] = STATUSES,
    ) -> None:
        if status is None:
            return
        for candidate in statuses:
            if sparse and candidate != status:
                continue
            self.add(family, {**labels, "status": candidate}, 1 if candidate == status else 0)

    def counts(
        self, prefix: str, labels: Mapping[str, str], counts: Counts, keys: tuple[CountKey, ...] = COUNT_KEYS
    ) -> None:
        for key in keys:
            self.add(f"{prefix}{key.field}_{key.group}", labels, key.of(counts))


def build_families(snapshot: Snapshot, options: MetricsConfig) -> list[Metric]:
    """Every upstream metric family of the snapshot, in a fixed order; empty families are left out."""
    fam = _Families(options)
    for state in snapshot.flows:
        _flow(fam, state, options)
    return [m for m in fam.by_name.values() if m.samples]


def flow_families(state: FlowState, options: MetricsConfig) -> list[Metric]:
    """The families of one flow alone (the unit the exposition cache renders)."""
    fam = _Families(options)
    _flow(fam, state, options)
    return [m for m in fam.by_name.values() if m.samples]


def counter_families(state: FlowState, options: MetricsConfig) -> list[Metric]:
    """The flow's counters and its duration histogram alone, named and labelled as on /metrics (what a backfill
    writes the history of)."""
    fam = _Families(options)
    if state.flow is None:
        return []
    base = {"sandbox": state.sandbox, "flow_id": state.flow_id, **state.labels}
    _all_completed(fam, base, state)
    if options.duration_histogram:
        _histogram(fam, base, state)
    if options.audiences:
        _audiences(fam, base, state)
    return [m for m in fam.by_name.values() if m.samples]


def _flow(fam: _Families, state: FlowState, options: MetricsConfig) -> None:
    fam.add("aep_exporter_flow_up", {"sandbox": state.sandbox, "flow_id": state.flow_id}, 1 if state.up else 0)
    flow = state.flow
    if flow is None:  # never read (a configured id the API does not know): only flow_up says so
        return
    base = {"sandbox": state.sandbox, "flow_id": state.flow_id, **state.labels}
    fam.add(
        "aep_flow_info",
        {
            **base,
            "flow_name": flow.name,
            "flow_spec_id": flow.flow_spec_id,
            "source_connection_spec_id": flow.source_connection_spec_id,
            "target_connection_spec_id": flow.target_connection_spec_id,
            "kind": flow.kind,
            "state": flow.state,
        },
        1,
    )
    fam.add("aep_flow_enabled", base, 1 if flow.state == "enabled" else 0)
    fam.add("aep_flow_schedule_interval_seconds", base, flow.schedule_interval_seconds)
    fam.add("aep_flow_schedule_end_timestamp_seconds", base, _seconds(flow.schedule_end_ms))
    fam.add("aep_flow_schedule_since_timestamp_seconds", base, _seconds(state.schedule_since_ms))
    fam.add("aep_flow_next_run_expected_timestamp_seconds", base, _seconds(state.next_run_expected_ms))
    fam.add("aep_flow_data_as_of_timestamp_seconds", base, _seconds(state.data_as_of_ms))
    _newest_run(fam, base, state, options)
    if state.last_completed is not None:
        _newest_completed(fam, base, state.last_completed, options)
    _all_completed(fam, base, state)
    if options.duration_histogram:
        _histogram(fam, base, state)
    if options.audiences:
        _audiences(fam, base, state)


def _newest_run(fam: _Families, base: Mapping[str, str], state: FlowState, options: MetricsConfig) -> None:
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


def _newest_completed(fam: _Families, base: Mapping[str, str], completed: CompletedRun, options: MetricsConfig) -> None:
    fam.counts("aep_flow_last_run_", base, completed.counts)
    if not options.activities:
        return
    for act in completed.activities:
        labels = {**base, "activity": act.name}
        fam.add("aep_flow_last_run_activity_duration_seconds", labels, act.duration_seconds)
        fam.one_hot("aep_flow_last_run_activity_status", labels, act.status, options.sparse_status)
        fam.counts("aep_flow_last_run_activity_", labels, act.counts, ACTIVITY_KEYS)


def _histogram(fam: _Families, base: Mapping[str, str], state: FlowState) -> None:
    hist = state.durations
    cumulative = 0
    for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
        cumulative += count
        fam.add(
            "aep_flow_run_duration_seconds",
            {**base, "le": _le(bound)},
            cumulative,
            "aep_flow_run_duration_seconds_bucket",
            exemplar_of(state, f"le:{bound}"),
        )
    fam.add("aep_flow_run_duration_seconds", base, hist.count, "aep_flow_run_duration_seconds_count")
    fam.add("aep_flow_run_duration_seconds", base, hist.sum, "aep_flow_run_duration_seconds_sum")


def _all_completed(fam: _Families, base: Mapping[str, str], state: FlowState) -> None:
    for status in TERMINAL_STATUSES:
        if status in state.runs_total:
            count = state.runs_total[status]
            example = exemplar_of(state, f"runs:{status}")
            fam.add("aep_flow_runs", {**base, "status": status}, count, "aep_flow_runs_total", example)
    for key in COUNT_KEYS:
        if key in state.totals:
            name = f"aep_flow_{key.field}_{key.group}"
            fam.add(name, base, state.totals[key], f"{name}_total", exemplar_of(state, f"count:{key.value}"))
    for code in sorted(state.error_codes):
        labels, count = {**base, "code": code}, state.error_codes[code]
        fam.add("aep_flow_run_errors", labels, count, "aep_flow_run_errors_total", exemplar_of(state, f"errors:{code}"))
    for outcome in sorted(state.record_codes):
        for code, count in sorted(state.record_codes[outcome].items()):
            fam.add(
                "aep_flow_record_codes",
                {**base, "outcome": outcome, "code": code},
                count,
                "aep_flow_record_codes_total",
            )


def _audiences(fam: _Families, base: Mapping[str, str], state: FlowState) -> None:
    for audience in sorted(state.audiences):
        for outcome, count in sorted(state.audiences[audience].items()):
            fam.add(
                "aep_flow_audience_records",
                {**base, "audience_id": audience, "outcome": outcome},
                count,
                "aep_flow_audience_records_total",
            )


class FlowCollector(Collector):
    """A prometheus-client collector over whatever snapshot ``source`` returns at collect time."""

    def __init__(self, source: Callable[[], Snapshot], options: MetricsConfig | None = None) -> None:
        self._source = source
        self._options = options or MetricsConfig()

    def collect(self) -> Iterator[Metric]:
        yield from build_families(self._source(), self._options)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families vary with the flows; describing them would force a collect at register time
