"""The live set of flow states: the one place that changes them, persists them and snapshots them.

Readers (the collector, the landing page) only ever see a :class:`Snapshot`, an immutable view that the
pollers publish at the end of each cycle (not at each flow update, so a scrape during a poll does not force a
re-render per flow); ``version`` lets the web layer cache what it rendered from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from exporter.store import Store
from exporter.values import FlowState, SandboxStatus, Snapshot


class Tracker:
    """Owns the flow states; writes through to the store before the new state becomes visible."""

    def __init__(self, store: Store, sandboxes: Iterable[str] = ()) -> None:
        self._store = store
        # Every store call (SQLite commits and WAL checkpoints fsync) runs on this one thread, off the event loop,
        # in the order the calls were made: the store is only ever used by one thread.
        self._writer = ThreadPoolExecutor(1, "state-writer")
        self._flows: dict[tuple[str, str], FlowState] = {}
        self._meta: dict[str, str] = {}
        self._sandboxes: dict[str, SandboxStatus] = {name: SandboxStatus(name=name) for name in sandboxes}
        self._version = 0  # of the flows only: what the rendered exposition depends on
        self._dirty = True
        self._snapshot = Snapshot(version=0, flows=(), sandboxes=tuple(self._sandboxes.values()))

    async def attach(
        self, opener: Callable[[], Store], duration_buckets: tuple[float, ...], now_ms: int
    ) -> tuple[list[FlowState], list[tuple[str, str]]]:
        """Open the real store and load what it holds, both on the writer thread; it replaces the in-memory
        store the tracker was made with. Returns the stored states and the keys whose histogram was reset."""

        def open_and_load() -> tuple[Store, tuple[list[FlowState], list[tuple[str, str]]]]:
            store = opener()
            try:
                return store, store.load(duration_buckets, now_ms)
            except BaseException:
                store.close()
                raise

        store, loaded = await asyncio.get_running_loop().run_in_executor(self._writer, open_and_load)
        self._store.close()
        self._store = store
        self._meta = await asyncio.get_running_loop().run_in_executor(self._writer, store.all_meta)
        return loaded

    async def purge(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete stored states that are not tracked (sandboxes no longer configured), on the writer thread."""
        doomed = list(keys)
        if doomed:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._store.delete, doomed)

    def restore(self, states: Iterable[FlowState]) -> None:
        """Take states loaded from the store (without writing them back), and publish them."""
        for state in states:
            self._flows[state.key] = state
        self._changed()
        self.publish()

    def get(self, key: tuple[str, str]) -> FlowState | None:
        return self._flows.get(key)

    def keys(self, sandbox: str) -> list[tuple[str, str]]:
        return [k for k in self._flows if k[0] == sandbox]

    def put(self, state: FlowState) -> None:
        """Replace one flow's state in memory only: for what the store does not keep (labels, ``up``) or what the
        next save will carry (a flow whose description is unchanged)."""
        if self._flows.get(state.key) == state:
            return
        self._flows[state.key] = state
        self._changed()

    async def save(self, state: FlowState) -> None:
        """Persist one flow's state, then make it current: memory never runs ahead of the file, so a counter
        Prometheus has seen can never go back after a crash (which it would take for a reset)."""
        if self._flows.get(state.key) == state:
            return
        await asyncio.get_running_loop().run_in_executor(self._writer, self._store.save, state)
        self.put(state)

    def meta(self, key: str) -> str | None:
        """A small stored value (the events journal position, what a sandbox's runs query learned), as loaded
        from the store and written since."""
        return self._meta.get(key)

    async def get_meta(self, key: str) -> str | None:
        """The same, for callers that await (the value is in memory)."""
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        """Persist a small value on the writer thread, after every flow state saved before it; then it is current."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self._store.set_meta, key, value)
        self._meta[key] = value

    def close(self) -> None:
        """Finish pending writes and release the store."""
        self._writer.shutdown(wait=True)
        self._store.close()

    async def remove(self, keys: Iterable[tuple[str, str]]) -> None:
        """Forget flows no longer tracked: deleted from the store (on the writer thread), then from view."""
        doomed = [k for k in keys if k in self._flows]
        if doomed:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._store.delete, doomed)
            for key in doomed:
                del self._flows[key]
            self._changed()

    async def set_sandboxes(self, names: Iterable[str]) -> None:
        """Track exactly these sandboxes (a reload may add or drop some); flows of dropped ones go too."""
        wanted = list(names)
        self._sandboxes = {n: self._sandboxes.get(n, SandboxStatus(name=n)) for n in wanted}
        await self.remove([k for k in self._flows if k[0] not in self._sandboxes])
        self._dirty = True
        self.publish()

    def update_sandbox(self, name: str, **changes: object) -> None:
        current = self._sandboxes.get(name, SandboxStatus(name=name))
        self._sandboxes[name] = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        self._dirty = True  # the flows (and so the version) are unchanged

    def sandbox(self, name: str) -> SandboxStatus:
        return self._sandboxes.get(name, SandboxStatus(name=name))

    def _changed(self) -> None:
        self._version += 1
        self._dirty = True

    def publish(self) -> Snapshot:
        """Make the current states visible to readers (a new snapshot only when something changed)."""
        if self._dirty:
            self._snapshot = Snapshot(
                version=self._version,
                flows=tuple(sorted(self._flows.values(), key=lambda s: s.key)),
                sandboxes=tuple(self._sandboxes.values()),
            )
            self._dirty = False
        return self._snapshot

    def snapshot(self) -> Snapshot:
        """The last published view."""
        return self._snapshot
