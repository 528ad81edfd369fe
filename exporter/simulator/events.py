"""The simulator's Adobe I/O Events: a journal of its runs' outcomes, and signed webhook deliveries, as Adobe's
pages document them (each behaviour names its page; where Adobe is silent, the choice is a switch in
:class:`EventFaults` so tests can try every plausible answer).

Each run that ends publishes one event, in one of the payload shapes Adobe's "Flow run notifications" page shows:
a successful run the success example (``{"event_id", "event": {<the run object>, "header": {"_adobeio":
{"eventCode": "sources_flow_run_success"}}}}``, its ``durationSummary`` in seconds as in that example), a failed
one the failure example (``[{"messages": [{..., "_eventNotificationMeta": {"type": "sources_flow_run_failed"},
"value": <the run object>}]}]``, no event id). A share of runs are followed by a data ingestion notification
(Adobe's "Data ingestion notifications" page: it names a dataset, no flow).

The journal (``GET /events/journal``) follows Adobe's "Journaling API" page: no parameters reads from the oldest
event kept; ``since=<position>`` reads the events after it; ``latest=true`` jumps to the end; every answer, ``200``
and ``204`` alike, carries ``Link: <...?since=<last>>; rel="next"`` (``limit`` kept in it when given); a ``204``
(nothing newer) also carries ``retry-after`` (10 s in Adobe's examples) and a second ``Link`` field with
``rel="validate"``; a position older than the 7-day retention answers ``410 Gone`` with a text body; a journal
with no events answers ``204`` to a call without parameters. Positions are opaque strings, as Adobe's are.

With a webhook URL, a background task delivers each event there, signed with the simulator's own two RSA keys
(served at ``KEY_PATHS``), with ``recipient_client_id`` added, as Adobe's "Introduction to
Adobe I/O Events Webhooks" page describes.

Faults: events lost, duplicated, reordered within a batch, or published before the run is visible as ended in
``/runs``; webhook retries of the same delivery, forged signatures and deliveries meant for another client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import json
import random
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from multidict import CIMultiDict

if TYPE_CHECKING:
    from exporter.simulator.world import SimRun, World

JOURNAL_PATH = "/events/journal"
KEY_PATHS = (
    "/prod/keys/pub-key-1b4e28ba-2fa1-11d2-883f-0016d3cca427.pem",
    "/prod/keys/pub-key-6fa459ea-ee8a-3ca4-894e-db77e160355e.pem",
)
"""Where the keys are, in the shape Adobe's webhooks page gives: ``/prod/keys/pub-key-<random-uuid>.pem``."""
RETENTION_MS = 7 * 86400 * 1000
"""Adobe's "Journaling API": a journal keeps events for up to 7 days."""
ADOBE_RETRY_AFTER = "10"
"""The ``retry-after`` of every ``204`` in Adobe's "Journaling API" examples."""
BATCH_UNIT = 3
"""Without a ``limit``, a batch holds this many events ("Journaling API": there is no predefined upper limit)."""
SHAPES = ("adobe", "envelope")
"""How a run's outcome is sent: ``adobe``, the shapes of Adobe's "Flow run notifications" examples (success
envelope, failure message batch); ``envelope``, every outcome in the success example's envelope (a failure with
event code ``sources_flow_run_failure``, which that page names)."""

STRANGER = len(KEY_PATHS)  # a key of nobody's: forged deliveries are signed with it
_ANIMALS = ("camel", "moose", "rabbit", "penguin", "otter", "heron", "lynx", "bison")


@functools.cache
def _key(index: int) -> rsa.RSAPrivateKey:  # noqa: ARG001 -- the cache key: one key per index
    """The simulator's signing keys, made once per process (RSA key generation takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class EventFaults:
    drop: float = 0.0  # share of events never published
    duplicate: float = 0.0  # share published twice (same event)
    reorder: bool = False  # a batch's entries shuffled
    early_s: float = 0.0  # published this long before the run ends (so before /runs shows it ended)
    webhook_retry: float = 0.0  # share delivered a second time with x-adobe-retry-count: 1
    webhook_forged: float = 0.0  # share followed by a delivery with a signature of another key
    webhook_foreign: float = 0.0  # share followed by a validly signed delivery for another client id
    retention_ms: int = RETENTION_MS
    retry_after: str | None = ADOBE_RETRY_AFTER  # of a 204 (None: no retry-after header at all)
    shape: str = "adobe"  # see SHAPES
    ingestion_share: float = 0.0  # share of runs followed by a data ingestion notification (no flow)
    # Adobe is silent on these; both answers are plausible:
    journal_event: str = "delivery"  # a journal entry's "event": the whole webhook body, or "inner" (its event)
    links: str = "fields"  # Link header: "fields" (one field per link, as Adobe shows) or "joined" (comma-joined)
    absolute_links: bool = False  # Link targets as absolute URLs instead of Adobe's relative paths
    key_delay_s: float = 0.0  # the key host answers this late (a slow static.adobeioevents.com)


@dataclass(frozen=True)
class Published:
    at_ms: int
    position: str
    payload: Any  # what a webhook delivery carries: an object or (the failure example) an array


class SimEvents:
    """Publishes the world's run outcomes (see the module docstring)."""

    def __init__(self, world: World, *, client_id: str, org_id: str, seed: int = 1) -> None:
        self.world = world
        self.client_id = client_id
        self.org_id = org_id
        self.faults = EventFaults()
        self.webhook_url: str | None = None
        self.deliveries: dict[str, int] = {}  # kind -> count, for tests
        self.key_requests = 0  # requests to the key host, for tests
        self._seed = seed
        self._rng = random.Random(f"{seed}:events")
        self._log: list[Published] = []
        self._index: dict[str, int] = {}  # position -> index in the log
        self._known: set[str] = set()
        self._delivered = 0
        self._origin = self._position(-1)  # the position "before every event": an empty journal's end

    # --- publication -------------------------------------------------------------------------------------

    def _published_at(self, run: SimRun) -> int:
        return run.end_ms - int(self.faults.early_s * 1000)

    def _position(self, index: int) -> str:
        """An opaque position like Adobe's (``animal:uuid:uuid``), stable for an index."""
        first = uuid.uuid5(uuid.NAMESPACE_URL, f"{self._seed}:journal:{index}")
        second = uuid.uuid5(uuid.NAMESPACE_URL, f"{self._seed}:journal:{index}:b")
        return f"{_ANIMALS[index % len(_ANIMALS)]}:{first}:{second}"

    def _append(self, at_ms: int, payload: Any) -> None:
        position = self._position(len(self._log))
        self._index[position] = len(self._log)
        self._log.append(Published(at_ms, position, payload))

    def refresh(self) -> list[Published]:
        """The journal as of now: every event published so far, oldest first."""
        now = self.world.now_ms()
        fresh = []
        for sandbox in self.world.flows:
            for flow in self.world.sandbox_flows(sandbox):  # each with its runs up to now
                for run in flow.visible_runs(now):
                    if run.id not in self._known and self._published_at(run) <= now:
                        fresh.append(run)
        for run in sorted(fresh, key=lambda r: (self._published_at(r), r.id)):
            self._known.add(run.id)
            if self._rng.random() < self.faults.drop:
                continue
            payload = self.payload(run)
            self._append(self._published_at(run), payload)
            if self._rng.random() < self.faults.duplicate:
                self._append(self._published_at(run), payload)
            if self._rng.random() < self.faults.ingestion_share:
                self._append(self._published_at(run), self.ingestion_payload(run))
        return self._log

    def publish(self, payload: Any) -> None:
        """Publish a payload exactly as given, now (the conformance suite replays Adobe's examples)."""
        self.refresh()
        self._append(self.world.now_ms(), payload)

    def payload(self, run: SimRun, *, shape: str | None = None) -> Any:
        """The run's outcome as Adobe's "Flow run notifications" page shows it (see SHAPES)."""
        chosen = shape or self.faults.shape
        value = copy.deepcopy(run.to_json(run.end_ms))  # the run object as /runs shows it once ended (a copy)
        value.update(sandboxId=f"sandbox-{run.sandbox}", imsOrgId=self.org_id)
        success = run.status in ("success", "partial_success")
        if chosen == "adobe" and not success:  # the failure example: a message batch, no event id, and no
            value["metrics"].get("durationSummary", {}).pop("completedAtUTC", None)  # end of the run's own
            return [
                {
                    "messages": [
                        {
                            "msgType": "eventNotification",
                            "version": "1.0",
                            "timestamp": run.end_ms,
                            "imsOrgId": self.org_id,
                            "schema": {"name": "run-notification", "version": "1.0"},
                            "provider": "FlowService",
                            "_eventNotificationMeta": {
                                "category": "Platform Notifications",
                                "type": "sources_flow_run_failed",
                            },
                            "value": value,
                        }
                    ]
                }
            ]
        duration = value["metrics"].get("durationSummary", {})
        if chosen == "adobe":  # the success example writes durationSummary in seconds
            value["metrics"]["durationSummary"] = {k: v // 1000 for k, v in duration.items()}
        value.update(
            slaCreatedAt=run.end_ms,
            processStartTime=run.end_ms,
            transformedTime=run.end_ms,
            header={
                "_adobeio": {
                    "imsOrgId": self.org_id,
                    "providerMetadata": "aep_observability_catalog_events",
                    "eventCode": "sources_flow_run_success" if success else "sources_flow_run_failure",
                }
            },
        )
        return {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"event:{run.id}")), "event": value}

    def ingestion_payload(self, run: SimRun) -> dict[str, Any]:
        """A data ingestion notification of the run's batch (Adobe's "Data ingestion notifications" example)."""
        success = run.status in ("success", "partial_success")
        return {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"ingestion:{run.id}")),
            "event": {
                "xdm:ingestionId": run.id.replace("-", "")[:26].upper(),
                "xdm:imsOrg": self.org_id,
                "xdm:completed": run.end_ms,
                "xdm:datasetId": run.flow_id.replace("-", "")[:24],
                "xdm:eventCode": "ing_load_success" if success else "ing_load_failure",
                "xdm:sandboxName": run.sandbox,
                "sentTime": str(run.end_ms),
                "processStartTime": run.end_ms,
                "transformedTime": run.end_ms,
                "header": {
                    "_adobeio": {
                        "imsOrgId": self.org_id,
                        "providerMetadata": "aep_observability_catalog_events",
                        "eventCode": "platform_event",
                    }
                },
            },
        }

    def addressed(self, payload: Any, recipient: str | None = None) -> Any:
        """The payload as delivered to a webhook: ``recipient_client_id`` added to it (to each event of an array)."""
        payload = copy.deepcopy(payload)
        for item in payload if isinstance(payload, list) else [payload]:
            if isinstance(item, dict):
                item["recipient_client_id"] = recipient or self.client_id
        return payload

    def _journal_event(self, payload: Any) -> Any:
        """A journal entry's ``event``: the whole delivery, or (``journal_event: inner``) the event inside it."""
        if self.faults.journal_event != "inner":
            return payload
        if isinstance(payload, dict) and isinstance(payload.get("event"), dict):
            return payload["event"]
        if isinstance(payload, list) and payload and isinstance(payload[0], dict):
            return payload[0].get("messages", [payload[0]])[0]
        return payload

    # --- the journal ---------------------------------------------------------------------------------------

    async def journal(self, request: web.Request) -> web.Response:
        log = self.refresh()
        now = self.world.now_ms()
        oldest = next((i for i, e in enumerate(log) if e.at_ms >= now - self.faults.retention_ms), len(log))
        query = request.query
        limit_text = query.get("limit")
        try:
            limit = int(limit_text) if limit_text is not None else None
        except ValueError:
            limit = 0
        if limit is not None and limit < 1:
            return web.Response(status=400, text="limit must be a positive integer")
        if query.get("latest") == "true":  # "Consuming the most recent events": jump to the end
            return self._nothing_new(request, len(log) - 1, limit)
        if "since" in query:
            since = query["since"]
            index = -1 if since == self._origin else self._index.get(since)
            if index is None:
                return web.Response(status=400, text=f"Invalid position {since}")
            if index + 1 < oldest:  # "Fetching expired events": 410 Gone, a text body
                return web.Response(status=410, text=f"Events at position {since} have expired.")
            start = index + 1
        else:  # "Fetching your first batch of events": the oldest available events
            start = oldest
            if start >= len(log):  # "No Events in Journal": a 204, with the Links and no retry-after
                return self._nothing_new(request, len(log) - 1, limit, retry_after=False)
        batch = list(range(start, min(start + (limit or BATCH_UNIT), len(log))))
        if not batch:
            return self._nothing_new(request, start - 1, limit)
        entries = [{"position": log[i].position, "event": self._journal_event(log[i].payload)} for i in batch]
        if self.faults.reorder:
            self._rng.shuffle(entries)
        last = log[batch[-1]].position
        return web.json_response(
            {"events": entries, "_page": {"last": last, "count": len(entries)}},
            headers=self._links(request, [(self._next(last, limit), "next")]),
        )

    def _nothing_new(
        self, request: web.Request, end: int, limit: int | None, *, retry_after: bool = True
    ) -> web.Response:
        """A ``204`` at the end of the journal: next and validate Links to the end, and (but for an empty journal
        read without parameters) ``retry-after``."""
        position = self._position(end) if end >= 0 else self._origin
        headers = self._links(
            request, [(self._next(position, limit), "next"), (f"{JOURNAL_PATH}/validate?since={position}", "validate")]
        )
        if retry_after and self.faults.retry_after is not None:
            headers["retry-after"] = self.faults.retry_after
        return web.Response(status=204, headers=headers)

    @staticmethod
    def _next(position: str, limit: int | None) -> str:
        """The next link: ``since`` the position, ``limit`` kept ("Limiting the size of the batch")."""
        return f"{JOURNAL_PATH}?since={position}" + (f"&limit={limit}" if limit is not None else "")

    def _links(self, request: web.Request, links: list[tuple[str, str]]) -> CIMultiDict[str]:
        prefix = f"{request.scheme}://{request.host}" if self.faults.absolute_links else ""
        values = [f'<{prefix}{target}>; rel="{rel}"' for target, rel in links]
        if self.faults.links == "joined":
            return CIMultiDict([("Link", ", ".join(values))])
        return CIMultiDict([("Link", value) for value in values])

    async def public_key(self, request: web.Request) -> web.Response:
        """A signing key, at the documented path shape (any other path under /prod/keys/ is a 404)."""
        self.key_requests += 1
        if self.faults.key_delay_s:
            await asyncio.sleep(self.faults.key_delay_s)
        path = request.path
        if path not in KEY_PATHS:
            return web.Response(status=404)
        key = _key(KEY_PATHS.index(path)).public_key()
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return web.Response(body=pem, content_type="application/x-pem-file")

    # --- webhook deliveries --------------------------------------------------------------------------------

    def signed(self, body: bytes, *, forged: bool = False) -> dict[str, str]:
        """Headers Adobe sends with a delivery: both signatures and where their keys are."""
        headers = {"Content-Type": "application/json"}
        for i in range(1, len(KEY_PATHS) + 1):
            signer = _key(STRANGER) if forged else _key(i - 1)
            signature = signer.sign(body, padding.PKCS1v15(), hashes.SHA256())
            headers[f"x-adobe-digital-signature-{i}"] = base64.b64encode(signature).decode()
            headers[f"x-adobe-public-key{i}-path"] = KEY_PATHS[i - 1]
        return headers

    async def deliver_loop(self, app: web.Application) -> Any:  # noqa: ARG002 -- aiohttp cleanup context
        task = asyncio.get_running_loop().create_task(self._deliver_forever(), name="simulator-webhook-deliveries")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _deliver_forever(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                if self.webhook_url:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        await self.deliver_pending(session)
                await asyncio.sleep(0.05)

    @property
    def delivered(self) -> int:
        """Journal entries delivered to the webhook so far."""
        return self._delivered

    async def deliver_pending(self, session: aiohttp.ClientSession) -> None:
        log = self.refresh()
        while self._delivered < len(log) and self.webhook_url:
            entry = log[self._delivered]
            body = json.dumps(self.addressed(entry.payload)).encode()
            await self._post(session, body, self.signed(body), "signed")
            if self._rng.random() < self.faults.webhook_retry:
                await self._post(session, body, {**self.signed(body), "x-adobe-retry-count": "1"}, "retry")
            if self._rng.random() < self.faults.webhook_forged:
                await self._post(session, body, self.signed(body, forged=True), "forged")
            if self._rng.random() < self.faults.webhook_foreign:
                foreign = json.dumps(self.addressed(entry.payload, "someone-else")).encode()
                await self._post(session, foreign, self.signed(foreign), "foreign")
            self._delivered += 1

    async def _post(self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str], kind: str) -> None:
        assert self.webhook_url is not None  # noqa: S101 -- checked by the caller
        async with session.post(
            self.webhook_url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            await resp.read()
        self.deliveries[kind] = self.deliveries.get(kind, 0) + 1
