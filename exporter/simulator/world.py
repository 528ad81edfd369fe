"""The simulated AEP organisation: sandboxes, flows on schedules, runs over time, and the ground truth.

Everything is derived from ``seed``: flow n of a sandbox and run k of a flow are the same in every process.
Runs exist lazily: run k of a flow appears once the clock passes its ``createdAt`` and completes once the
clock passes its end. The JSON forms follow Adobe's pages, including their variations:
- flow and run objects, legacy activity ids (``copyActivity``, ``promotionActivity``), ``windowStart``/``End``:
  "Monitor dataflows using the Flow Service API";
- UUID activity ids with names, runs with no ``durationSummary`` yet, ``failedInfo`` codes: "Standard alert
  rules";
- ``-1`` for unknown counts, run-level and activity-level error codes: "Flow run notifications";
- destination runs (``createdRecordCount`` ..., ``entitySummaries`` with ``segment:`` ids, capitalised statuses):
  "View detailed activation results" and "Monitor dataflows for destinations in the UI";
- segment-export schedules in ``transformations[].params.segmentSelectors``: "Sorting and filtering responses in
  the Flow Service API" (the path) and the Destinations API reference;
- schedule frequencies and intervals (``scheduleParams``; ``timeUnit`` for dataset exports): the "Flow Service
  API" reference.
"""

from __future__ import annotations

import datetime
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

SOURCE_SPECS = {  # connection spec ids of a few real source connectors (public docs)
    "Amazon S3": "ecadc60c-7455-4d87-84dc-2a0e293d997b",
    "Salesforce": "cb66ab34-8619-49cb-96d1-39b37ede86ea",
    "SFTP": "b7bf2577-4520-42c9-bae9-cad01560f7bc",
    "Google BigQuery": "3c9b37f8-13a6-43d8-bad3-b863b941fedd",
}
DATA_LAKE_SPEC = "c604ff05-7f1a-43c0-8e18-33bf874cb11c"
SOURCE_FLOW_SPEC = "9753525b-82c7-4dce-8a9b-5ccfce2b9876"
DESTINATION_FLOW_SPEC = "71471eba-b620-49e4-90fd-23f1fa0174d8"
DESTINATION_SPEC = "4fce964d-3f37-408f-9778-e597338a21ee"
ERROR_CODES = ("CONNECTOR-2001-500", "CONNECTOR-1001-500", "INGEST-1212-400", "MAPPER-3700-400", "133")
RUN_STATUS_JSON = {  # normalised status -> (source spelling, destination spelling)
    "success": ("success", "Success"),
    "partial_success": ("partialSuccess", "PartialSuccess"),
    "failed": ("failed", "Failed"),
    "cancelled": ("cancelled", "Cancelled"),
    "other": ("retryExhausted", "RetryExhausted"),
    "in_progress": ("inProgress", "Processing"),
}
YOUNG_MS = 5_000
"""A run younger than this (since createdAt) has no durationSummary yet, as Adobe sometimes answers."""


class SimClock:
    """Simulated time: real time times ``speed`` (0 = stands still), plus whatever ``advance`` added."""

    def __init__(self, *, start_ms: int | None = None, speed: float = 1.0) -> None:
        self._t0 = time.time()
        self._start_ms = int(self._t0 * 1000) if start_ms is None else start_ms
        self.speed = speed
        self._offset_ms = 0

    def now_ms(self) -> int:
        return self._start_ms + int((time.time() - self._t0) * 1000 * self.speed) + self._offset_ms

    def advance(self, seconds: float) -> None:
        self._offset_ms += int(seconds * 1000)


@dataclass
class SimRun:
    """One run and its whole future: what it will report when it completes (the ground truth)."""

    id: str
    flow_id: str
    sandbox: str
    index: int
    created_ms: int
    started_ms: int
    end_ms: int
    status: str  # normalised final status
    records: dict[str, int | None]
    bytes: dict[str, int | None]
    files: dict[str, int | None]
    run_errors: tuple[str, ...]
    activity_errors: tuple[str, ...]
    destination: bool
    activity_style: str
    record_codes: tuple[tuple[str, str, int], ...] = ()  # (outcome, code, count): skipped/failed/warningInfo
    # Per-audience counts: what each side's entitySummaries report, and the truth (an outcome both sides report
    # once, from the target side).
    source_entities: tuple[tuple[str, str, int], ...] = ()  # (audience_id, outcome, count)
    target_entities: tuple[tuple[str, str, int], ...] = ()
    # A completed run's payload no longer changes: rendered once ("Monitor dataflows" pages of thousands of runs
    # would otherwise render every run of the flow for each page asked).
    _done_json: tuple[tuple[Any, ...], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def completed(self, now_ms: int) -> bool:
        return now_ms >= self.end_ms

    @property
    def error_codes(self) -> list[str]:
        return sorted(set(self.run_errors) | set(self.activity_errors))

    def truth(self, now_ms: int) -> dict[str, Any]:
        done = self.completed(now_ms)
        return {
            "id": self.id,
            "flow_id": self.flow_id,
            "sandbox": self.sandbox,
            "created_ms": self.created_ms,
            "started_ms": self.started_ms,
            "end_ms": self.end_ms if done else None,
            "completed": done,
            "status": self.status if done else "in_progress",
            "records": self.records,
            "bytes": self.bytes,
            "files": self.files,
            "error_codes": self.error_codes if done else [],
            "record_codes": [list(c) for c in self.record_codes] if done else [],
            "audiences": [list(c) for c in self.audience_truth] if done else [],
            "duration_seconds": (self.end_ms - self.started_ms) / 1000.0 if done else None,
            # the end of the data it ingested: the copy activity's windowEnd (sources), the run's end (destinations)
            "data_as_of_ms": (self.end_ms if self.destination else self.created_ms) if done else None,
        }

    @property
    def window_start_ms(self) -> int:
        return self.created_ms - 3_600_000

    @property
    def audience_truth(self) -> list[tuple[str, str, int]]:
        merged = {(a, o): c for a, o, c in self.source_entities}
        merged.update({(a, o): c for a, o, c in self.target_entities})
        return [(a, o, c) for (a, o), c in sorted(merged.items())]

    def _summaries(self) -> dict[str, Any]:
        out = {}
        for key, entities in (("sourceSummaries", self.source_entities), ("targetSummaries", self.target_entities)):
            if entities:
                by_id: dict[str, dict[str, Any]] = {}
                for audience, outcome, count in entities:
                    by_id.setdefault(audience, {"id": f"segment:{audience}"})[RECORD_JSON[outcome]] = count
                out[key] = [{"id": self.flow_id, "entitySummaries": list(by_id.values())}]
        return out

    def to_json(self, now_ms: int) -> dict[str, Any]:
        """The run as ``GET /runs`` shows it at ``now_ms``; callers that change it change a copy."""
        done = self.completed(now_ms)
        key = (self.status, self.end_ms, self.started_ms, self.created_ms)
        if done and self._done_json is not None and self._done_json[0] == key:
            return self._done_json[1]
        item = self._render_json(now_ms, done)
        if done:
            self._done_json = (key, item)
        return item

    def _render_json(self, now_ms: int, done: bool) -> dict[str, Any]:
        status = RUN_STATUS_JSON[self.status if done else "in_progress"][1 if self.destination else 0]
        metrics: dict[str, Any] = {}
        if now_ms - self.created_ms >= YOUNG_MS or done:
            duration: dict[str, int] = {"startedAtUTC": self.started_ms}
            if done:
                duration["completedAtUTC"] = self.end_ms
            metrics["durationSummary"] = duration
        summary: dict[str, Any] = {"status": status}
        if done:
            if self.bytes:  # a failed activation run may have no sizeSummary at all
                metrics["sizeSummary"] = _json_counts(
                    self.bytes,
                    {
                        "input": "inputBytes",
                        "output": "outputBytes",
                        "skipped": "skippedBytes",
                        "failed": "failedBytes",
                    },
                )
            metrics["recordSummary"] = {**_json_counts(self.records, RECORD_JSON), **self._summaries()}
            for outcome, key in (("skipped", "skippedInfo"), ("failed", "failedInfo"), ("warning", "warningInfo")):
                infos = [{"code": code, "count": count} for o, code, count in self.record_codes if o == outcome]
                if infos:
                    metrics["recordSummary"][key] = infos
            if self.files:
                metrics["fileSummary"] = _json_counts(
                    self.files,
                    {
                        "input": "inputFileCount",
                        "output": "outputFileCount",
                        "failed": "failedFileCount",
                        "skipped": "skippedFileCount",
                    },
                )
            if self.run_errors:
                summary["errors"] = [{"code": c, "message": f"Simulated error {c}."} for c in self.run_errors]
        metrics["statusSummary"] = summary
        return {
            "id": self.id,
            "flowId": self.flow_id,
            "sandboxName": self.sandbox,
            "createdAt": self.created_ms,
            "updatedAt": min(now_ms, self.end_ms) if done else now_ms,
            "etag": f'"{self.id[:8]}-{int(done)}"',
            "metrics": metrics,
            "activities": self._activities(now_ms, done),
        }

    def _activities(self, now_ms: int, done: bool) -> list[dict[str, Any]]:
        if self.destination:
            names = [("Export Activity", "exportActivity")]
        else:
            names = [("Copy Activity", "copyActivity"), ("Promotion Activity", "promotionActivity")]
        out = []
        span = self.end_ms - self.started_ms
        for i, (name, legacy_id) in enumerate(names):
            a_start = self.started_ms + (span * i) // len(names)
            a_end = self.started_ms + (span * (i + 1)) // len(names)
            a_done = done or now_ms >= a_end
            last = i == len(names) - 1
            status = (
                (self.status if last else ("success" if self.status != "failed" else "failed"))
                if a_done
                else "in_progress"
            )
            act: dict[str, Any] = {
                "durationSummary": {"startedAtUTC": a_start, **({"completedAtUTC": a_end} if a_done else {})},
                "statusSummary": {"status": RUN_STATUS_JSON[status][1 if self.destination else 0]},
            }
            if legacy_id == "copyActivity" and a_done:
                # The data window the copy read, as "Monitor dataflows using the Flow Service API" shows it.
                act["durationSummary"]["extensions"] = {
                    "windowStart": self.window_start_ms,
                    "windowEnd": self.created_ms,
                }
            if self.activity_style == "legacy":
                act["id"] = legacy_id
            else:
                act["id"] = str(uuid.UUID(int=random.Random(f"{self.id}:{i}").getrandbits(128)))
                act["name"] = name
            if a_done:
                act["recordSummary"] = _json_counts(
                    self.records if last else {},
                    {"input": "inputRecordCount", "output": "outputRecordCount", "failed": "failedRecordCount"},
                )
                act["sizeSummary"] = _json_counts(self.bytes, {"input": "inputBytes", "output": "outputBytes"})
                if last and self.activity_errors:
                    act["statusSummary"]["extensions"] = {
                        "errors": [
                            {"code": c, "message": f"Simulated activity error {c}.", "recordCount": 1}
                            for c in self.activity_errors
                        ]
                    }
            out.append(act)
        return out


ACTIVATION_CODES = {
    "skipped": ("ACTIVATION_BATCH-0001-SKIP", "IDENTITY-1101-NOT-FOUND"),
    "failed": ("DESTINATION-5001-REJECTED", "DESTINATION-4290-THROTTLED"),
    "warning": ("MAPPING-2001-TRUNCATED",),
}


def _audience_ids(seed: str, flow_id: str) -> list[str]:
    """The three audiences a destination flow exports (a segment export's selectors carry the same ids)."""
    rng = random.Random(f"{seed}:{flow_id}:audiences")
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(3)]


def _audience_counts(run: SimRun, audiences: list[str], rng: random.Random) -> None:
    """entitySummaries: the source side reports each audience's input and skipped records, the target side its
    output, created, updated and skipped (the same skipped count again); a failed run may have only the source
    side."""
    source, target = [], []
    for audience in audiences:
        skipped = rng.randint(0, 20)
        source += [(audience, "input", rng.randint(0, 5_000)), (audience, "skipped", skipped)]
        target += [
            (audience, "output", rng.randint(0, 5_000)),
            (audience, "created", rng.randint(0, 1_000)),
            (audience, "updated", rng.randint(0, 1_000)),
            (audience, "skipped", skipped),
        ]
    run.source_entities = tuple(source)
    run.target_entities = () if run.status == "failed" and rng.random() < 0.5 else tuple(target)


def _activation(run: SimRun, rng: random.Random) -> None:
    """What a destination (activation) run reports besides a source run's counts, as Adobe documents it:
    identities created, updated and deleted, skipped and failed bytes, skipped files, and skippedInfo /
    failedInfo / warningInfo codes (every failed run has failedInfo); half the failed runs report their failures
    only in failedInfo and carry
    no sizeSummary. Drawn from its own generator, so no other simulated value changes."""
    output = run.records.get("output") or 0
    created = rng.randint(0, output)
    updated = rng.randint(0, output - created)
    run.records.update({"created": created, "updated": updated, "deleted": rng.randint(0, 50)})
    codes: list[tuple[str, str, int]] = []
    for outcome, choices in ACTIVATION_CODES.items():
        if (outcome == "failed" and run.status == "failed") or rng.random() < 0.3:
            codes.append((outcome, rng.choice(choices), rng.randint(1, 500)))
    run.record_codes = tuple(sorted(codes))
    if run.status == "failed" and rng.random() < 0.5:
        run.records.pop("failed", None)  # the failure shows only in failedInfo
        run.bytes = {}
        run.files["skipped"] = 0
        return
    run.bytes.update({"skipped": rng.randint(0, 10_000), "failed": rng.randint(0, 10_000)})
    run.files["skipped"] = rng.randint(0, 3)


def _segment_selectors(start_ms: int, seed: str, flow_id: str) -> list[dict[str, Any]]:
    """A segment export's audiences as Adobe documents them: no scheduleParams, one schedule per audience
    (every 3 hours until a month on, daily until two months on, and a one-time export)."""
    start = datetime.datetime.fromtimestamp(start_ms / 1000, tz=datetime.UTC).date()
    ids = iter(_audience_ids(seed, flow_id))

    def selector(frequency: str, days: int | None) -> dict[str, Any]:
        schedule: dict[str, Any] = {
            "frequency": frequency,
            "triggerType": "SCHEDULED",
            "startDate": start.isoformat(),
            "startTime": "00:00",
        }
        if days is not None:
            schedule["endDate"] = (start + datetime.timedelta(days=days)).isoformat()
        return {
            "type": "PLATFORM_SEGMENT",
            "value": {"id": next(ids), "name": f"Audience {frequency.lower()}", "schedule": schedule},
        }

    return [
        {
            "name": "GeneralTransform",
            "params": {
                "exportMode": "FIRST_FULL_THEN_INCREMENTAL",
                "segmentSelectors": {
                    "selectors": [selector("EVERY_3_HOURS", 30), selector("DAILY", 60), selector("ONCE", None)]
                },
            },
        }
    ]


RECORD_JSON = {
    "input": "inputRecordCount",
    "output": "outputRecordCount",
    "failed": "failedRecordCount",
    "skipped": "skippedRecordCount",
    "warning": "warningRecordCount",
    "created": "createdRecordCount",
    "updated": "updatedRecordCount",
    "deleted": "deletedRecordCount",
}


def _json_counts(values: dict[str, int | None], keys: dict[str, str]) -> dict[str, int]:
    """Counts as the API writes them: unknown as -1 where Adobe does that, missing ones left out."""
    out = {}
    for name, key in keys.items():
        if name not in values:
            continue
        value = values[name]
        out[key] = -1 if value is None else value
    return out


@dataclass
class SimFlow:
    """One dataflow: identity, schedule and the runs produced so far."""

    id: str
    sandbox: str
    index: int
    name: str
    kind: str
    state: str
    frequency: str | None
    interval: int | None
    schedule_s: int | None  # seconds between runs; None = one run only
    start_ms: int
    created_ms: int
    updated_ms: int
    activity_style: str
    source_spec: str
    seed: str
    runs: list[SimRun] = field(default_factory=list)
    forced_status: str | None = None
    stopped_ms: int | None = None  # disabled or deleted at this time: no run starts after it
    extra_runs: int = 0  # runs added by trigger_run, numbered after the scheduled ones
    skipped: int = 0  # scheduled runs that never started (hold)
    held: tuple[int, int] | None = None  # [from, to) ms: scheduled runs starting then do not start
    _pending: tuple[int, int] | None = None  # (k, createdAt) of the next scheduled run, so polls need no reseeding
    _json: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def run_start(self, k: int) -> int:
        return self.start_ms + k * (self.schedule_s or 0) * 1000

    def materialize(self, now_ms: int, duration_cap_s: float) -> None:
        while True:
            k = len(self.runs) - self.extra_runs + self.skipped
            if k > 0 and self.schedule_s is None:
                return
            if self._pending is not None and self._pending[0] == k and self._pending[1] > now_ms:
                return  # the next run is known not to exist yet
            start = self.run_start(k)
            if self.stopped_ms is not None and start >= self.stopped_ms:
                return
            rng = random.Random(f"{self.seed}:{self.id}:{k}")
            created = start + rng.randint(1_000, 20_000)
            if created > now_ms:
                self._pending = (k, created)
                return
            if self.held is not None and self.held[0] <= start < self.held[1]:
                self.skipped += 1  # it never started: no run, and the schedule goes on
                continue
            self.runs.append(self._make_run(k, start, created, rng, duration_cap_s))
            self.runs.sort(key=lambda r: r.created_ms)

    def trigger_run(self, now_ms: int, duration_s: float) -> SimRun:
        """An unscheduled run, started and created just now (as when someone clicks "run now")."""
        rng = random.Random(f"{self.seed}:{self.id}:extra:{self.extra_runs}")
        run = self._make_run(10_000_000 + self.extra_runs, now_ms - 2000, now_ms - 1000, rng, duration_s)
        run.end_ms = run.started_ms + int(duration_s * 1000)
        self.extra_runs += 1
        self.runs.append(run)
        self.runs.sort(key=lambda r: r.created_ms)
        return run

    def _make_run(self, k: int, start: int, created: int, rng: random.Random, cap_s: float) -> SimRun:
        destination = self.kind == "destination"
        roll = rng.random()
        status = (
            "success"
            if roll < 0.70
            else "partial_success"
            if roll < 0.82
            else "failed"
            if roll < 0.96
            else "cancelled"
            if roll < 0.98
            else "other"
        )
        if self.forced_status is not None:
            status = self.forced_status
        max_duration = max(40.0, min(cap_s, (self.schedule_s or 3600) * 0.6))
        duration_ms = int(rng.uniform(30.0, max_duration) * 1000)
        inputs = rng.randint(100, 200_000)
        failed = {
            "success": rng.choice([0, 0, 0, rng.randint(1, 5)]),
            "partial_success": max(1, inputs // 50),
            "failed": inputs,
            "cancelled": 0,
            "other": 0,
        }[status]
        records: dict[str, int | None] = {"input": inputs, "output": inputs - failed, "failed": failed}
        if rng.random() < 0.3:
            records["skipped"] = rng.randint(0, 50)
        if rng.random() < 0.2:
            records["warning"] = rng.randint(0, 20)
        in_bytes: int | None = inputs * rng.randint(150, 400)
        out_bytes: int | None = int((in_bytes or 0) * 0.7) if status != "failed" else 0
        if status == "failed" and rng.random() < 0.5:
            in_bytes = None  # Adobe's "-1": unknown
            records["input"] = None
        files: dict[str, int | None] = {"input": rng.randint(1, 5), "output": 1 if status != "failed" else 0}
        if status == "failed":
            files["failed"] = files["input"]
        run_errors: tuple[str, ...] = ()
        act_errors: tuple[str, ...] = ()
        if status == "failed":
            run_errors = (rng.choice(ERROR_CODES[:2]),)
            act_errors = (rng.choice(ERROR_CODES[2:]),)
        elif status == "partial_success" or (status == "success" and failed):
            act_errors = ("INGEST-1212-400", "MAPPER-3700-400")
        if destination and status == "failed" and rng.random() < 0.5:
            run_errors = ("ACTIVATION_BATCH-0000-SKIP",)
        run_id = str(uuid.UUID(int=rng.getrandbits(128)))
        run = SimRun(
            id=run_id,
            flow_id=self.id,
            sandbox=self.sandbox,
            index=k,
            created_ms=created,
            started_ms=start,
            end_ms=start + duration_ms,
            status=status,
            records=records,
            bytes={"input": in_bytes, "output": out_bytes},
            files=files,
            run_errors=run_errors,
            activity_errors=act_errors,
            destination=destination,
            activity_style=self.activity_style,
        )
        if destination:
            _activation(run, random.Random(f"{self.seed}:{self.id}:{created}:activation"))
            _audience_counts(
                run, _audience_ids(self.seed, self.id), random.Random(f"{self.seed}:{self.id}:{created}:audiences")
            )
        return run

    def visible_runs(self, now_ms: int) -> list[SimRun]:
        return [r for r in self.runs if r.created_ms <= now_ms]

    def to_json(self, now_ms: int) -> dict[str, Any]:
        visible = self.visible_runs(now_ms)
        newest_done = bool(visible) and visible[-1].completed(now_ms)
        key = (self.state, self.updated_ms, len(visible), newest_done, self.name)
        if self._json is None or self._json[0] != key:
            self._json = (key, self._render(now_ms, visible))
        return self._json[1]

    def _render(self, now_ms: int, visible: list[SimRun]) -> dict[str, Any]:
        source = self.kind == "source"
        conn_rng = random.Random(f"{self.seed}:{self.id}:conn")
        src_conn, tgt_conn = (str(uuid.UUID(int=conn_rng.getrandbits(128))) for _ in range(2))
        flow: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": f"Simulated {self.kind} dataflow",
            "flowSpec": {"id": SOURCE_FLOW_SPEC if source else DESTINATION_FLOW_SPEC, "version": "1.0"},
            "state": self.state,
            "sandboxName": self.sandbox,
            "createdAt": self.created_ms,
            "updatedAt": self.updated_ms,
            "sourceConnectionIds": [src_conn],
            "targetConnectionIds": [tgt_conn],
            "inheritedAttributes": {
                "properties": {"isSourceFlow": True} if source else {"isDestinationFlow": True},
                "sourceConnections": [{"id": src_conn, "connectionSpec": {"id": self.source_spec, "version": "1.0"}}],
                "targetConnections": [
                    {
                        "id": tgt_conn,
                        "connectionSpec": {"id": DATA_LAKE_SPEC if source else DESTINATION_SPEC, "version": "1.0"},
                    }
                ],
            },
            "runs": f"/runs?property=flowId=={self.id}",
        }
        if self.frequency == "timeUnit" and self.index % 10 == 4:
            flow["transformations"] = _segment_selectors(self.start_ms, self.seed, self.id)  # a segment export
        elif self.frequency == "timeUnit":
            flow["scheduleParams"] = {"startTime": self.start_ms // 1000, "interval": self.interval, "timeUnit": "hour"}
        elif self.frequency is not None:
            params: dict[str, Any] = {"startTime": self.start_ms // 1000, "frequency": self.frequency}
            if self.interval is not None:
                params["interval"] = self.interval if self.index % 2 else str(self.interval)
            flow["scheduleParams"] = params
        if visible:
            newest = visible[-1]
            done = newest.completed(now_ms)
            details: dict[str, Any] = {
                "id": newest.id,
                "startedAtUTC": newest.started_ms,
                "state": RUN_STATUS_JSON[newest.status if done else "in_progress"][0],
            }
            if done:
                details["completedAtUTC"] = newest.end_ms
            flow["lastRunDetails"] = details
        return flow


_SCHEDULES = (  # (frequency, interval, seconds)
    ("minute", 15, 900),
    ("minute", 30, 1800),
    ("hour", 1, 3600),
    ("hour", 2, 7200),
    ("day", 1, 86400),
    ("once", None, None),
    (None, None, 3600),  # a one-time flow; a streaming flow (no scheduleParams)
)
_NAMES = (
    "Customer Profiles",
    "Orders",
    "Loyalty Events",
    "Web Sessions",
    "Product Catalog",
    "Consents",
    "Email Engagement",
    "Call Center Cases",
    "Store Visits",
    "Subscriptions",
)


class World:
    """Every sandbox and flow of the simulated organisation; the source of the API's answers and the truth."""

    def __init__(
        self,
        *,
        seed: int = 1,
        sandboxes: tuple[str, ...] = ("prod", "dev"),
        flows_per_sandbox: int = 8,
        history_s: float = 6 * 3600,
        clock: SimClock | None = None,
        min_interval_s: int | None = None,
        max_duration_s: float = 7200.0,
    ) -> None:
        self.seed = seed
        self.clock = clock or SimClock()
        self.max_duration_s = max_duration_s
        self.flows: dict[str, dict[str, SimFlow]] = {}
        now = self.clock.now_ms()
        for sandbox in sandboxes:
            self.flows[sandbox] = {}
            for n in range(flows_per_sandbox):
                flow = self._make_flow(sandbox, n, now - int(history_s * 1000), min_interval_s)
                self.flows[sandbox][flow.id] = flow

    def _make_flow(self, sandbox: str, n: int, start_ms: int, min_interval_s: int | None) -> SimFlow:
        rng = random.Random(f"{self.seed}:{sandbox}:flow:{n}")
        kind = "destination" if n % 5 == 4 else "source"
        frequency, interval, seconds = _SCHEDULES[0] if n == 0 else rng.choice(_SCHEDULES)
        if kind == "destination":
            frequency, interval, seconds = "timeUnit", 3, 3 * 3600
        if min_interval_s is not None and seconds is not None:
            seconds = min_interval_s
            frequency, interval = "minute", max(1, min_interval_s // 60)
        spec_name = rng.choice(sorted(SOURCE_SPECS))
        offset_ms = rng.randint(0, 600_000)
        return SimFlow(
            id=str(uuid.UUID(int=rng.getrandbits(128))),
            sandbox=sandbox,
            index=n,
            name=f"{spec_name} {rng.choice(_NAMES)} {n}" if kind == "source" else f"Destination export {n}",
            kind=kind,
            state="enabled",
            frequency=frequency,
            interval=interval,
            schedule_s=seconds,
            start_ms=start_ms + offset_ms,
            created_ms=start_ms - 86_400_000,
            updated_ms=start_ms - 86_400_000,
            activity_style="legacy" if n % 2 == 0 else "uuid",
            source_spec=SOURCE_SPECS[spec_name],
            seed=str(self.seed),
        )

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def sandbox_flows(self, sandbox: str, ids: set[str] | None = None) -> list[SimFlow]:
        """The sandbox's flows (only those with these ids, when given), each with its runs up to now."""
        now = self.now_ms()
        everything = self.flows.get(sandbox, {})
        flows = list(everything.values()) if ids is None else [everything[i] for i in ids if i in everything]
        for flow in flows:
            flow.materialize(now, self.max_duration_s)
        return flows

    def trigger_runs(self, fraction: float, *, duration_s: float = 1.0, seed: int = 0) -> list[str]:
        """Start a short unscheduled run now on ``fraction`` of all flows (chosen by ``seed``); their ids."""
        rng = random.Random(f"{self.seed}:trigger:{seed}")
        chosen = []
        now = self.now_ms()
        for sandbox in sorted(self.flows):
            flows = sorted(self.flows[sandbox])
            for flow_id in rng.sample(flows, round(len(flows) * fraction)):
                flow = self.flows[sandbox][flow_id]
                flow.materialize(now, self.max_duration_s)
                flow.trigger_run(now, duration_s)
                chosen.append(flow_id)
        return chosen

    def flow(self, flow_id: str) -> SimFlow:
        for flows in self.flows.values():
            if flow_id in flows:
                return flows[flow_id]
        raise KeyError(flow_id)

    def hold(self, flow_id: str, seconds: float) -> None:
        """The flow's scheduled runs due in the next ``seconds`` do not start, as when Adobe does not start a run on
        time (what the "flow run start delay" alert of Adobe's "Standard alert rules" page is about); the flow stays
        enabled and its schedule goes on after."""
        flow = self.flow(flow_id)
        now = self.now_ms()
        flow.materialize(now, self.max_duration_s)
        flow.held = (now, now + int(seconds * 1000))

    def force_status(self, flow_id: str, status: str | None) -> None:
        """From now on, every new run of the flow ends with ``status`` (None: back to random)."""
        flow = self.flow(flow_id)
        flow.materialize(self.now_ms(), self.max_duration_s)
        flow.forced_status = status

    def set_state(self, flow_id: str, state: str) -> None:
        flow = self.flow(flow_id)
        now = self.now_ms()
        flow.materialize(now, self.max_duration_s)
        flow.state = state
        flow.updated_ms = now
        flow.stopped_ms = now if state != "enabled" else None

    def delete_flow(self, flow_id: str) -> None:
        flow = self.flow(flow_id)
        del self.flows[flow.sandbox][flow_id]

    def truth(self) -> dict[str, Any]:
        """Every run produced so far, as the API will report it once complete: what tests compare with."""
        now = self.now_ms()
        out: dict[str, Any] = {"now_ms": now, "sandboxes": {}}
        for sandbox in self.flows:
            flows = {}
            for flow in self.sandbox_flows(sandbox):
                flows[flow.id] = {
                    "name": flow.name,
                    "kind": flow.kind,
                    "state": flow.state,
                    "schedule_seconds": flow.schedule_s,
                    "runs": [r.truth(now) for r in flow.visible_runs(now)],
                }
            out["sandboxes"][sandbox] = flows
        return out
