"""Adobe I/O Events: what an event says about a run, and the refresh it asks for. Polling stays the source of
truth; an event only makes a flow's next read happen now.

What an event says (:func:`parse_events`). Adobe's pages show several shapes, and a delivery or a journal entry
may be any of them:

- one event object ``{"event_id", "event": {<the run object>, "header": {"_adobeio": {"eventCode"}}}}`` (the
  success example of Adobe's "Flow run notifications" page), or that inner event object alone (the payloads of
  Adobe's "Standard alert rules" page);
- message batches ``[{"messages": [{"_eventNotificationMeta": {"type"}, "value": <the run object>}]}]`` (the
  failure example of "Flow run notifications": no event id anywhere);
- a JSON array of any of these;
- a data ingestion notification (Adobe's "Data ingestion notifications" page, deprecated but still delivered to
  old registrations), which names a dataset and no flow: counted as ``not_a_flow`` and acknowledged.

The run id is the run object's own ``id`` (the object that carries ``flowId`` and ``metrics`` or ``activities``),
or ``flowRunId``/``runId`` (alert payloads). Times are read in milliseconds or seconds (the success example's
``durationSummary`` is in seconds). An event is deduplicated by what it says: the flow, the run and the event code
when it names a run (so the journal and the webhook telling the same thing, in different shapes, count once),
else its event id, else a digest of its content; it is never refused for lacking an id.

The refresh it asks for (:class:`EventRouter`): duplicates are dropped, an event for an untracked flow is counted
and ignored, one whose run is already counted needs no read. A tracked flow is refreshed through its sandbox
poller (``SandboxPoller.refresh``: the same counting rule, never concurrently with the cycle for that flow), so a
run is counted exactly once whoever sees it first. Events for a flow whose refresh is queued or under way join it
(a burst costs one more read, not one each). When an announced ended run is not counted yet (the event came
before ``/runs`` showed it ended), the refresh is tried again a few times, then left to the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from exporter.checks import adobe_ms, clean_text
from exporter.counting import still_countable
from exporter.logs import OnceLog
from exporter.poller import SandboxPoller
from exporter.selfmetrics import SelfMetrics
from exporter.statuses import normalize_status
from exporter.tracker import Tracker

log = structlog.get_logger(__name__)

SEEN_LIMIT = 50_000
RETRY_DELAYS = (1.0, 3.0, 10.0)
MAX_EVENTS_PER_PAYLOAD = 1000
"""Events read from one delivery or journal entry; the rest are counted as one invalid."""
_DEPTH = 6
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_GENERIC_CODES = ("platform_event",)
"""``header._adobeio.eventCode`` values that say nothing of the run (the data ingestion notification's)."""


@dataclass(frozen=True, kw_only=True)
class Event:
    """What one event says about a run: which flow (and run, sandbox) to refresh. ``key`` makes redelivery
    idempotent; ``ended_ms`` is the run's end when the payload carries it (for the lag histogram); ``final`` says
    the event announces an ended run (worth waiting for until it is counted)."""

    key: str
    flow_id: str
    run_id: str | None = None
    sandbox: str | None = None
    code: str | None = None
    ended_ms: int | None = None
    final: bool = True


@dataclass(frozen=True, kw_only=True)
class Unusable:
    """An event that asks for no refresh: ``outcome`` ``not_a_flow`` (it names no flow) or ``invalid``; ``key``
    tells a redelivery of a ``not_a_flow`` event (a duplicate) from a new one."""

    outcome: str
    reason: str
    key: str | None = None


def parse_events(payload: object, now_ms: int | None = None) -> list[Event | Unusable]:
    """Every event a delivery or journal entry holds, whatever its documented shape (see the module docstring)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    found: list[Event | Unusable] = []
    for node, event_id, code in _event_objects(payload, None, None, 0):
        if len(found) >= MAX_EVENTS_PER_PAYLOAD:
            found.append(Unusable(outcome="invalid", reason=f"over {MAX_EVENTS_PER_PAYLOAD} events in one payload"))
            break
        found.append(
            _event(node, event_id, code, now)
            if isinstance(node, dict)
            else Unusable(outcome="invalid", reason="an event is not a JSON object")
        )
    return found


def _event_objects(node: object, event_id: object, code: object, depth: int) -> Iterator[tuple[object, object, object]]:
    """(event object, the event id and code its envelope gave) for each event in ``node``."""
    if depth > _DEPTH:
        yield node, event_id, code
    elif isinstance(node, list):
        for item in node[: MAX_EVENTS_PER_PAYLOAD + 1]:
            yield from _event_objects(item, event_id, code, depth + 1)
    elif isinstance(node, dict) and isinstance(node.get("messages"), list):
        for message in node["messages"][: MAX_EVENTS_PER_PAYLOAD + 1]:
            meta = _obj(_obj(message).get("_eventNotificationMeta"))
            value = _obj(message).get("value")
            yield from _event_objects(
                value if value is not None else message, event_id, meta.get("type") or code, depth + 1
            )
    elif isinstance(node, dict) and isinstance(node.get("event"), dict):
        yield from _event_objects(node["event"], node.get("event_id") or event_id, code, depth + 1)
    else:
        yield node, event_id, code


def _event(node: dict[str, Any], event_id: object, envelope_code: object, now_ms: int) -> Event | Unusable:
    owner = _owner_of(node, ("flowId", "flow_id"), 0)
    if owner is None:
        dataset = node.get("xdm:datasetId")
        reason = "a data ingestion notification (names a dataset, no flow)" if dataset else "names no flow"
        return Unusable(outcome="not_a_flow", reason=reason, key=_key("", None, None, event_id, node))
    flow_id = _clean_id(owner.get("flowId", owner.get("flow_id")))
    if flow_id is None:
        return Unusable(outcome="invalid", reason="the flow id is not usable")
    is_run = isinstance(owner.get("metrics"), dict) or isinstance(owner.get("activities"), list)
    run_id = (
        _clean_id(owner.get("flowRunId"))
        or _clean_id(owner.get("runId"))
        or _clean_id(owner.get("run_id"))
        or (_clean_id(owner.get("id")) if is_run else None)
    )
    code = _code(node, envelope_code)
    metrics = _obj(owner.get("metrics"))
    duration = _obj(metrics.get("durationSummary"))
    status = normalize_status(_obj(metrics.get("statusSummary")).get("status"))
    sandbox = owner.get("sandboxName", node.get("sandboxName"))
    if status is not None:
        final = status not in ("in_progress", "scheduled")
    else:
        final = code is None or any(word in code.lower() for word in ("success", "fail", "error"))
    return Event(
        key=_key(flow_id, run_id, code, event_id, node),
        flow_id=flow_id,
        run_id=run_id,
        sandbox=clean_text(sandbox, 64) if isinstance(sandbox, str) and sandbox.strip() else None,
        code=code,
        ended_ms=adobe_ms(duration.get("completedAtUTC", owner.get("completedAtUTC")), now_ms),
        final=final,
    )


def _code(node: dict[str, Any], envelope_code: object) -> str | None:
    """The event code: the envelope's (message batches), else ``header._adobeio.eventCode`` unless generic, else
    any ``eventCode``/``event_code``/``xdm:eventCode`` the event carries."""
    candidates = [envelope_code, _obj(_obj(node.get("header")).get("_adobeio")).get("eventCode")]
    found: dict[str, object] = {}
    _collect(node, found, 0)
    candidates += [found.get(k) for k in ("eventCode", "event_code", "xdm:eventCode", "type")]
    for value in candidates:
        if isinstance(value, str) and value.strip() and value not in _GENERIC_CODES:
            return clean_text(value.strip(), 64)
    return None


def _key(flow_id: str, run_id: str | None, code: str | None, event_id: object, node: dict[str, Any]) -> str:
    if run_id is not None:
        return f"run:{flow_id}:{run_id}:{code or ''}"
    clean = _clean_id(event_id) or _clean_id(node.get("eventId")) or _clean_id(node.get("@id"))
    if clean is not None:
        return f"id:{clean}"
    digest = hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode("utf-8", "replace")).hexdigest()
    return f"digest:{flow_id}:{digest[:32]}"


def _owner_of(node: object, keys: tuple[str, ...], depth: int) -> dict[str, Any] | None:
    """The shallowest object (breadth first, a few levels down) that carries one of ``keys``."""
    level: list[object] = [node]
    for _ in range(_DEPTH + 1 - depth):
        following: list[object] = []
        for item in level:
            if isinstance(item, dict):
                if any(k in item for k in keys):
                    return item
                following.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                following.extend(item[:10])
        level = following
    return None


def _collect(node: object, found: dict[str, object], depth: int) -> None:
    """The first scalar value of every key, a few levels down (payloads are small)."""
    if depth > _DEPTH or not isinstance(node, dict):
        return
    for key, value in node.items():
        if isinstance(key, str) and key not in found and not isinstance(value, (dict, list)):
            found[key] = value
    for value in node.values():
        if isinstance(value, dict):
            _collect(value, found, depth + 1)
        elif isinstance(value, list):
            for item in value[:10]:
                _collect(item, found, depth + 1)


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _clean_id(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and _ID_RE.match(value.strip()) else None


class EventRouter:
    """Applies events to the pollers (see the module docstring)."""

    def __init__(
        self,
        *,
        pollers: Callable[[], Sequence[SandboxPoller]],
        tracker: Tracker,
        metrics: SelfMetrics,
        clock: Callable[[], float] = time.time,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
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

    def handle(self, payload: object, source: str) -> list[str]:
        """Take one delivery or journal entry: each event's outcome at once (applied, duplicate, already_counted,
        untracked, not_a_flow, invalid); refreshes run in the background, so a webhook answers quickly and a
        journal batch is not held up by Adobe's /runs."""
        outcomes = []
        for item in parse_events(payload, int(self._clock() * 1000)):
            if isinstance(item, Unusable):
                if item.key is not None and self._seen_before(item.key):
                    outcomes.append(self.count(source, "duplicate"))
                    continue
                if self._once.first("event_unusable", item.outcome, item.reason):
                    log.warning(
                        "event_not_a_flow" if item.outcome == "not_a_flow" else "event_invalid",
                        source=source,
                        reason=item.reason,
                    )
                outcomes.append(self.count(source, item.outcome))
            else:
                outcomes.append(self.count(source, self._route(item, source)))
        return outcomes

    def count(self, source: str, outcome: str) -> str:
        """Count one event (or delivery refused before it could be read: bad signature, another recipient)."""
        self._metrics.events.labels(source, outcome).inc()
        return outcome

    def _seen_before(self, key: str) -> bool:
        """Whether an event with this key came before (remembered for the last SEEN_LIMIT keys)."""
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        return False

    def _route(self, event: Event, source: str) -> str:
        if self._seen_before(event.key):
            return "duplicate"
        poller = self._poller_of(event)
        if poller is None:
            return "untracked"
        key = (poller.name, event.flow_id)
        if key not in self._wanted and not self._countable(key, event):
            return "already_counted"
        if key in self._wanted:  # a refresh of this flow is queued, under way or waiting: it reads (again) now
            self._wanted[key].append(event)
            self._again[key].set()
        else:
            self._wanted[key] = [event]
            self._again[key] = asyncio.Event()
            task = asyncio.get_running_loop().create_task(
                self._apply(poller, key, source), name=f"event-{event.flow_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return "applied"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until every refresh asked for so far has finished (tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _poller_of(self, event: Event) -> SandboxPoller | None:
        for poller in self._pollers():
            if event.sandbox not in (None, poller.name):
                continue
            if self._tracker.get((poller.name, event.flow_id)) is not None:
                return poller
        return None

    async def _apply(self, poller: SandboxPoller, key: tuple[str, str], source: str) -> None:
        """Refresh one flow until every ended run its events announced is counted (a burst of events for the flow
        costs one read, plus one if more came while it ran), at most ``retry_delays`` more times for runs not yet
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
                self._wanted[key] = [
                    e for e in self._wanted.get(key, []) if e.final and e.run_id is not None and self._countable(key, e)
                ]
                if not self._wanted[key]:
                    return
                delay = next(retries, None)
                if delay is None:
                    return
                with contextlib.suppress(TimeoutError):  # a new event for the flow ends the wait
                    await asyncio.wait_for(again.wait(), delay)
        finally:
            self._wanted.pop(key, None)
            self._again.pop(key, None)

    def _countable(self, key: tuple[str, str], event: Event) -> bool:
        """Whether reading the flow can change something for this event: it names no run (an alert about the
        flow), or the counting rule says its run may still be counted (``counting.still_countable``). An event
        that announces no end (a run that started) is worth one read, never a wait."""
        state = self._tracker.get(key)
        if state is None:
            return False
        return event.run_id is None or still_countable(state, event.run_id, event.ended_ms)
