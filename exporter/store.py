"""Where flow states live between polls and across restarts: memory, or a SQLite file.

The SQLite store writes one transaction per flow update (state, counters and counted run ids together),
in WAL mode, so a process killed at any moment leaves either the old or the new state of each flow, never
half of one. A file that is not ours is refused with StateError and never overwritten. The file is locked
(``<path>.lock``, released by the kernel even on kill -9): a second exporter on the same ``state.path``
refuses to start and changes nothing. A directory the exporter cannot write is reported as just that.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from exporter.errors import StateError
from exporter.statecodec import state_from_json, state_to_json
from exporter.values import FlowState

APPLICATION_ID = 0x41455046  # "AEPF": marks the file as ours (PRAGMA application_id)
SCHEMA_VERSION = 1


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
