"""Flow Service JSON -> frozen ``Flow`` and ``Run`` values: where Adobe's values enter. Pure: no I/O.

Parsing is defensive: Adobe's payloads vary between connectors and over time. Anything that is not a JSON object
with a clean ``id`` raises :class:`PayloadError`; every other field is optional. Every value is validated here,
by checks.py's rules (schedules by schedules.py's), so nothing downstream (counting, state file, exposition,
landing page) can meet a bad one. Names of fields found invalid are kept in ``Run.unknown_fields`` /
``Flow.invalid_fields`` so the caller can log them once with the flow id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from exporter.checks import MAX_COUNT, Checker, clean_text, mapping
from exporter.errors import PayloadError
from exporter.schedules import STREAMING_WINDOW_S, flow_schedule
from exporter.statuses import FINAL_STATUSES, TERMINAL_STATUSES, normalize_status

RECORD_FIELDS = {
    "input": "inputRecordCount",
    "output": "outputRecordCount",
    "failed": "failedRecordCount",
    "skipped": "skippedRecordCount",
    "warning": "warningRecordCount",
    "created": "createdRecordCount",  # destination (activation) runs: identities activated, updated, removed
    "updated": "updatedRecordCount",
    "deleted": "deletedRecordCount",
}
BYTE_FIELDS = {"input": "inputBytes", "output": "outputBytes", "skipped": "skippedBytes", "failed": "failedBytes"}
FILE_FIELDS = {
    "input": "inputFileCount",
    "output": "outputFileCount",
    "failed": "failedFileCount",
    "skipped": "skippedFileCount",
}
RECORD_CODE_LISTS = {"skipped": "skippedInfo", "failed": "failedInfo", "warning": "warningInfo"}
"""``recordSummary`` lists of ``{code, count}`` in destination runs, by outcome."""


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
    record_codes: tuple[tuple[str, str, int], ...] = ()  # (outcome, code, count) from skipped/failed/warningInfo
    audience_counts: tuple[tuple[str, str, int], ...] = ()  # (audience_id, outcome, count) from entitySummaries
    activities: tuple[Activity, ...]
    unknown_fields: tuple[str, ...]
    window_end_ms: int | None = None  # the newest durationSummary.extensions.windowEnd of its activities
    errors: tuple[tuple[str, str], ...] = ()  # (code, its first message, cleaned) run level and activity level

    @property
    def is_terminal(self) -> bool:
        """True once the run has finished: a final status, or an end time without a running status."""
        if self.status in ("in_progress", "scheduled"):
            return False
        if self.status in FINAL_STATUSES:
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
        times = [
            t
            for t in (self.created_at_ms, self.updated_at_ms, self.started_at_ms, self.completed_at_ms)
            if t is not None
        ]
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
    invalid_fields: tuple[str, ...] = ()
    schedule_end_ms: int | None = None  # segment exports: when the last audience's schedule ends
    schedule_start_ms: int | None = None  # scheduleParams.startTime: when the schedule took effect
    streaming: bool = False  # no schedule of any kind: runs are hourly windows (schedules.py)

    @property
    def expected_interval_seconds(self) -> float | None:
        """How often a run is expected: the schedule's interval, an hour for a streaming flow, else None."""
        if self.schedule_interval_seconds is not None:
            return self.schedule_interval_seconds
        return STREAMING_WINDOW_S if self.streaming else None

    @property
    def change_key(self) -> tuple[str, str | None] | None:
        """What tells whether a flow has something new: its newest run's id and state."""
        if self.last_run is None:
            return None
        return (self.last_run.id, self.last_run.state)


def _counts(section: dict[str, Any], check: Checker, prefix: str = "") -> Counts:
    rec, size, files = (mapping(section.get(k)) for k in ("recordSummary", "sizeSummary", "fileSummary"))
    return Counts(
        records={k: check.count(rec, f, prefix) for k, f in RECORD_FIELDS.items()},
        bytes={k: check.count(size, f, prefix) for k, f in BYTE_FIELDS.items()},
        files={k: check.count(files, f, prefix) for k, f in FILE_FIELDS.items()},
    )


def _span_seconds(start: int | None, end: int | None) -> float | None:
    if start is None or end is None or end < start:
        return None
    return (end - start) / 1000.0


MAX_ERROR_MESSAGE = 500
"""An error message is kept (for the flow page) up to this many characters, cleaned like every text from Adobe."""


def _error_codes(status_summary: dict[str, Any]) -> dict[str, str]:
    """The error codes of a status summary (run or activity level), each with its first message ("" if none)."""
    codes: dict[str, str] = {}
    lists = (status_summary.get("errors"), mapping(status_summary.get("extensions")).get("errors"))
    for errors in lists:
        if isinstance(errors, list):
            for err in errors:
                code = mapping(err).get("code")
                if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 10**12:
                    code = str(code)
                if isinstance(code, str) and code.strip():
                    message = mapping(err).get("message")
                    text = clean_text(message.strip(), MAX_ERROR_MESSAGE) if isinstance(message, str) else ""
                    key = clean_text(code.strip(), 64)
                    if not codes.get(key):
                        codes[key] = text
    return codes


def _record_codes(summary: dict[str, Any], check: Checker) -> tuple[tuple[str, str, int], ...]:
    """``skippedInfo``/``failedInfo``/``warningInfo`` as (outcome, code, count), counts summed per code; an
    entry without a clean code or a valid count is noted and left out."""
    totals: dict[tuple[str, str], int] = {}
    for outcome, key in RECORD_CODE_LISTS.items():
        entries = summary.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            check.invalid.append(f"recordSummary.{key}")
            continue
        for entry in entries:
            raw_code = mapping(entry).get("code")
            if isinstance(raw_code, int) and not isinstance(raw_code, bool) and 0 <= raw_code < 10**12:
                raw_code = str(raw_code)
            if not isinstance(raw_code, str) or not raw_code.strip():
                check.invalid.append(f"recordSummary.{key}")
                continue
            # A code without a count (Adobe's "Standard alert rules" failure example: code and message only) is
            # still worth showing: its series exists and adds no invented records. A count that is there but not
            # valid (-1, a string) is noted as unknown, the code still shown.
            given = mapping(entry).get("count") is not None
            count = check.count(mapping(entry), "count", f"recordSummary.{key}.") if given else 0
            code = clean_text(raw_code.strip(), 64)
            totals[(outcome, code)] = min(totals.get((outcome, code), 0) + (count or 0), MAX_COUNT)
    return tuple((outcome, code, count) for (outcome, code), count in sorted(totals.items()))


AUDIENCE_SUMMARY_LISTS = ("targetSummaries", "sourceSummaries")
"""``recordSummary`` lists whose items carry ``entitySummaries[]`` (``id`` = ``segment:<uuid>``), target side first."""


def _audience_counts(summary: dict[str, Any], check: Checker) -> tuple[tuple[str, str, int], ...]:
    """Per-audience record counts as (audience_id, outcome, count), ``outcome`` being a ``RECORD_FIELDS`` key.

    ``targetSummaries`` (what reached the destination) are summed over their items; ``sourceSummaries`` only fill
    in the (audience, outcome) pairs no target summary reports (a failed run may have only source summaries), so
    an audience seen on both sides is never counted twice. ``audience_id`` is the id without its ``segment:``
    prefix. An entity without a clean id, or a count that is not valid, is noted and left out.
    """
    sides: list[dict[tuple[str, str], int]] = []
    for key in AUDIENCE_SUMMARY_LISTS:
        totals: dict[tuple[str, str], int] = {}
        for item in _list_of(summary, key, check):
            for entity in _list_of(mapping(item), "entitySummaries", check, f"recordSummary.{key}"):
                _audience_entity(mapping(entity), totals, check, key)
        sides.append(totals)
    target, source = sides
    merged = {**{k: v for k, v in source.items() if k not in target}, **target}
    return tuple((audience, outcome, count) for (audience, outcome), count in sorted(merged.items()))


def _list_of(section: dict[str, Any], key: str, check: Checker, where: str = "recordSummary") -> list[Any]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        check.invalid.append(f"{where}.{key}")
        return []
    return value


def _audience_entity(entity: dict[str, Any], totals: dict[tuple[str, str], int], check: Checker, key: str) -> None:
    raw_id = entity.get("id")
    if not isinstance(raw_id, str) or not raw_id.strip():
        check.invalid.append(f"recordSummary.{key}.entitySummaries.id")
        return
    audience = clean_text(raw_id.strip().removeprefix("segment:"), 128)
    for outcome, field_name in RECORD_FIELDS.items():
        count = check.count(entity, field_name, f"recordSummary.{key}.entitySummaries.")
        if count is not None:
            totals[(audience, outcome)] = min(totals.get((audience, outcome), 0) + count, MAX_COUNT)


def _require_id(payload: object, what: str) -> tuple[dict[str, Any], str]:
    if not isinstance(payload, dict):
        raise PayloadError(f"{what} is not a JSON object")
    ident = payload.get("id")
    if not isinstance(ident, str) or not ident:
        raise PayloadError(f"{what} has no id")
    if clean_text(ident, 128) != ident or ident != ident.strip():
        raise PayloadError(f"{what} has an unusable id ({clean_text(ident, 64)!r})")
    return payload, ident


def _activities(raw_activities: object, check: Checker) -> tuple[list[Activity], list[int], list[int], dict[str, str]]:
    """A run's activities, their ends, the data windows copy activities report (``durationSummary.extensions.
    windowEnd``, "Monitor dataflows using the Flow Service API") and their error codes."""
    activities: list[Activity] = []
    activity_ends: list[int] = []
    window_ends: list[int] = []
    codes: dict[str, str] = {}
    for raw in raw_activities if isinstance(raw_activities, list) else []:
        act = mapping(raw)
        act_name = check.text(act.get("name"), "activities.name") or check.text(act.get("id"), "activities.id")
        if not act_name:
            continue
        act_status = mapping(act.get("statusSummary"))
        for code, message in _error_codes(act_status).items():
            codes[code] = codes.get(code) or message
        act_duration = mapping(act.get("durationSummary"))
        start = check.ms(act_duration.get("startedAtUTC"), "activities.startedAtUTC")
        end = check.ms(act_duration.get("completedAtUTC"), "activities.completedAtUTC")
        if end is not None:
            activity_ends.append(end)
        window_end = check.ms(mapping(act_duration.get("extensions")).get("windowEnd"), "activities.windowEnd")
        if window_end is not None:
            window_ends.append(window_end)
        activities.append(
            Activity(
                name=snake_case(act_name),
                status=normalize_status(act_status.get("status")),
                duration_seconds=_span_seconds(start, end),
                counts=_counts(act, Checker(check.now_ms), ""),
            )
        )
    return activities, activity_ends, window_ends, codes


def parse_run(payload: object, now_ms: int | None = None) -> Run:
    """Parse one item of ``GET /runs``; raises PayloadError only when it has no usable id.

    ``now_ms`` bounds plausible timestamps (default: the wall clock).
    """
    data, run_id = _require_id(payload, "run")
    check = Checker(now_ms)
    metrics = mapping(data.get("metrics"))
    duration = mapping(metrics.get("durationSummary"))
    status_summary = mapping(metrics.get("statusSummary"))
    codes = _error_codes(status_summary)
    activities, activity_ends, window_ends, activity_codes = _activities(data.get("activities"), check)
    for code, message in activity_codes.items():
        codes[code] = codes.get(code) or message
    raw_status = status_summary.get("status")
    status = normalize_status(raw_status)
    counts = _counts(metrics, check)
    completed = check.ms(duration.get("completedAtUTC"), "completedAtUTC")
    if completed is None and status in FINAL_STATUSES and activity_ends:
        # A run with a final status but no end of its own (Adobe's "Flow run notifications" failure example) ended
        # when its last activity did.
        completed = max(activity_ends)
    return Run(
        id=run_id,
        flow_id=check.text(data.get("flowId"), "flowId", limit=128) or None,
        created_at_ms=check.ms(data.get("createdAt"), "createdAt"),
        updated_at_ms=check.ms(data.get("updatedAt"), "updatedAt"),
        started_at_ms=check.ms(duration.get("startedAtUTC"), "startedAtUTC"),
        completed_at_ms=completed,
        status=status,
        raw_status=clean_text(raw_status, 64) if isinstance(raw_status, str) else None,
        counts=counts,
        error_codes=frozenset(codes),
        errors=tuple(sorted(codes.items())),
        record_codes=_record_codes(mapping(metrics.get("recordSummary")), check),
        audience_counts=_audience_counts(mapping(metrics.get("recordSummary")), check),
        activities=tuple(sorted(_dedupe_activities(activities), key=lambda a: a.name)),
        unknown_fields=tuple(dict.fromkeys(check.invalid)),
        window_end_ms=max(window_ends, default=None),
    )


def _dedupe_activities(activities: list[Activity]) -> list[Activity]:
    seen: dict[str, Activity] = {}
    for act in activities:
        seen.setdefault(act.name, act)  # two activities with one name: keep the first, labels stay unique
    return list(seen.values())


def _connection_spec(attrs: dict[str, Any], key: str, check: Checker) -> str:
    conns = attrs.get(key)
    if isinstance(conns, list) and conns:
        return check.text(
            mapping(mapping(conns[0]).get("connectionSpec")).get("id"), f"{key}.connectionSpec.id", limit=128
        )
    return ""


def parse_flow(payload: object, now_ms: int | None = None) -> Flow:
    """Parse one item of ``GET /flows``; raises PayloadError only when it has no usable id."""
    data, flow_id = _require_id(payload, "flow")
    check = Checker(now_ms)
    attrs = mapping(data.get("inheritedAttributes"))
    props = mapping(attrs.get("properties"))
    if props.get("isSourceFlow") is True:
        kind = "source"
    elif props.get("isDestinationFlow") is True:
        kind = "destination"
    else:
        kind = "unknown"
    last = mapping(data.get("lastRunDetails"))
    last_id = last.get("id")
    last_run = None
    if isinstance(last_id, str) and last_id and clean_text(last_id, 128) == last_id:
        state = last.get("state")
        last_run = LastRunDetails(
            id=last_id,
            state=check.text(state, "lastRunDetails.state", limit=64) or None,
            started_at_ms=check.ms(last.get("startedAtUTC"), "lastRunDetails.startedAtUTC"),
            completed_at_ms=check.ms(last.get("completedAtUTC"), "lastRunDetails.completedAtUTC"),
        )
    elif last_id is not None:
        check.invalid.append("lastRunDetails.id")
    schedule = flow_schedule(data, check.now_ms)
    check.invalid.extend(schedule.invalid)
    return Flow(
        id=flow_id,
        name=check.text(data.get("name"), "name"),
        flow_spec_id=check.text(mapping(data.get("flowSpec")).get("id"), "flowSpec.id", limit=128),
        source_connection_spec_id=_connection_spec(attrs, "sourceConnections", check),
        target_connection_spec_id=_connection_spec(attrs, "targetConnections", check),
        kind=kind,
        state=check.text(data.get("state"), "state", "unknown", limit=64) or "unknown",
        schedule_interval_seconds=schedule.interval_seconds,
        schedule_end_ms=schedule.end_ms,
        schedule_start_ms=schedule.start_ms,
        streaming=schedule.streaming,
        last_run=last_run,
        invalid_fields=tuple(dict.fromkeys(check.invalid)),
    )
