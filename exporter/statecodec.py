"""The state codec: a flow's state to JSON and back, validated on the way in like a fresh answer from Adobe
(store.py keeps the JSON; a file written by an older version, or by hand, brings nothing invalid back)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Mapping
from typing import Any

from exporter.checks import clean_text, plausible_ms, valid_count, valid_seconds
from exporter.model import (
    MAX_ERROR_MESSAGE,
    RECORD_CODE_LISTS,
    RECORD_FIELDS,
    Activity,
    Counts,
    Flow,
    LastRunDetails,
    snake_case,
)
from exporter.schedules import valid_end, valid_interval
from exporter.statuses import STATUSES
from exporter.values import RECENT_RUNS, RETENTION_MS, CompletedRun, Exemplar, FlowState, Histogram, LastRun, RecentRun


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
        return Counts(
            **{
                group: {self.text(k, 64): valid_count(v) for k, v in data[group].items()}
                for group in ("records", "bytes", "files")
            }
        )

    def tally(self, data: Mapping[str, Any], limit: int = 64) -> dict[str, int]:
        """A counter map with only valid keys and counts (an invalid one is dropped: unknown, not 0)."""
        out = {}
        for key, val in data.items():
            count = valid_count(val)
            if count is not None:
                out[self.text(key, limit)] = count
        return out

    def record_codes(self, data: Mapping[str, Any]) -> dict[str, dict[str, int]]:
        """outcome -> code -> count, for the outcomes there are."""
        return {
            outcome: self.tally(codes)
            for outcome, codes in data.items()
            if outcome in RECORD_CODE_LISTS and isinstance(codes, dict)
        }

    def audiences(self, data: Mapping[str, Any]) -> dict[str, dict[str, int]]:
        """audience_id -> outcome -> count, for the outcomes there are."""
        return {
            self.text(audience, 128): {o: c for o, c in self.tally(counts).items() if o in RECORD_FIELDS}
            for audience, counts in data.items()
            if isinstance(counts, dict)
        }

    def flow(self, data: Mapping[str, Any] | None) -> Flow | None:
        if data is None:
            return None
        last = data.get("last_run")
        return Flow(
            id=self.text(data["id"], 128),
            name=self.text(data.get("name")),
            flow_spec_id=self.text(data.get("flow_spec_id"), 128),
            source_connection_spec_id=self.text(data.get("source_connection_spec_id"), 128),
            target_connection_spec_id=self.text(data.get("target_connection_spec_id"), 128),
            kind=self.text(data.get("kind"), 32) or "unknown",
            state=self.text(data.get("state"), 64) or "unknown",
            schedule_interval_seconds=valid_interval(data.get("schedule_interval_seconds")),
            schedule_end_ms=valid_end(data.get("schedule_end_ms")),
            schedule_start_ms=valid_end(data.get("schedule_start_ms")),
            streaming=data.get("streaming") is True,
            last_run=LastRunDetails(
                id=self.text(last["id"], 128),
                state=self.text(last.get("state"), 64) or None,
                started_at_ms=self.ms(last.get("started_at_ms")),
                completed_at_ms=self.ms(last.get("completed_at_ms")),
            )
            if last
            else None,
        )

    def activity(self, a: Mapping[str, Any]) -> Activity:
        return Activity(
            name=snake_case(self.text(a["name"], 128)),
            status=_status_of(a.get("status")),
            duration_seconds=valid_seconds(a.get("duration_seconds")),
            counts=self.counts(a["counts"]),
        )

    def recent_runs(self, items: object) -> tuple[RecentRun, ...]:
        """The flow page's newest runs; an entry that is not valid is left out."""
        out: list[RecentRun] = []
        for item in items[:RECENT_RUNS] if isinstance(items, list) else []:
            counts = item.get("counts") if isinstance(item, dict) else None
            if not isinstance(item, dict) or not self.text(item.get("id"), 128) or not _counts_shaped(counts):
                continue
            errors = item.get("errors")
            out.append(
                RecentRun(
                    id=self.text(item["id"], 128),
                    status=_status_of(item.get("status")) or "other",
                    started_ms=self.ms(item.get("started_ms")),
                    ended_ms=self.ms(item.get("ended_ms")),
                    duration_seconds=valid_seconds(item.get("duration_seconds")),
                    counts=self.counts(counts or {}),
                    errors=tuple(
                        (self.text(e[0], 64), self.text(e[1], MAX_ERROR_MESSAGE))
                        for e in (errors if isinstance(errors, list) else [])
                        if isinstance(e, list) and len(e) == 2 and self.text(e[0], 64)
                    ),
                )
            )
        return tuple(out)

    def exemplars(self, data: object) -> dict[str, Exemplar]:
        """Series key -> the newest run that changed it; an entry that is not valid is left out."""
        out: dict[str, Exemplar] = {}
        for key, item in data.items() if isinstance(data, dict) else ():
            value = item.get("value") if isinstance(item, dict) else None
            ended = self.ms(item.get("ended_ms")) if isinstance(item, dict) else None
            run_id = self.text(item.get("run_id"), 128) if isinstance(item, dict) else ""
            if (
                run_id
                and ended is not None
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                out[self.text(key, 128)] = Exemplar(run_id=run_id, value=float(value), ended_ms=ended)
        return out

    def histogram(self, hist: Mapping[str, Any], duration_buckets: tuple[float, ...]) -> tuple[Histogram, bool]:
        bounds = tuple(float(b) for b in hist["bounds"])
        counts = tuple(valid_count(c) for c in hist["counts"])
        total = float(hist["sum"])
        if (
            None in counts
            or len(counts) != len(bounds) + 1
            or not math.isfinite(total)
            or not all(map(math.isfinite, bounds))
            or any(b <= a for a, b in itertools.pairwise(bounds))
        ):
            return Histogram.empty(tuple(duration_buckets)), True
        stored = Histogram(bounds=bounds, counts=tuple(c or 0 for c in counts), sum=total)
        if bounds == tuple(duration_buckets):
            return stored, False
        rebucketed = stored.rebucket(tuple(duration_buckets))  # e.g. metrics.profile full -> lean: fewer, shared bounds
        return (Histogram.empty(tuple(duration_buckets)), True) if rebucketed is None else (rebucketed, False)


def _counts_shaped(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(g), dict) for g in ("records", "bytes", "files"))


def _status_of(value: object) -> str | None:
    return value if isinstance(value, str) and value in STATUSES else None


def _counted_from(data: Mapping[str, Any]) -> dict[str, int]:
    """The counted-id set; a file from before the count floor stored each id's ``createdAt``, kept here for
    Adobe's retention past it, so no id it held can be counted again."""
    counted = {str(k): int(v) for k, v in data["counted"].items()}
    if "count_floor_ms" not in data:
        counted = {k: v + RETENTION_MS for k, v in counted.items()}
    return counted


def state_from_json(
    data: Mapping[str, Any], duration_buckets: tuple[float, ...], now_ms: int | None = None
) -> tuple[FlowState, bool]:
    """Rebuild a flow's state, validated like a fresh answer (``now_ms`` bounds timestamps; default: the wall
    clock); the bool says the histogram was reset (the duration_buckets changed, or it was not valid).

    Raises KeyError, TypeError or ValueError on a malformed document; the store turns that into StateError.
    """
    load = _Loaded(int(time.time() * 1000) if now_ms is None else now_ms)
    completed = data.get("last_completed")
    last_run = data.get("last_run")
    histogram, reset = load.histogram(data["durations"], duration_buckets)
    seen_key = data.get("seen_key")
    last_status = _status_of(last_run.get("status")) if last_run else None
    state = FlowState(
        sandbox=str(data["sandbox"]),
        flow_id=str(data["flow_id"]),
        counting_start_ms=int(data["counting_start_ms"]),
        flow=load.flow(data.get("flow")),
        seen_key=(seen_key[0], seen_key[1]) if seen_key else None,
        newest_created_ms=load.watermark(data.get("newest_created_ms"), int(data["counting_start_ms"])),
        newest_started_ms=load.watermark(
            data.get("newest_started_ms", data.get("newest_created_ms")), int(data["counting_start_ms"])
        ),
        count_floor_ms=int(data.get("count_floor_ms", data["counting_start_ms"])),
        in_progress={load.text(k, 128): (load.ms(v[0]), load.ms(v[1])) for k, v in data["in_progress"].items()},
        counted=_counted_from(data),
        last_run=LastRun(
            id=load.text(last_run["id"], 128),
            status=last_status or "other",
            started_ms=load.ms(last_run.get("started_ms")),
            ended_ms=load.ms(last_run.get("ended_ms")),
        )
        if last_run
        else None,
        last_completed=CompletedRun(
            id=load.text(completed["id"], 128),
            ended_ms=int(completed["ended_ms"]),
            counts=load.counts(completed["counts"]),
            activities=tuple(load.activity(a) for a in completed["activities"]),
        )
        if completed
        else None,
        last_success_ms=load.ms(data.get("last_success_ms")),
        last_failure_ms=load.ms(data.get("last_failure_ms")),
        runs_total=load.tally(data["runs_total"]),
        totals=load.tally(data["totals"]),
        durations=histogram,
        error_codes=load.tally(data["error_codes"]),
        record_codes=load.record_codes(data.get("record_codes", {})),
        audiences=load.audiences(data.get("audiences", {})),
        undated_runs=data.get("undated_runs") is True,
        data_as_of_ms=load.ms(data.get("data_as_of_ms")),
        schedule_since_ms=valid_end(data.get("schedule_since_ms")),
        recent_runs=load.recent_runs(data.get("recent_runs")),
        exemplars=load.exemplars(data.get("exemplars")),
    )
    return state, reset
