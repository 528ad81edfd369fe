"""Adobe I/O Events: an event about a run refreshes its flow at once; polling stays the source of truth.

Two ways in, one way through:

- :class:`JournalReader` pulls the registration's journal (outbound HTTPS only, works behind a firewall):
  batches of ``{"events": [{"position", "event"}], "_page": {"last", "count"}}``, the next batch from the last
  position (``Link: rel="next"``), ``204`` with ``Retry-After`` when there is nothing new. The position is kept
  in the state file after the batch is applied, so a restart resumes there (an event applied twice is harmless:
  the refresh goes through the counting rule). A position older than the journal keeps (404/410) restarts
  from the oldest event, logged. A first start (no position) begins at the newest: polling has the history.
  Requests go through the Flow Service client (its token, rate limit, retries and request metrics).
- :func:`webhook_app` receives pushes on its own listener (see webhook.py for the checks).

:class:`EventRouter` applies either: duplicate event ids are dropped (redelivery, retries, journal and webhook
both on), an event for an untracked flow is counted and ignored, an unparseable one is logged once. A tracked
flow is refreshed through its sandbox poller (``SandboxPoller.refresh``: the same counting rule, never
concurrently with the cycle for that flow), so a run is counted exactly once whoever sees it first. Events for
a flow whose refresh is queued or under way join it (a burst costs one more read, not one each). When an
announced run is not counted yet (the event came before the run was visible as ended), the refresh is tried
again a few times, then left to the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from exporter.backoff import retry_after_seconds
from exporter.bodies import decode
from exporter.client import FlowServiceClient
from exporter.errors import PayloadError
from exporter.model import Event, clean_text, journal_position, parse_event
from exporter.poller import OnceLog, SandboxPoller
from exporter.selfmetrics import SelfMetrics
from exporter.tracker import Tracker

log = structlog.get_logger(__name__)

POSITION_KEY = "events.journal.position"
SEEN_LIMIT = 50_000
RETRY_DELAYS = (1.0, 3.0, 10.0)
JOURNAL_MAX_BYTES = 8 * 1024 * 1024
MAX_WAIT = 60.0


class EventRouter:
    """Applies events to the pollers (see the module docstring)."""

    def __init__(self, *, pollers: Callable[[], Sequence[SandboxPoller]], tracker: Tracker, metrics: SelfMetrics,
                 clock: Callable[[], float] = time.time, retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self._pollers = pollers
        self._tracker = tracker
        self._metrics = metrics
        self._clock = clock
        self._retry_delays = retry_delays
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._once = OnceLog()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wanted: dict[tuple[str, str], list[Event]] = {}  # flow -> the events that asked for its refresh
        self._again: dict[tuple[str, str], asyncio.Event] = {}  # set by an event that came during the refresh

    def handle(self, payload: object, source: str) -> str:
        """Take one event: its outcome (applied, duplicate, untracked, invalid) at once; the refresh runs in the
        background, so a webhook answers quickly and a journal batch is not held up by Adobe's /runs."""
        try:
            event = parse_event(payload, int(self._clock() * 1000))
        except PayloadError as exc:
            if self._once.first("event_invalid", str(exc)):
                log.warning("event_invalid", source=source, error=str(exc))
            return self._count(source, "invalid")
        if event.id in self._seen:
            return self._count(source, "duplicate")
        self._seen[event.id] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        poller = self._poller_of(event)
        if poller is None:
            return self._count(source, "untracked")
        key = (poller.name, event.flow_id)
        if key in self._wanted:  # a refresh of this flow is queued, under way or waiting: it reads (again) now
            self._wanted[key].append(event)
            self._again[key].set()
        else:
            self._wanted[key] = [event]
            self._again[key] = asyncio.Event()
            task = asyncio.get_running_loop().create_task(self._apply(poller, key, source),
                                                          name=f"event-{event.flow_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self._count(source, "applied")

    def reject(self, source: str, outcome: str) -> None:
        """Count a delivery refused before it could be read (bad signature, another recipient)."""
        self._count(source, outcome)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until every refresh asked for so far has finished (tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _count(self, source: str, outcome: str) -> str:
        self._metrics.events.labels(source, outcome).inc()
        return outcome

    def _poller_of(self, event: Event) -> SandboxPoller | None:
        for poller in self._pollers():
            if event.sandbox not in (None, poller.name):
                continue
            if self._tracker.get((poller.name, event.flow_id)) is not None:
                return poller
        return None

    async def _apply(self, poller: SandboxPoller, key: tuple[str, str], source: str) -> None:
        """Refresh one flow until every run its events announced is counted (a burst of events for the flow costs
        one read, plus one if more came while it ran), at most ``retry_delays`` more times for runs not yet
        visible as ended; then the poll cycle takes over."""
        retries = iter(self._retry_delays)
        again = self._again[key]
        try:
            while True:
                again.clear()
                try:
                    counted = await poller.refresh(key[1])
                except Exception as exc:  # noqa: BLE001 -- a refresh that fails costs that refresh; the poll reports it
                    log.warning("event_refresh_failed", source=source, flow_id=key[1], error_type=type(exc).__name__)
                    return
                now = self._clock()
                for run in counted:
                    if run.completed_at_ms is not None and run.completed_at_ms / 1000.0 <= now:
                        self._metrics.event_lag.labels(source).observe(now - run.completed_at_ms / 1000.0)
                if again.is_set():
                    continue
                if not self._still_wanted(key):
                    return
                delay = next(retries, None)
                if delay is None:
                    return
                with contextlib.suppress(TimeoutError):  # a new event for the flow ends the wait
                    await asyncio.wait_for(again.wait(), delay)
        finally:
            self._wanted.pop(key, None)
            self._again.pop(key, None)

    def _still_wanted(self, key: tuple[str, str]) -> list[Event]:
        """The events whose run is not counted yet and still can be: it is named, not counted, not the newest
        completed run, and did not end before the flow's count floor (such a run was counted before, or ended
        before counting started: waiting for it would only cost reads)."""
        state = self._tracker.get(key)
        if state is None:
            return []
        newest = state.last_completed.id if state.last_completed is not None else None
        wanted = [e for e in self._wanted.get(key, []) if e.run_id is not None and e.run_id not in state.counted
                  and e.run_id != newest and (e.ended_ms is None or e.ended_ms >= state.count_floor_ms)]
        self._wanted[key] = wanted
        return wanted


class JournalReader:
    """Reads the events journal forever (see the module docstring)."""

    def __init__(self, *, client: FlowServiceClient, url: str, org_id: str, router: EventRouter, tracker: Tracker,
                 metrics: SelfMetrics, wait: float, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._base = url
        self._org_id = org_id
        self._router = router
        self._tracker = tracker
        self._metrics = metrics
        self._wait = wait
        self._clock = clock
        self._next: str | None = None
        self._failures = 0

    async def run(self) -> None:
        while True:
            try:
                delay = await self.read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- the journal is a speed-up; nothing it does may end the loop
                self._failures += 1
                delay = min(MAX_WAIT, self._wait * 2 ** min(self._failures, 6))
                log.warning("journal_read_failed", error=clean_text(str(exc), 300), error_type=type(exc).__name__,
                            retry_in=round(delay, 1))
            await asyncio.sleep(delay)

    async def read_once(self) -> float:
        """One read; the seconds to wait before the next (0 while the journal has more)."""
        url = await self._url()
        status, headers, body = await self._get(url)
        if status in (404, 410) and "since=" in url:
            log.warning("journal_position_expired", status=status,
                        hint="the stored position is older than the journal keeps: starting from the oldest event")
            self._next = self._base
            await self._tracker.set_meta(POSITION_KEY, "")
            return 0.0
        if status == 204:
            self._read_ok()
            return min(MAX_WAIT, retry_after_seconds(headers.get("Retry-After")) or self._wait)
        if status != 200:
            raise PayloadError(f"journal answered HTTP {status}")
        data = await decode(body, headers.get("Content-Encoding", ""), JOURNAL_MAX_BYTES, "journal")
        if not isinstance(data, dict) or not isinstance(data.get("events", []), list):
            raise PayloadError("journal answer is not an events batch")
        return await self._apply_batch(data, url, headers)

    async def _apply_batch(self, data: dict[str, object], url: str, headers: Mapping[str, str]) -> float:
        """Hand each event to the router, then keep the batch's last position (after: at least once)."""
        position = None
        entries = data.get("events", [])
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                self._router.handle(entry.get("event"), "journal")
                position = journal_position(entry.get("position")) or position
        page = data.get("_page")
        if isinstance(page, dict):
            position = journal_position(page.get("last")) or position
        if position:
            await self._tracker.set_meta(POSITION_KEY, position)
        self._next = _link_next(headers.get("Link", ""), url) or (self._since(position) if position else None)
        self._read_ok()
        return 0.0 if entries else self._wait

    def _read_ok(self) -> None:
        self._failures = 0
        if self._metrics.journal_read is not None:
            self._metrics.journal_read.set(self._clock())

    async def _url(self) -> str:
        if self._next is not None:
            return self._next
        stored = journal_position(await self._tracker.get_meta(POSITION_KEY))  # a file edited by hand, too
        if stored:
            return self._since(stored)
        return _with_query(self._base, {"latest": "true"})

    def _since(self, position: str) -> str:
        return _with_query(self._base, {"since": position})

    async def _get(self, url: str) -> tuple[int, Mapping[str, str], bytes]:
        """The journal's answer, through the Flow Service client (same token, rate limit, retries, metrics)."""
        return await self._client.fetch("journal", url, {"x-ims-org-id": self._org_id})


def _with_query(url: str, extra: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in extra and k != "latest"]
    return urlunsplit(parts._replace(query=urlencode([*query, *extra.items()])))


def _link_next(header: str, current: str) -> str | None:
    """The ``rel="next"`` target of a Link header, on the journal's own origin only (never elsewhere)."""
    for part in header.split(","):
        if 'rel="next"' not in part or "<" not in part or ">" not in part:
            continue
        target = part[part.index("<") + 1:part.index(">")].strip()
        base = urlsplit(current)
        parsed = urlsplit(target)
        if not parsed.netloc:
            return urlunsplit(base._replace(path=parsed.path or base.path, query=parsed.query))
        if (parsed.scheme, parsed.netloc) == (base.scheme, base.netloc):
            return target
    return None
