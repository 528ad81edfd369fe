"""Flow Service JSON -> frozen ``Flow`` and ``Run`` values. Pure: no I/O, no package imports but errors.

Parsing is defensive: Adobe's payloads vary between connectors and over time. Anything that is not a
JSON object with an ``id`` raises :class:`PayloadError`; every other field is optional. Counts that are
missing, ``-1`` (Adobe's "unknown"), negative or not integers become ``None``, never 0, and their field
names are kept in ``Run.unknown_fields`` so the caller can log them once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from exporter.errors import PayloadError

STATUSES = ("success", "partial_success", "failed", "in_progress", "scheduled", "cancelled", "other")
"""Every normalised run status, in the order the one-hot metrics list them."""

TERMINAL_STATUSES = ("success", "partial_success", "failed", "cancelled", "other")
"""Statuses a completed run can end with (``aep_flow_runs_total``'s ``status`` values)."""

_STATUS_ALIASES = {
    "success": "success",
    "succeeded": "success",
    "completed": "success",
    "partialsuccess": "partial_success",
    "failed": "failed",
    "failure": "failed",
    "error": "failed",
    "inprogress": "in_progress",
    "processing": "in_progress",
    "running": "in_progress",
    "started": "in_progress",
    "scheduled": "scheduled",
    "waiting": "scheduled",
    "queued": "scheduled",
    "pending": "scheduled",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "aborted": "cancelled",
}

RECORD_FIELDS = {
    "input": "inputRecordCount",
    "output": "outputRecordCount",
    "failed": "failedRecordCount",
    "skipped": "skippedRecordCount",
    "warning": "warningRecordCount",
}
BYTE_FIELDS = {"input": "inputBytes", "output": "outputBytes"}
FILE_FIELDS = {"input": "inputFileCount", "output": "outputFileCount", "failed": "failedFileCount"}

_SCHEDULE_UNITS = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def normalize_status(raw: object) -> str | None:
    """Map Adobe's status spellings (``partialSuccess``, ``Failed``, ``Processing``) to ``STATUSES``.

    Returns ``None`` when there is no status at all, and ``"other"`` for one we do not know.
    """
    if not isinstance(raw, str) or not raw.strip():
        return None
    key = re.sub(r"[\s_-]", "", raw).lower()
    return _STATUS_ALIASES.get(key, "other")


def snake_case(name: str) -> str:
    """``Copy Activity`` / ``copyActivity`` / ``copy-activity`` -> ``copy_activity``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_") or "unnamed"


@dataclass(frozen=True, kw_only=True)
class Counts:
    """Record, byte and file counts of a run or activity; ``None`` where unknown."""

    records: dict[str, int | None] = field(default_factory=dict)
    bytes: dict[str, int | None] = field(default_factory=dict)
    files: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Activity:
    """One activity of a run, keyed by its snake_cased name (or id)."""

    name: str
    status: str | None
    duration_seconds: float | None
    counts: Counts


@dataclass(frozen=True, kw_only=True)
class Run:
    """One run of a flow, as the Flow Service reported it at one moment."""

    id: str
    flow_id: str | None
    created_at_ms: int | None
    updated_at_ms: int | None
    started_at_ms: int | None
    completed_at_ms: int | None
    status: str | None
    raw_status: str | None
    counts: Counts
    error_codes: frozenset[str]
    activities: tuple[Activity, ...]
    unknown_fields: tuple[str, ...]

    @property
    def is_terminal(self) -> bool:
        """True once the run has finished: a final status, or an end time without a running status."""
        if self.status in ("in_progress", "scheduled"):
            return False
        if self.status in ("success", "partial_success", "failed", "cancelled"):
            return True
        return self.completed_at_ms is not None

    @property
    def final_status(self) -> str:
        """The status to count a completed run under (``other`` when unknown or missing)."""
        return self.status if self.status in TERMINAL_STATUSES else "other"

    @property
    def time_ms(self) -> int | None:
        """The run's best own time, to order and watermark it: ``createdAt``, else ``updatedAt``, else its start,
        else its end (Adobe's Destination SDK shows runs without ``createdAt``); None when it carries no time."""
        for value in (self.created_at_ms, self.updated_at_ms, self.started_at_ms, self.completed_at_ms):
            if value is not None:
                return value
        return None

    @property
    def latest_ms(self) -> int | None:
        """The latest time the run reports (of created, updated, started, completed): how far Adobe's clock had
        got when it answered, at least."""
        times = [t for t in (self.created_at_ms, self.updated_at_ms, self.started_at_ms, self.completed_at_ms)
                 if t is not None]
        return max(times) if times else None

    @property
    def duration_seconds(self) -> float | None:
        """End minus start, when both are known and in order."""
        if self.started_at_ms is None or self.completed_at_ms is None:
            return None
        if self.completed_at_ms < self.started_at_ms:
            return None
        return (self.completed_at_ms - self.started_at_ms) / 1000.0


@dataclass(frozen=True, kw_only=True)
class LastRunDetails:
    """``lastRunDetails`` of a flow: which run is newest, and its state."""

    id: str
    state: str | None
    started_at_ms: int | None
    completed_at_ms: int | None


@dataclass(frozen=True, kw_only=True)
class Flow:
    """One dataflow, as listed by ``GET /flows``."""

    id: str
    name: str
    flow_spec_id: str
    source_connection_spec_id: str
    target_connection_spec_id: str
    kind: str
    state: str
    schedule_interval_seconds: float | None
    last_run: LastRunDetails | None

    @property
    def change_key(self) -> tuple[str, str | None] | None:
        """What tells whether a flow has something new: its newest run's id and state."""
        if self.last_run is None:
            return None
        return (self.last_run.id, self.last_run.state)


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _ms(value: object) -> int | None:
    """An epoch-milliseconds timestamp, or None when absent, negative or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if math.isnan(value) or value < 0 or value > 1e15:  # NaN, -1, absurd
        return None
    return int(value)


def _count(summary: dict[str, Any], key: str, unknown: list[str], prefix: str) -> int | None:
    if key not in summary:
        return None
    value = summary[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        unknown.append(f"{prefix}{key}")
        return None
    return value


def _counts(section: dict[str, Any], unknown: list[str], prefix: str = "") -> Counts:
    rec, size, files = (_obj(section.get(k)) for k in ("recordSummary", "sizeSummary", "fileSummary"))
    return Counts(
        records={k: _count(rec, f, unknown, prefix) for k, f in RECORD_FIELDS.items()},
        bytes={k: _count(size, f, unknown, prefix) for k, f in BYTE_FIELDS.items()},
        files={k: _count(files, f, unknown, prefix) for k, f in FILE_FIELDS.items()},
    )


def _span_seconds(start: int | None, end: int | None) -> float | None:
    if start is None or end is None or end < start:
        return None
    return (end - start) / 1000.0


def _error_codes(status_summary: dict[str, Any]) -> set[str]:
    codes: set[str] = set()
    lists = (status_summary.get("errors"), _obj(status_summary.get("extensions")).get("errors"))
    for errors in lists:
        if isinstance(errors, list):
            for err in errors:
                code = _obj(err).get("code")
                if isinstance(code, (str, int)) and not isinstance(code, bool) and str(code).strip():
                    codes.add(str(code).strip()[:64])
    return codes


def _require_id(payload: object, what: str) -> tuple[dict[str, Any], str]:
    if not isinstance(payload, dict):
        raise PayloadError(f"{what} is not a JSON object")
    ident = payload.get("id")
    if not isinstance(ident, str) or not ident:
        raise PayloadError(f"{what} has no id")
    return payload, ident


def parse_run(payload: object) -> Run:
    """Parse one item of ``GET /runs``; raises PayloadError only when it has no usable id."""
    data, run_id = _require_id(payload, "run")
    metrics = _obj(data.get("metrics"))
    duration = _obj(metrics.get("durationSummary"))
    status_summary = _obj(metrics.get("statusSummary"))
    unknown: list[str] = []
    codes = _error_codes(status_summary)
    activities: list[Activity] = []
    raw_activities = data.get("activities")
    for raw in raw_activities if isinstance(raw_activities, list) else []:
        act = _obj(raw)
        act_name = _str(act.get("name")) or _str(act.get("id"))
        if not act_name:
            continue
        act_status = _obj(act.get("statusSummary"))
        codes |= _error_codes(act_status)
        act_duration = _obj(act.get("durationSummary"))
        start, end = _ms(act_duration.get("startedAtUTC")), _ms(act_duration.get("completedAtUTC"))
        activities.append(
            Activity(
                name=snake_case(act_name),
                status=normalize_status(act_status.get("status")),
                duration_seconds=_span_seconds(start, end),
                counts=_counts(act, [], ""),
            )
        )
    raw_status = status_summary.get("status")
    return Run(
        id=run_id,
        flow_id=_str(data.get("flowId")) or None,
        created_at_ms=_ms(data.get("createdAt")),
        updated_at_ms=_ms(data.get("updatedAt")),
        started_at_ms=_ms(duration.get("startedAtUTC")),
        completed_at_ms=_ms(duration.get("completedAtUTC")),
        status=normalize_status(raw_status),
        raw_status=raw_status if isinstance(raw_status, str) else None,
        counts=_counts(metrics, unknown),
        error_codes=frozenset(codes),
        activities=tuple(sorted(_dedupe_activities(activities), key=lambda a: a.name)),
        unknown_fields=tuple(unknown),
    )


def _dedupe_activities(activities: list[Activity]) -> list[Activity]:
    seen: dict[str, Activity] = {}
    for act in activities:
        seen.setdefault(act.name, act)  # two activities with one name: keep the first, labels stay unique
    return list(seen.values())


def _schedule_interval(params: object) -> float | None:
    sched = _obj(params)
    raw_interval = sched.get("interval")
    try:
        interval = float(raw_interval) if raw_interval is not None and not isinstance(raw_interval, bool) else None
    except (TypeError, ValueError):
        interval = None
    unit = _str(sched.get("frequency")) or _str(sched.get("timeUnit"))
    seconds = _SCHEDULE_UNITS.get(unit.lower().rstrip("s"))
    if seconds is None:  # "once", streaming flows (no scheduleParams), or an unknown unit
        return None
    if interval is None:
        interval = 1.0
    if interval <= 0 or math.isnan(interval):
        return None
    return interval * seconds


def _connection_spec(attrs: dict[str, Any], key: str) -> str:
    conns = attrs.get(key)
    if isinstance(conns, list) and conns:
        return _str(_obj(_obj(conns[0]).get("connectionSpec")).get("id"))
    return ""


def parse_flow(payload: object) -> Flow:
    """Parse one item of ``GET /flows``; raises PayloadError only when it has no usable id."""
    data, flow_id = _require_id(payload, "flow")
    attrs = _obj(data.get("inheritedAttributes"))
    props = _obj(attrs.get("properties"))
    if props.get("isSourceFlow") is True:
        kind = "source"
    elif props.get("isDestinationFlow") is True:
        kind = "destination"
    else:
        kind = "unknown"
    last = _obj(data.get("lastRunDetails"))
    last_id = last.get("id")
    last_run = None
    if isinstance(last_id, str) and last_id:
        state = last.get("state")
        last_run = LastRunDetails(
            id=last_id,
            state=state if isinstance(state, str) else None,
            started_at_ms=_ms(last.get("startedAtUTC")),
            completed_at_ms=_ms(last.get("completedAtUTC")),
        )
    return Flow(
        id=flow_id,
        name=_str(data.get("name")),
        flow_spec_id=_str(_obj(data.get("flowSpec")).get("id")),
        source_connection_spec_id=_connection_spec(attrs, "sourceConnections"),
        target_connection_spec_id=_connection_spec(attrs, "targetConnections"),
        kind=kind,
        state=_str(data.get("state"), "unknown") or "unknown",
        schedule_interval_seconds=_schedule_interval(data.get("scheduleParams")),
        last_run=last_run,
    )


def items_of(envelope: object, what: str) -> list[object]:
    """The ``items`` list of a Flow Service list envelope; PayloadError when the shape is wrong."""
    if not isinstance(envelope, dict):
        raise PayloadError(f"{what} answer is not a JSON object")
    items = envelope.get("items", [])
    if not isinstance(items, list):
        raise PayloadError(f"{what} answer has no items list")
    return items


def next_link(envelope: dict[str, Any]) -> str | None:
    """``_links.next.href`` of a list envelope, or None on the last page."""
    href = _obj(_obj(envelope.get("_links")).get("next")).get("href")
    return href if isinstance(href, str) and href else None
