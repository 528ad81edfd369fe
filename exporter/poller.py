"""One poll loop per sandbox: list flows, read runs only where something changed, fold them into state.

API economy: a cycle reads the tracked flows in pages of up to 100 (``property=id==a,b,...`` or the
sandbox's discovery listing), then calls ``/runs`` only for flows that are new, whose ``lastRunDetails``
changed, or that have runs in progress, and only for runs since the flow's watermark, by the sandbox's
runs query strategy (runsquery.py: verified, never trusted). A flow
that fails is marked down and keeps its values; the others go on. The loop itself never dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from exporter.client import FlowServiceClient
from exporter.config import MetricsConfig, PollConfig, SandboxConfig, ShardConfig
from exporter.counting import Update, apply_runs, mark_down, new_flow_state, refresh_flow
from exporter.errors import ExporterError, NotFoundError, StateError
from exporter.model import Flow, Run, clean_text, parse_flow
from exporter.runsquery import RunsReader
from exporter.selfmetrics import SelfMetrics
from exporter.tracker import Tracker
from exporter.values import FlowState, Strategy

log = structlog.get_logger(__name__)

ID_BATCH = 100


def _describe(exc: Exception) -> str:
    """An error for the landing page and logs: our own errors' text (upstream parts already redacted and
    cleaned by the client), only the type of anything else (its text could quote upstream data)."""
    if isinstance(exc, ExporterError):
        return clean_text(f"{type(exc).__name__}: {exc}", 300)
    return f"unexpected {type(exc).__name__}"


def shard_of(sandbox: str, flow_id: str, total: int) -> int:
    """The shard that owns a flow: the same in every process and version (not Python's salted hash)."""
    digest = hashlib.sha256(f"{sandbox}/{flow_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % total


class OnceLog:
    """Logs a problem the first time it is seen, so a bad payload does not flood the log every poll."""

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._limit = limit

    def first(self, *key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True


@dataclass(frozen=True, kw_only=True)
class Survey:
    """What the credential can see in one sandbox (``check-config --online``): flows by kind, how many discovery
    would track, configured ids not found; or why it could not look."""

    sandbox: str
    kinds: Mapping[str, int] = field(default_factory=dict)
    discovered: int = 0
    missing: tuple[str, ...] = ()
    error: str = ""


class SandboxPoller:
    """Polls one sandbox; ``cycle`` is one poll, ``run`` repeats it forever."""

    def __init__(
        self,
        *,
        sandbox: SandboxConfig,
        poll: PollConfig,
        metrics: MetricsConfig,
        shard: ShardConfig,
        client: FlowServiceClient,
        tracker: Tracker,
        self_metrics: SelfMetrics,
        once: OnceLog | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.poll = poll
        self.metrics = metrics
        self.shard = shard
        self._client = client
        self._tracker = tracker
        self._metrics = self_metrics
        self._once = once or OnceLog()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        for counter in (self_metrics.polls, self_metrics.poll_failures):
            counter.labels(sandbox.name)  # present at 0 from the start, so rate() and alerts see the first failure
        self_metrics.poll_interval.labels(sandbox.name).set(sandbox.interval)
        self._flow_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._wake = asyncio.Event()
        self.runs = RunsReader(
            sandbox=sandbox.name,
            client=client,
            on_change=self._strategy_changed,
            on_bad_item=self._bad_run_item,
            clock=clock,
            knowledge=tracker.meta(self._knowledge_key),
        )
        self._strategy_changed(self.runs.strategy)

    @property
    def name(self) -> str:
        return self.sandbox.name

    @property
    def _knowledge_key(self) -> str:
        return f"runs_query.{self.sandbox.name}"

    async def run(self) -> None:
        """Poll every interval (with jitter), or at once when asked (``poll_now``); cycles never overlap, and no
        error ends the loop."""
        while True:
            started = time.monotonic()
            self._wake.clear()  # asked during this cycle: one more right after it
            await self.cycle()  # never raises but CancelledError
            jitter = self.sandbox.jitter
            delay = self.sandbox.interval * (1.0 + self._rng.uniform(-jitter, jitter))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay - (time.monotonic() - started)))

    def poll_now(self) -> None:
        """Make the loop's next cycle start now (or right after the one under way)."""
        self._wake.set()

    async def cycle(self) -> bool:
        """One poll of the sandbox; True when its flows could be listed. Its results are published at the end.

        Any exception, foreseen or not, makes it a failed poll that every output shows (poll_failures_total,
        flow_up 0, the landing page); none escapes.
        """
        started = time.perf_counter()
        try:
            return await self._cycle()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- an answer nobody foresaw must still read as a failed poll
            log.error("poll_crashed", sandbox=self.name, error_type=type(exc).__name__)  # noqa: TRY400 -- a traceback could quote upstream data
            self._fail(exc, started)
            return False
        finally:
            self._tracker.publish()

    async def _cycle(self) -> bool:
        name = self.name
        self._metrics.polls.labels(name).inc()
        started = time.perf_counter()
        try:
            flows, missing = await self._list_flows()
        except ExporterError as exc:
            self._fail(exc, started)
            return False
        selected, dropped = self._select(flows)
        wanted = {f.id for f in selected} | set(missing)
        await self._tracker.remove([k for k in self._tracker.keys(name) if k[1] not in wanted])
        for flow_id in missing:
            self._flow_down(flow_id, None, "not found")
        try:
            await asyncio.gather(*(self._update_flow(flow, labels) for flow, labels in selected.items()))
        except StateError as exc:
            self._fail(exc, started)
            return False
        elapsed = time.perf_counter() - started
        now = self._clock()
        self._metrics.poll_duration.labels(name).set(elapsed)
        self._metrics.last_poll_success.labels(name).set(now)
        self._metrics.flows.labels(name).set(len(wanted))
        status = self._tracker.sandbox(name)
        self._tracker.update_sandbox(
            name,
            flows=len(wanted),
            dropped=dropped,
            polls=status.polls + 1,
            last_ok=True,
            last_success_s=now,
            last_error=None,
            runs_strategy=self.runs.strategy.value,
        )
        log.info("poll_done", sandbox=name, flows=len(wanted), seconds=round(elapsed, 3))
        return True

    def _fail(self, exc: Exception, started: float) -> None:
        name = self.name
        self._metrics.poll_failures.labels(name).inc()
        self._metrics.poll_duration.labels(name).set(time.perf_counter() - started)
        for key in self._tracker.keys(name):
            state = self._tracker.get(key)
            if state is not None:
                self._tracker.put(mark_down(state))
        status = self._tracker.sandbox(name)
        error = _describe(exc)
        self._tracker.update_sandbox(name, polls=status.polls + 1, last_ok=False, last_error=error)
        log.warning("poll_failed", sandbox=name, error=error, error_type=type(exc).__name__)

    async def _list_flows(self) -> tuple[list[Flow], list[str]]:
        """Every flow to track (discovered and configured), and configured ids the API does not know."""
        sandbox = self.sandbox
        found = await self._discover() if sandbox.discover.enabled else {}
        explicit = [ref.id for ref in sandbox.flows if ref.id not in found]
        for i in range(0, len(explicit), ID_BATCH):
            batch = explicit[i : i + ID_BATCH]
            wanted = set(batch)
            params = [("property", "id==" + ",".join(batch))]
            async for items in self._client.pages(sandbox.name, "flows", "/flows", params):
                found.update((flow.id, flow) for flow in self._parse_flows(items) if flow.id in wanted)
        missing = [ref.id for ref in sandbox.flows if ref.id not in found]
        return list(found.values()), missing

    async def _discover(self) -> dict[str, Flow]:
        """The sandbox's flows that discovery's kinds and name patterns accept."""
        discover = self.sandbox.discover
        kinds = set(discover.kinds)
        params: list[tuple[str, str]] = []
        if kinds == {"source"}:
            params.append(("property", "inheritedAttributes.properties.isSourceFlow==true"))
        elif kinds == {"destination"}:
            params.append(("property", "inheritedAttributes.properties.isDestinationFlow==true"))
        found: dict[str, Flow] = {}
        async for items in self._client.pages(self.name, "flows", "/flows", params):
            for flow in self._parse_flows(items):
                kind_ok = flow.kind in kinds or (flow.kind == "unknown" and len(kinds) == 2)
                if kind_ok and discover.accepts(flow.name):
                    found[flow.id] = flow
        return found

    async def survey(self) -> Survey:
        """List every flow of the sandbox once (no state touched); a failure is reported, never raised."""
        flows: dict[str, Flow] = {}
        try:
            async for items in self._client.pages(self.name, "flows", "/flows", []):
                flows.update((flow.id, flow) for flow in self._parse_flows(items))
        except ExporterError as exc:
            return Survey(sandbox=self.name, error=_describe(exc))
        discover = self.sandbox.discover
        return Survey(
            sandbox=self.name,
            kinds=Counter(flow.kind for flow in flows.values()),
            discovered=sum(
                1
                for f in flows.values()
                if discover.enabled and discover.accepts(f.name) and (f.kind in discover.kinds or f.kind == "unknown")
            ),
            missing=tuple(ref.id for ref in self.sandbox.flows if ref.id not in flows),
        )

    def _parse_flows(self, items: Iterable[object]) -> list[Flow]:
        flows = []
        now_ms = int(self._clock() * 1000)
        for item in items:
            try:
                flow = parse_flow(item, now_ms)
            except ExporterError as exc:
                flow_id = item.get("id") if isinstance(item, dict) else None
                if self._once.first(self.name, "flow_payload", str(flow_id), str(exc)):
                    log.warning(
                        "flow_payload_invalid", sandbox=self.name, flow_id=clean_text(str(flow_id), 64), error=str(exc)
                    )
                continue
            flows.append(flow)
            if flow.invalid_fields and self._once.first(self.name, flow.id, "flow_fields", *flow.invalid_fields):
                log.warning("flow_values_invalid", sandbox=self.name, flow_id=flow.id, fields=list(flow.invalid_fields))
        return flows

    def _select(self, flows: list[Flow]) -> tuple[dict[Flow, dict[str, str]], int]:
        """This shard's flows, capped at ``max_flows_per_sandbox``, each with its static labels; and how many
        were dropped by the cap."""
        shard, cap = self.shard, self.metrics.max_flows_per_sandbox
        mine = sorted(
            (f for f in flows if shard.total == 1 or shard_of(self.name, f.id, shard.total) == shard.index),
            key=lambda f: f.id,
        )
        dropped = max(0, len(mine) - cap)
        self._metrics.flows_dropped.labels(self.name).set(dropped)
        if dropped and self._once.first(self.name, "flows_dropped", str(dropped)):
            log.warning(
                "flows_dropped",
                sandbox=self.name,
                dropped=dropped,
                limit=cap,
                hint="raise metrics.max_flows_per_sandbox or shard the exporter",
            )
        return {f: self.sandbox.labels_for(f.id) for f in mine[:cap]}, dropped

    def _flow_down(self, flow_id: str, flow: Flow | None, reason: str) -> None:
        key = (self.name, flow_id)
        state = self._tracker.get(key) or self._new_state(flow_id)
        state = dataclasses.replace(state, labels=self.sandbox.labels_for(flow_id), flow=flow or state.flow)
        self._tracker.put(mark_down(state))
        if self._once.first(self.name, flow_id, "down", reason):
            log.warning("flow_unreadable", sandbox=self.name, flow_id=flow_id, reason=reason)

    def _new_state(self, flow_id: str) -> FlowState:
        return new_flow_state(
            sandbox=self.name,
            flow_id=flow_id,
            now_ms=int(self._clock() * 1000),
            initial_lookback=self.poll.initial_lookback,
            duration_buckets=self.metrics.duration_buckets,
        )

    async def refresh(self, flow_id: str) -> tuple[Run, ...]:
        """Read one tracked flow's runs now, as an event asks (through the same counting rule, never at the same
        time as the poll cycle reads that flow), and publish at once; the runs newly counted."""
        state = self._tracker.get((self.name, flow_id))
        if state is None or state.flow is None:
            return ()
        update = await self._update_flow(state.flow, dict(state.labels), force=True)
        self._tracker.publish()
        return update.counted if update is not None else ()

    async def _update_flow(self, flow: Flow, labels: dict[str, str], *, force: bool = False) -> Update | None:
        lock = self._flow_locks.get(flow.id)
        if lock is None:
            lock = self._flow_locks[flow.id] = asyncio.Lock()
        async with lock:  # an event's refresh and the cycle never fold the same flow at once
            return await self._update_flow_locked(flow, labels, force=force)

    async def _update_flow_locked(self, flow: Flow, labels: dict[str, str], *, force: bool) -> Update | None:
        key = (self.name, flow.id)
        stored = self._tracker.get(key)
        state = stored or self._new_state(flow.id)
        if state.labels != labels:
            state = dataclasses.replace(state, labels=labels)
        if stored is not None and not force and not state.needs_runs(flow):
            if stored.flow != flow:
                await self._tracker.save(refresh_flow(state, flow))
            else:
                self._tracker.put(refresh_flow(state, flow))
            return None
        try:
            answer = await self.runs.read(flow, state)
        except NotFoundError:
            self._flow_down(flow.id, flow, "runs not found")
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- whatever one flow's answer does, it costs that flow alone
            self._flow_down(flow.id, flow, _describe(exc))
            return None
        if self.runs.learned:  # kept before the answer's runs are counted: a restart never re-learns at a loss
            self.runs.learned = False
            await self._tracker.set_meta(self._knowledge_key, self.runs.knowledge())
        update = apply_runs(
            state,
            flow,
            answer.runs,
            now_ms=int(self._clock() * 1000),
            metrics=self.metrics,
            window=answer.window,
        )
        self._log_once(flow.id, update)
        await self._tracker.save(update.state)
        if update.counted:
            log.debug("runs_counted", sandbox=self.name, flow_id=flow.id, runs=len(update.counted))
        return update

    def _log_once(self, flow_id: str, update: Update) -> None:
        """What an answer showed that the operator should know, each once per flow."""
        if update.activities_dropped and self._once.first(self.name, flow_id, "activities_dropped"):
            log.warning(
                "activities_dropped",
                sandbox=self.name,
                flow_id=flow_id,
                dropped=update.activities_dropped,
                limit=self.metrics.max_activities_per_flow,
                hint="raise metrics.max_activities_per_flow",
            )
        for raw in update.unknown_statuses:
            if self._once.first(self.name, flow_id, "status", raw):
                log.warning("run_status_unknown", sandbox=self.name, flow_id=flow_id, status=raw[:64])
        for run in update.counted:
            if run.unknown_fields and self._once.first(self.name, flow_id, "run_fields", *run.unknown_fields):
                log.info(
                    "run_values_unknown",
                    sandbox=self.name,
                    flow_id=flow_id,
                    run_id=run.id,
                    fields=list(run.unknown_fields),
                )

    def _strategy_changed(self, strategy: Strategy) -> None:
        self._metrics.set_runs_strategy(self.name, strategy.value)
        self._tracker.update_sandbox(self.name, runs_strategy=strategy.value)

    def _bad_run_item(self, flow_id: str, error: str) -> None:
        if self._once.first(self.name, flow_id, "run_payload", error):
            log.warning("run_payload_invalid", sandbox=self.name, flow_id=flow_id, error=error)
