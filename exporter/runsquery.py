"""How a flow's runs are read from ``GET /runs``, and how far each answer can be trusted.

Adobe documents no ``createdAt`` filter or order on ``/runs`` (the documented time filter is
``metrics.durationSummary.startedAtUTC``; operator support is per field), and some runs carry no ``createdAt``.
So the exporter never assumes a filter or an order was applied: it checks every answer and counts only from
what it verified. Four strategies, tried in this order per sandbox:

``created_at``
    ``property=createdAt>=<bound>&orderby=-createdAt``: the cheapest, when Adobe honours it.
``started_at``
    ``property=metrics.durationSummary.startedAtUTC><bound - 1>`` (the documented filter and operator).
``newest_first``
    no time filter: pages in Adobe's default order (newest first), stopped once a page reaches below the bound,
    as long as every ``createdAt`` seen so far was in descending order.
``full``
    no time filter, every page (at most ``client.MAX_PAGES``).

A strategy is given up for the sandbox, once, logged once, when it is shown not to work: a 400 for its filter
(proven by the next strategy succeeding for the same flow, so one flow's odd 400 cannot demote a sandbox), an
answer with runs outside its bound (filter ignored), pages out of order, runs without ``createdAt`` (which a
``createdAt`` filter can never return), or a newest run (``lastRunDetails.id``) that only the next strategy
returns. While a sandbox's strategy is unconfirmed, one flow at a time probes it, so a refused filter is sent
once per sandbox and process, not once per flow. The choice is re-learned after a restart for the same cost.
An answer whose filter was ignored but which was read to the end is still used: it holds every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field

import structlog

from exporter.checks import clean_text
from exporter.client import MAX_PAGES, FlowServiceClient
from exporter.errors import ApiError, ExporterError
from exporter.model import Flow, Run, parse_run
from exporter.values import EVERYTHING, NOTHING, OVERLAP_MS, FlowState, Strategy, Window

log = structlog.get_logger(__name__)

STARTED_AT_PATH = "metrics.durationSummary.startedAtUTC"


STRATEGIES = tuple(Strategy)
"""Every strategy, from the cheapest to the one that needs nothing of Adobe but paging."""


@dataclass(frozen=True, kw_only=True)
class Bounds:
    """What a flow's state says the next query must reach down to, and whether it has runs without createdAt.

    On first sight (no runs answer read yet) both bounds are the counting start less ``OVERLAP_MS``; after it,
    ``OVERLAP_MS`` below the newest time seen and below every run still in progress (in ``createdAt`` for the
    createdAt filter, in ``startedAtUTC`` for the documented run time filter)."""

    first_sight: bool
    created_ms: int
    started_ms: int
    undated: bool = False

    @classmethod
    def of(cls, state: FlowState) -> Bounds:
        first_sight = state.newest_created_ms is None
        return cls(
            first_sight=first_sight,
            created_ms=_lower_bound(state, None if first_sight else state.newest_created_ms, 0),
            started_ms=_lower_bound(state, None if first_sight else state.newest_started_ms, 1),
            undated=state.undated_runs,
        )


def _lower_bound(state: FlowState, newest: int | None, index: int) -> int:
    if newest is None:
        return max(state.counting_start_ms - OVERLAP_MS, 0)
    bound = newest - OVERLAP_MS
    for times in state.in_progress.values():
        value = times[index]
        if value is not None:
            bound = min(bound, value)
    return max(bound, 0)


@dataclass(kw_only=True)
class Answer:
    """One verified runs answer: the flow's runs, what it covers, and what it showed about the strategies."""

    strategy: Strategy
    runs: list[Run] = field(default_factory=list)
    window: Window = NOTHING
    truncated: bool = False
    failed: dict[Strategy, str] = field(default_factory=dict)  # proven by this answer alone

    def find(self, run_id: str) -> Run | None:
        return next((r for r in self.runs if r.id == run_id), None)


class RunsReader:
    """Reads runs for one sandbox, remembering what it learned there (which strategies failed and why, which are
    confirmed, whether the sandbox has runs without createdAt): :meth:`knowledge` is what the state file keeps, so
    a restart starts where the last process stopped, never re-learning at the cost of a run."""

    def __init__(
        self,
        *,
        sandbox: str,
        client: FlowServiceClient,
        on_change: Callable[[Strategy], None] = lambda _s: None,
        on_bad_item: Callable[[str, str], None] = lambda _f, _e: None,
        clock: Callable[[], float] = time.time,
        knowledge: str | None = None,
    ) -> None:
        self.sandbox = sandbox
        self._clock = clock
        self._client = client
        self._failed, self._confirmed, self._undated = _known(knowledge)
        self.learned = False  # knowledge changed since it was last taken to be kept
        self._probe = asyncio.Lock()
        self._on_change = on_change
        self._on_bad_item = on_bad_item
        self._unlisted: set[tuple[str, str]] = set()

    def knowledge(self) -> str:
        """What this reader learned, as the state file keeps it (JSON)."""
        return json.dumps(
            {
                "failed": {s.value: reason for s, reason in self._failed.items()},
                "confirmed": sorted(s.value for s in self._confirmed),
                "undated": self._undated,
            },
            sort_keys=True,
        )

    @property
    def strategy(self) -> Strategy:
        """The strategy incremental reads use now: the first one not shown to fail."""
        return next(s for s in STRATEGIES if s not in self._failed)

    def _candidates(self, bounds: Bounds) -> list[Strategy]:
        """The strategies to try for this flow, best first. A createdAt filter can never return a run without
        createdAt, so it is not used for a flow seen for the first time (whose runs are not known yet) or one known
        to have such runs."""
        skip = {Strategy.CREATED_AT} if bounds.first_sight or bounds.undated else set()
        start = STRATEGIES.index(self.strategy)
        return [s for s in STRATEGIES[start:] if s not in self._failed and s not in skip]

    def _needs_probe(self, bounds: Bounds) -> bool:
        first = self._candidates(bounds)[0]
        return first.filters_time and first not in self._confirmed

    async def read(self, flow: Flow, state: FlowState) -> Answer:
        """The runs of ``flow`` down to what its state needs, by the best strategy that works here.

        Raises ApiError (or another ExporterError) when no strategy can read the flow; the caller marks it down.
        """
        bounds = Bounds.of(state)
        if self._needs_probe(bounds):
            async with self._probe:
                if self._needs_probe(bounds):
                    return await self._read(flow, state, bounds)
        return await self._read(flow, state, bounds)

    async def _read(self, flow: Flow, state: FlowState, bounds: Bounds) -> Answer:
        refusals: list[tuple[Strategy, str]] = []
        misses: list[tuple[Strategy, Window]] = []
        refused: ApiError | None = None
        fallback: Answer | None = None
        for strategy in self._candidates(bounds):
            if strategy in self._failed:
                continue
            try:
                answer = await self._fetch(strategy, flow, bounds)
            except ApiError as exc:
                if exc.status != 400 or not strategy.filters_time:
                    raise
                refused = exc
                refusals.append((strategy, f"refused ({exc.code or 'HTTP 400'})"))
                continue
            self._learn(answer)
            if self._misses(answer, flow, bounds, state):
                misses.append((strategy, answer.window))
                fallback = answer
                continue
            self._settle(answer, flow, refusals, misses)
            return answer
        if fallback is not None:  # no strategy lists lastRunDetails' run: Adobe's data, not our query
            self._settle(fallback, flow, refusals, [])
            newest = flow.last_run.id if flow.last_run is not None else ""
            if (flow.id, newest) not in self._unlisted:
                self._unlisted.add((flow.id, newest))
                log.warning("newest_run_not_listed", sandbox=self.sandbox, flow_id=flow.id, run_id=newest)
            return fallback
        if refused is not None:
            raise refused
        raise ExporterError(f"runs of flow {flow.id}: no query strategy left")  # pragma: no cover -- FULL never fails

    def _learn(self, answer: Answer) -> None:
        """What an answer alone proves: the strategies it showed to fail, and runs without createdAt here."""
        for failed, reason in answer.failed.items():
            self._give_up(failed, reason)
        if not self._undated and any(run.created_at_ms is None for run in answer.runs):
            self._undated = self.learned = True

    def _settle(
        self, answer: Answer, flow: Flow, refusals: list[tuple[Strategy, str]], misses: list[tuple[Strategy, Window]]
    ) -> None:
        """An answer came back: the refusals before it are proven (the flow itself is readable), and so is each
        miss whose window the newest run's own times fall in."""
        for strategy, reason in refusals:
            self._give_up(strategy, reason)
        newest = answer.find(flow.last_run.id) if flow.last_run is not None else None
        for strategy, window in misses:
            if newest is not None and window.covers(newest.created_at_ms, newest.started_at_ms):
                self._give_up(strategy, "missed the flow's newest run (lastRunDetails)")
        if answer.strategy not in self._failed and answer.strategy not in self._confirmed:
            self._confirmed.add(answer.strategy)
            self.learned = True

    def _give_up(self, strategy: Strategy, reason: str) -> None:
        if strategy in self._failed or strategy is Strategy.FULL:
            return
        before = self.strategy
        self._failed[strategy] = reason
        self._confirmed.discard(strategy)
        self.learned = True
        after = self.strategy
        log.warning(
            "runs_query_strategy_failed",
            sandbox=self.sandbox,
            strategy=strategy.value,
            reason=reason,
            now_using=after.value,
        )
        if after is not before:
            self._on_change(after)

    @staticmethod
    def _misses(answer: Answer, flow: Flow, bounds: Bounds, state: FlowState) -> bool:
        """Whether the flow's newest run (``lastRunDetails``) may belong in this answer but is not in it."""
        details = flow.last_run
        if details is None or answer.strategy is Strategy.FULL or answer.truncated or answer.find(details.id):
            return False
        if (
            details.id in state.counted
            or details.id in state.in_progress
            or (state.last_run is not None and state.last_run.id == details.id)
        ):
            return False  # seen before: an incremental query need not return it again
        if answer.window.field == "started":  # only a run that has started can match the filter
            return details.started_at_ms is not None and details.started_at_ms >= bounds.started_ms
        return answer.window.field is not None

    # --- one query per strategy ----------------------------------------------------------------------------

    async def _fetch(self, strategy: Strategy, flow: Flow, bounds: Bounds) -> Answer:
        if strategy is Strategy.CREATED_AT:
            return await self._filtered(
                strategy,
                flow,
                "created",
                bounds.created_ms,
                [("property", f"createdAt>={bounds.created_ms}"), ("orderby", "-createdAt")],
            )
        if strategy is Strategy.STARTED_AT:
            return await self._filtered(
                strategy,
                flow,
                "started",
                bounds.started_ms,
                [("property", f"{STARTED_AT_PATH}>{bounds.started_ms - 1}")],
            )
        # Paging may stop early only where runs without createdAt cannot hide further down: Adobe documents no
        # default order, and a store that sorts a missing key last lists them after every run that has one.
        early = strategy is Strategy.NEWEST_FIRST and not (bounds.first_sight or bounds.undated or self._undated)
        return await self._newest_first(strategy, flow, bounds.created_ms if early else None)

    async def _pages(self, flow: Flow, extra: list[tuple[str, str]], answer: Answer) -> AsyncGenerator[list[Run], None]:
        """Each page's runs of this flow (another flow's runs, from an ignored ``flowId`` filter, are dropped);
        ``answer.truncated`` says the client's page limit ended the listing."""
        params = [("property", f"flowId=={flow.id}"), *extra]
        count = 0
        async with contextlib.aclosing(self._client.pages(self.sandbox, "runs", "/runs", params)) as pages:
            async for items in pages:
                count += 1
                yield [run for run in self._parse(flow.id, items) if run.flow_id in (None, flow.id)]
        answer.truncated = count >= MAX_PAGES

    async def _filtered(
        self, strategy: Strategy, flow: Flow, field_name: str, bound: int, extra: list[tuple[str, str]]
    ) -> Answer:
        answer = Answer(strategy=strategy)
        ignored = False
        async for page in self._pages(flow, extra, answer):
            for run in page:
                value = run.created_at_ms if field_name == "created" else run.started_at_ms
                if value is None or value < bound:  # the filter could not have let this run through
                    ignored = True
            answer.runs.extend(page)
        _note_missing_created(answer)
        if ignored:
            answer.failed[strategy] = "filter ignored: runs outside the bound came back"
            answer.window = NOTHING if answer.truncated else EVERYTHING  # not applied: the answer holds every run
        else:
            answer.window = NOTHING if answer.truncated else Window(field=field_name, bound=bound)
        return answer

    async def _newest_first(self, strategy: Strategy, flow: Flow, floor: int | None) -> Answer:
        answer = Answer(strategy=strategy)
        previous: int | None = None
        ordered = True
        stopped = False
        async with contextlib.aclosing(self._pages(flow, [], answer)) as pages:
            async for page in pages:
                answer.runs.extend(page)
                for run in page:
                    created = run.created_at_ms
                    if created is None:
                        continue  # its place in the order cannot be checked; the server orders by its own time
                    if previous is not None and created > previous:
                        ordered = False
                    previous = created
                if floor is not None and ordered and previous is not None and previous < floor:
                    stopped = True
                    break
        _note_missing_created(answer)
        if not ordered and strategy is Strategy.NEWEST_FIRST:
            answer.failed[Strategy.NEWEST_FIRST] = "pages not in newest-first order"
        if stopped:
            answer.window = Window(field="created", bound=floor if floor is not None else 0)
        else:
            answer.window = NOTHING if answer.truncated else EVERYTHING
        return answer

    def _parse(self, flow_id: str, items: Iterable[object]) -> list[Run]:
        runs = []
        now_ms = int(self._clock() * 1000)
        for item in items:
            try:
                runs.append(parse_run(item, now_ms))
            except ExporterError as exc:
                self._on_bad_item(flow_id, str(exc))
        return runs


def _known(text: str | None) -> tuple[dict[Strategy, str], set[Strategy], bool]:
    """What a state file says a sandbox's runs query learned, validated (an unknown strategy or a value that is
    not the right type is dropped: the reader then learns it again)."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    values = {s.value: s for s in STRATEGIES}
    failed_raw = data.get("failed")
    failed = {
        values[k]: clean_text(v, 200)
        for k, v in (failed_raw.items() if isinstance(failed_raw, dict) else ())
        if k in values and values[k] is not Strategy.FULL and isinstance(v, str)
    }
    confirmed_raw = data.get("confirmed")
    confirmed = {
        values[k]
        for k in (confirmed_raw if isinstance(confirmed_raw, list) else ())
        if isinstance(k, str) and k in values and values[k] not in failed
    }
    return failed, confirmed, data.get("undated") is True


def _note_missing_created(answer: Answer) -> None:
    if any(run.created_at_ms is None for run in answer.runs):
        answer.failed.setdefault(Strategy.CREATED_AT, "runs without createdAt (a createdAt filter never returns them)")
