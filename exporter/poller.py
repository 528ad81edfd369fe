"""One poll loop per sandbox: list its flows (flowlist.py), read runs only where something changed, fold them
into state (counting.py), publish.

API economy: a cycle reads the tracked flows in pages of up to 100 (``property=id==a,b,...`` or the
sandbox's discovery listing), then calls ``/runs`` only for flows that are new, whose ``lastRunDetails``
changed, or that have runs in progress, and only for runs since the flow's watermark, by the sandbox's
runs query strategy (runsquery.py: verified, never trusted). A flow that fails is marked down and keeps its
values; the others go on. The loop itself never dies. An event's ``refresh`` reads one flow the same way, never
at the same time as the cycle reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import weakref
from collections.abc import Callable

import structlog

from exporter.client import FlowServiceClient
from exporter.config import MetricsConfig, PollConfig, SandboxConfig, ShardConfig
from exporter.counting import Update, apply_runs, mark_down, new_flow_state, refresh_flow
from exporter.errors import ExporterError, NotFoundError, StateError
from exporter.flowlist import FlowLister, Survey
from exporter.logs import OnceLog, describe
from exporter.model import Flow, Run
from exporter.runsquery import RunsReader
from exporter.selfmetrics import SelfMetrics
from exporter.tracker import Tracker
from exporter.values import FlowState, Strategy

log = structlog.get_logger(__name__)

HIDDEN = "the flow was deleted, or is hidden by an access label the credential's role lacks"
NOT_LISTED = (
    "not found in the sandbox: a wrong or deleted id, or a flow hidden by an access label the credential's role "
    "lacks (Adobe answers alike for all three: a labelled flow is not listed, and GET /flows/{id} answers 404 "
    "FLOW-1439-404)"
)
"""Why a flow is not readable, in the words of Adobe's "Apply access labels to sources dataflows" page: Adobe's
answer cannot tell a missing flow from a hidden one, so the reason names both."""


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
        self.on_update: Callable[[Update], Update] | None = None  # backfill.py sees (and amends) each update
        self.flows_at_once: int | None = None  # backfill.py: a few flows' whole history in memory, not all
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
        self.flows = FlowLister(
            sandbox=sandbox,
            metrics=metrics,
            shard=shard,
            client=client,
            self_metrics=self_metrics,
            once=self._once,
            clock=clock,
        )

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
            flows, missing = await self.flows.tracked()
        except ExporterError as exc:
            self._fail(exc, started)
            return False
        selected, dropped = self.flows.select(flows)
        wanted = {f.id for f in selected} | set(missing)
        await self._tracker.remove([k for k in self._tracker.keys(name) if k[1] not in wanted])
        for flow_id in missing:
            self._flow_down(flow_id, None, NOT_LISTED)
        at_once = asyncio.Semaphore(self.flows_at_once or max(1, len(selected)))

        async def update(flow: Flow, labels: dict[str, str]) -> None:
            async with at_once:
                await self._update_flow(flow, labels)

        try:
            await asyncio.gather(*(update(flow, labels) for flow, labels in selected.items()))
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
        error = describe(exc)
        self._tracker.update_sandbox(name, polls=status.polls + 1, last_ok=False, last_error=error)
        log.warning("poll_failed", sandbox=name, error=error, error_type=type(exc).__name__)

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

    async def survey(self) -> Survey:
        """What the credential can see in this sandbox (``check-config --online``); never raises."""
        return await self.flows.survey()

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
                await self._tracker.save(refresh_flow(state, flow, int(self._clock() * 1000)))
            else:
                self._tracker.put(refresh_flow(state, flow, int(self._clock() * 1000)))
            return None
        try:
            answer = await self.runs.read(flow, state)
        except NotFoundError as exc:
            self._flow_down(flow.id, flow, f"runs not found (404{f' {exc.code}' if exc.code else ''}): {HIDDEN}")
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- whatever one flow's answer does, it costs that flow alone
            self._flow_down(flow.id, flow, describe(exc))
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
        if self.on_update is not None:
            update = self.on_update(update)
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
