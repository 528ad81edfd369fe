"""The simulator's Adobe I/O Events: a journal of its runs' outcomes, and signed webhook deliveries.

Each run that ends publishes one "Platform notifications" event (``sources_flow_run_success`` or
``sources_flow_run_failure``), in order of publication. The journal (``GET /events/journal``) serves them in
batches after a position, ``204`` with ``Retry-After`` when there is nothing new, ``410`` for a position
older than its retention. With a webhook URL, a background task delivers each event there, signed with the
simulator's own two RSA keys (served at ``/keys/pub-key-1.pem`` and ``-2``), as Adobe signs its deliveries.

Faults (``EventFaults``): events lost, duplicated, reordered within a batch, or published before the run is
visible as ended in ``/runs``; webhook retries of the same delivery, forged signatures and deliveries meant for
another client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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

if TYPE_CHECKING:
    from exporter.simulator.world import SimRun, World

JOURNAL_PATH = "/events/journal"
KEY_PATHS = ("/keys/pub-key-1.pem", "/keys/pub-key-2.pem")
RETENTION_MS = 7 * 86400 * 1000


STRANGER = len(KEY_PATHS)  # a key of nobody's: forged deliveries are signed with it


@functools.cache
def _key(index: int) -> rsa.RSAPrivateKey:  # noqa: ARG001 -- the cache key: one key per index
    """The simulator's signing keys, made once per process (RSA key generation takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class EventFaults:
    drop: float = 0.0  # share of events never published
    duplicate: float = 0.0  # share published twice (same event id)
    reorder: bool = False  # a batch's entries shuffled
    early_s: float = 0.0  # published this long before the run ends (so before /runs shows it ended)
    webhook_retry: float = 0.0  # share delivered a second time with x-adobe-retry-count: 1
    webhook_forged: float = 0.0  # share followed by a delivery with a signature of another key
    webhook_foreign: float = 0.0  # share followed by a validly signed delivery for another client id
    retention_ms: int = RETENTION_MS


@dataclass(frozen=True)
class Published:
    at_ms: int
    event_id: str
    payload: dict[str, Any]


class SimEvents:
    """Publishes the world's run outcomes (see the module docstring)."""

    def __init__(self, world: World, *, client_id: str, org_id: str, seed: int = 1) -> None:
        self.world = world
        self.client_id = client_id
        self.org_id = org_id
        self.faults = EventFaults()
        self.webhook_url: str | None = None
        self.deliveries: dict[str, int] = {}  # kind -> count, for tests
        self._rng = random.Random(f"{seed}:events")
        self._log: list[Published] = []
        self._known: set[str] = set()
        self._delivered = 0

    # --- publication -------------------------------------------------------------------------------------

    def _published_at(self, run: SimRun) -> int:
        return run.end_ms - int(self.faults.early_s * 1000)

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
            entry = Published(self._published_at(run), str(uuid.uuid5(uuid.NAMESPACE_URL, run.id)),
                              self.payload(run))
            self._log.append(entry)
            if self._rng.random() < self.faults.duplicate:
                self._log.append(entry)
        return self._log

    def payload(self, run: SimRun, *, recipient: str | None = None) -> dict[str, Any]:
        """An event as Adobe's Platform notifications send it (the run's outcome in ``body.data``)."""
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, run.id))
        code = "sources_flow_run_success" if run.status in ("success", "partial_success") else \
            "sources_flow_run_failure"
        return {
            "event_id": event_id,
            "recipient_client_id": recipient or self.client_id,
            "event": {
                "header": {"_adobeio": {"imsOrgId": self.org_id, "providerMetadata": "platform_notifications",
                                        "eventCode": "platform_event"}},
                "body": {"eventId": event_id, "eventCode": code, "data": {
                    "sandboxName": run.sandbox, "flowId": run.flow_id, "flowRunId": run.id,
                    "completedAtUTC": run.end_ms, "status": run.status}},
            },
        }

    # --- the journal ---------------------------------------------------------------------------------------

    async def journal(self, request: web.Request) -> web.Response:
        log = self.refresh()
        now = self.world.now_ms()
        oldest = next((i for i, e in enumerate(log) if e.at_ms >= now - self.faults.retention_ms), len(log))
        limit = max(1, min(int(request.query.get("limit", "100") or 100), 500))
        if request.query.get("latest") == "true":
            start = max(oldest, len(log) - 1)
        elif "since" in request.query:
            try:
                since = int(request.query["since"])
            except ValueError:
                return web.json_response({"error": "bad position"}, status=400)
            if since + 1 < oldest or since >= len(log):
                return web.json_response({"error": "position expired"}, status=410)
            start = since + 1
        else:
            start = oldest
        batch = list(range(start, min(start + limit, len(log))))
        if not batch:
            return web.Response(status=204, headers={"Retry-After": "1"})
        entries = [{"position": str(i), "event": log[i].payload} for i in batch]
        if self.faults.reorder:
            self._rng.shuffle(entries)
        last = str(batch[-1])
        return web.json_response({"events": entries, "_page": {"last": last, "count": len(entries)}},
                                 headers={"Link": f'<{JOURNAL_PATH}?since={last}>; rel="next"'})

    async def public_key(self, request: web.Request) -> web.Response:
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

    async def deliver_pending(self, session: aiohttp.ClientSession) -> None:
        log = self.refresh()
        while self._delivered < len(log) and self.webhook_url:
            entry = log[self._delivered]
            body = json.dumps(entry.payload).encode()
            await self._post(session, body, self.signed(body), "signed")
            if self._rng.random() < self.faults.webhook_retry:
                await self._post(session, body, {**self.signed(body), "x-adobe-retry-count": "1"}, "retry")
            if self._rng.random() < self.faults.webhook_forged:
                await self._post(session, body, self.signed(body, forged=True), "forged")
            if self._rng.random() < self.faults.webhook_foreign:
                foreign = json.dumps({**entry.payload, "recipient_client_id": "someone-else"}).encode()
                await self._post(session, foreign, self.signed(foreign), "foreign")
            self._delivered += 1

    async def _post(self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str], kind: str) -> None:
        assert self.webhook_url is not None  # noqa: S101 -- checked by the caller
        async with session.post(self.webhook_url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            await resp.read()
        self.deliveries[kind] = self.deliveries.get(kind, 0) + 1
