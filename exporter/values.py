"""Pure data: what the exporter knows of each flow and sandbox, and the secret. No behaviour beyond small
derived properties; every module above the leaves passes these values around.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from exporter.model import Activity, Counts, Flow

OVERLAP_MS = 10 * 60 * 1000
"""How far below the newest seen ``createdAt`` each runs query reaches, for runs that show up late."""
ADOBE_RUN_RETENTION_DAYS = 90
"""Adobe keeps dataflow runs for 90 days (Adobe's dataflow monitoring pages)."""
RETENTION_MS = (ADOBE_RUN_RETENTION_DAYS + 1) * 86_400_000
"""A day past Adobe's retention: a run older than this cannot come back."""
ALWAYS_PRESENT_RUN_STATUSES = ("success", "partial_success", "failed")


class Strategy(StrEnum):
    """How the runs of a flow are asked for (see the module docstring)."""

    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    NEWEST_FIRST = "newest_first"
    FULL = "full"

    @property
    def filters_time(self) -> bool:
        """Whether the query carries a time filter that Adobe might refuse or ignore."""
        return self in (Strategy.CREATED_AT, Strategy.STARTED_AT)


class CountKey(StrEnum):
    """A count a run reports, as ``group.field`` (the key of a flow's totals and of the state file)."""

    RECORDS_INPUT = "records.input"
    RECORDS_OUTPUT = "records.output"
    RECORDS_FAILED = "records.failed"
    RECORDS_SKIPPED = "records.skipped"
    RECORDS_WARNING = "records.warning"
    RECORDS_CREATED = "records.created"
    RECORDS_UPDATED = "records.updated"
    RECORDS_DELETED = "records.deleted"
    BYTES_INPUT = "bytes.input"
    BYTES_OUTPUT = "bytes.output"
    BYTES_SKIPPED = "bytes.skipped"
    BYTES_FAILED = "bytes.failed"
    FILES_INPUT = "files.input"
    FILES_OUTPUT = "files.output"
    FILES_FAILED = "files.failed"
    FILES_SKIPPED = "files.skipped"

    @property
    def group(self) -> str:
        """``records``, ``bytes`` or ``files``: the ``Counts`` attribute it lives in."""
        return self.value.split(".")[0]

    @property
    def field(self) -> str:
        """``input``, ``output``, ...: its name within the group."""
        return self.value.split(".")[1]

    def of(self, counts: Counts) -> int | None:
        """This count in ``counts`` (None when unknown)."""
        group: dict[str, int | None] = getattr(counts, self.group)
        return group.get(self.field)


COUNT_KEYS = tuple(CountKey)


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so never in logs or tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it (the IMS token request)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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


RECENT_RUNS = 20
"""How many of a flow's newest runs its state keeps (and the state file holds) for the flow page."""


@dataclass(frozen=True, kw_only=True)
class RecentRun:
    """One of a flow's newest runs, as the flow page shows it."""

    id: str
    status: str
    started_ms: int | None
    ended_ms: int | None
    duration_seconds: float | None
    counts: Counts
    errors: tuple[tuple[str, str], ...] = ()  # (code, message)


@dataclass(frozen=True, kw_only=True)
class Exemplar:
    """The newest run that changed a counter (or a duration bucket): what OpenMetrics shows beside its value."""

    run_id: str
    value: float
    ended_ms: int


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

    def rebucket(self, bounds: tuple[float, ...]) -> Histogram | None:
        """The same observations in other buckets, when every new bound is one of ours (exact: cumulative counts at
        shared bounds are kept, so Prometheus sees no reset); None when it cannot be exact."""
        if not set(bounds) <= set(self.bounds) or list(bounds) != sorted(bounds):
            return None
        counts = [0] * (len(bounds) + 1)
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            counts[next((i for i, b in enumerate(bounds) if bound <= b), len(bounds))] += count
        return Histogram(bounds=bounds, counts=tuple(counts), sum=self.sum)

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
    record_codes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # outcome -> code -> count
    audiences: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # audience_id -> outcome -> count
    undated_runs: bool = False  # a run without createdAt was seen: no createdAt window can prove a run absent
    data_as_of_ms: int | None = None  # the end of the newest data a successful run ingested (its windowEnd, or end)
    schedule_since_ms: int | None = None  # when the current schedule took effect (startTime, or a change seen)
    recent_runs: tuple[RecentRun, ...] = ()  # newest first, at most RECENT_RUNS
    exemplars: Mapping[str, Exemplar] = field(default_factory=dict)  # series key (see counting.py) -> newest run

    @property
    def key(self) -> tuple[str, str]:
        return (self.sandbox, self.flow_id)

    @property
    def next_run_expected_ms(self) -> int | None:
        """When the flow's next run should start: its newest run's start, or when its schedule took effect if
        later, plus its interval (an hour for a streaming flow). None when no run is expected: not enabled, no
        schedule, nothing to count from, or past the schedule's end."""
        flow = self.flow
        interval = flow.expected_interval_seconds if flow is not None else None
        if flow is None or interval is None or flow.state != "enabled":
            return None
        started = self.last_run.started_ms if self.last_run is not None else None
        bases = [t for t in (started, self.schedule_since_ms) if t is not None]
        if not bases:
            return None
        expected = max(bases) + int(interval * 1000)
        if flow.schedule_end_ms is not None and expected > flow.schedule_end_ms:
            return None
        return expected

    def needs_runs(self, flow: Flow) -> bool:
        """Whether ``/runs`` must be read: something changed, or runs are still going."""
        return self.newest_created_ms is None or self.seen_key != flow.change_key or bool(self.in_progress)


@dataclass(frozen=True, kw_only=True)
class SandboxStatus:
    """The last poll of one sandbox, for the landing page and readiness."""

    name: str
    flows: int = 0
    dropped: int = 0
    polls: int = 0
    last_ok: bool | None = None
    last_success_s: float | None = None
    last_error: str | None = None
    runs_strategy: str = Strategy.CREATED_AT.value


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """An immutable view of every tracked flow and sandbox; ``version`` changes whenever a flow's state does."""

    version: int
    flows: tuple[FlowState, ...]
    sandboxes: tuple[SandboxStatus, ...]
