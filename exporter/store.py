"""Where flow states live between polls and across restarts: memory, or a SQLite file.

The SQLite store writes one transaction per flow update (state, counters and counted run ids together),
in WAL mode, so a process killed at any moment leaves either the old or the new state of each flow, never
half of one. A file that is not ours is refused with StateError and never overwritten. The file is locked
(``<path>.lock``, released by the kernel even on kill -9): a second exporter on the same ``state.path``
refuses to start and changes nothing. A directory the exporter cannot write is reported as just that.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from exporter.errors import StateError
from exporter.model import (
    RECORD_CODE_LISTS,
    RECORD_FIELDS,
    Activity,
    Counts,
    Flow,
    LastRunDetails,
    clean_text,
    plausible_ms,
    snake_case,
    valid_count,
    valid_seconds,
)
from exporter.schedules import valid_end, valid_interval
from exporter.statuses import STATUSES
from exporter.values import RETENTION_MS, CompletedRun, FlowState, Histogram, LastRun

APPLICATION_ID = 0x41455046  # "AEPF": marks the file as ours (PRAGMA application_id)
SCHEMA_VERSION = 1


# --- the state codec: FlowState <-> JSON, validated like a fresh answer on the way in ----------------------


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
    )
    return state, reset


class Store(Protocol):
    """Persistence of flow states, keyed by (sandbox, flow_id)."""

    def load(
        self, duration_buckets: tuple[float, ...], now_ms: int | None = None
    ) -> tuple[list[FlowState], list[tuple[str, str]]]:
        """Every stored state (validated as a fresh answer would be; ``now_ms`` bounds timestamps), and the keys
        whose histogram was reset (the duration_buckets changed, or it was not valid)."""

    def save(self, state: FlowState) -> None:
        """Persist one flow's state atomically."""

    def delete(self, keys: Iterable[tuple[str, str]]) -> None:
        """Forget flows that are no longer tracked."""

    def get_meta(self, key: str) -> str | None:
        """A small value kept beside the flows (the events journal position, what a sandbox's runs query learned)."""

    def all_meta(self) -> dict[str, str]:
        """Every small value kept beside the flows."""

    def set_meta(self, key: str, value: str) -> None:
        """Persist a small value atomically."""

    def close(self) -> None:
        """Release the file."""


class MemoryStore:
    """No persistence: state lives as long as the process (``state.path: null``)."""

    def __init__(self) -> None:
        self._meta: dict[str, str] = {}

    def load(
        self,
        duration_buckets: tuple[float, ...],  # noqa: ARG002
        now_ms: int | None = None,  # noqa: ARG002
    ) -> tuple[list[FlowState], list[tuple[str, str]]]:
        return [], []

    def save(self, state: FlowState) -> None:  # noqa: ARG002
        return None

    def delete(self, keys: Iterable[tuple[str, str]]) -> None:  # noqa: ARG002
        return None

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def all_meta(self) -> dict[str, str]:
        return dict(self._meta)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def close(self) -> None:
        return None


class SqliteStore:
    """Flow states in one SQLite file; see the module docstring for the guarantees."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(self._unwritable(exc)) from exc
        self._lock_fd = self._lock()
        try:
            # Used by one thread at a time: the tracker's writer thread once the exporter runs.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            self._unlock()
            raise StateError(f"cannot open state file {self.path}: {exc}") from exc
        try:
            self._check_and_init()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._unlock()
            if _is_permission_problem(exc, self.path):
                raise StateError(self._unwritable(exc)) from exc
            raise StateError(f"state file {self.path} is not a SQLite database of this exporter: {exc}") from exc
        except StateError:
            self._db.close()
            self._unlock()
            raise

    def _unwritable(self, exc: BaseException) -> str:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return (
            f"cannot write the state file {self.path}: {reason}. The exporter's user needs write access to "
            f"{self.path.parent} (for the file and its -wal, -shm and .lock files); or set state.path "
            "elsewhere, or to null for no persistence"
        )

    def _lock(self) -> int:
        """An exclusive lock on ``<path>.lock`` for the life of this store; StateError when another holds it."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(self._unwritable(exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"state file {self.path} is in use by another aep-flow-exporter (pid {holder}); "
                "each exporter needs its own state.path (shards too)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

    def _check_and_init(self) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id != APPLICATION_ID and (tables or app_id != 0):
            raise StateError(
                f"state file {self.path} belongs to another program (application_id {app_id:#x}); "
                "refusing to touch it: point state.path at a file of its own"
            )
        if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema {version}, newer than this exporter's "
                f"{SCHEMA_VERSION}: upgrade the exporter or use another file"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL this survives a killed process; no fsync per commit
        if app_id == 0:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "CREATE TABLE flows (sandbox TEXT NOT NULL, flow_id TEXT NOT NULL, state TEXT NOT NULL, "
                "PRIMARY KEY (sandbox, flow_id)) WITHOUT ROWID"
            )
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        elif "flows" not in tables:
            raise StateError(f"state file {self.path} is damaged: its flows table is missing")
        if "meta" not in tables:  # added beside flows (the events journal position); older files gain it here
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StateError(f"state file {self.path} is corrupt ({check}); move it away to start afresh")

    def load(
        self, duration_buckets: tuple[float, ...], now_ms: int | None = None
    ) -> tuple[list[FlowState], list[tuple[str, str]]]:
        states: list[FlowState] = []
        resets: list[tuple[str, str]] = []
        try:
            rows = self._db.execute("SELECT sandbox, flow_id, state FROM flows").fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read state file {self.path}: {exc}") from exc
        for sandbox, flow_id, text in rows:
            try:
                state, reset = state_from_json(json.loads(text), duration_buckets, now_ms)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
                raise StateError(
                    f"state file {self.path}: entry {sandbox}/{flow_id} is corrupt "
                    f"({type(exc).__name__}); move the file away to start afresh"
                ) from exc
            states.append(state)
            if reset:
                resets.append(state.key)
        return states, resets

    def save(self, state: FlowState) -> None:
        text = json.dumps(state_to_json(state), separators=(",", ":"))
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO flows (sandbox, flow_id, state) VALUES (?, ?, ?)",
                (state.sandbox, state.flow_id, text),
            )
        except sqlite3.Error as exc:
            raise StateError(f"cannot write state file {self.path}: {exc}") from exc

    def delete(self, keys: Iterable[tuple[str, str]]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM flows WHERE sandbox = ? AND flow_id = ?", list(keys))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.rollback()
            raise StateError(f"cannot write state file {self.path}: {exc}") from exc

    def get_meta(self, key: str) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read state file {self.path}: {exc}") from exc
        return None if row is None else str(row[0])

    def all_meta(self) -> dict[str, str]:
        try:
            rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read state file {self.path}: {exc}") from exc
        return {str(k): str(v) for k, v in rows}

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        except sqlite3.Error as exc:
            raise StateError(f"cannot write state file {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()
        self._unlock()


def _is_permission_problem(exc: sqlite3.DatabaseError, path: Path) -> bool:
    """SQLite says "readonly" or "unable to open" where the OS said "permission denied" (probed for real: as
    root, os.access says yes to a read-only or immutable directory)."""
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return True
    if "unable to open" not in text:
        return False
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            return False
    except OSError:
        return True


def open_store(path: str | None) -> Store:
    """A SQLite store at ``path``, or a memory store when it is None."""
    return MemoryStore() if path is None else SqliteStore(path)
