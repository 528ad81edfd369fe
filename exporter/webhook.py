"""The push way in to Adobe I/O Events: the webhook, on its own listener (listeners.py: header, idle and connection
limits), serving only its path (never ``/metrics``), as Adobe's "Introduction to Adobe I/O Events Webhooks" page
describes it.

- ``GET <path>?challenge=...``: the registration handshake, answered with the challenge (as JSON when the
  request asks for JSON, else as text).
- ``POST <path>``: a delivery, signed: ``x-adobe-digital-signature-1`` / ``-2`` are base64 RSA-SHA256 (PKCS#1 v1.5)
  signatures of the raw body, each checked with the PEM public key at ``x-adobe-public-key1-path`` / ``-2-path``
  (``/prod/keys/pub-key-<id>.pem`` on Adobe's static key host); a delivery is accepted when either verifies.
  A signed delivery for us (no ``recipient_client_id`` naming another client) is answered 2xx whatever its shape:
  I/O Events retries a refused delivery for a day, then disables the registration.

Forged deliveries cost nothing: everything that can be checked without a key is checked first (the body's size,
both headers of a signature present, the signature base64 of an RSA signature's length, the key path of the
documented shape), and the body must arrive within ``read_body_timeout``. Keys are fetched only from
``public_key_base_url``, on a connection pool of their own (a flood of deliveries can never hold up a Flow
Service call), one fetch at a time per key, at most ``KEY_FETCHES_PER_MINUTE`` fetches a minute; a key is kept
24 hours (Adobe's advice), a failed fetch remembered for a minute. Unsigned, forged or foreign deliveries get 401
and are counted (``rejected_signature``, ``rejected_recipient``), a body naming a key twice 400 (which of two
``recipient_client_id`` would we believe?); retries (``x-adobe-retry-count``) are idempotent (the router tells a
repeated event). The web config file's headers and certificate reload apply here as on ``/metrics``.

The signature check uses ``cryptography`` (RSA verification is not in Python's standard library).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from exporter.bodies import parse_json, read_capped
from exporter.config import WebhookConfig
from exporter.errors import DuplicateKeyError, ExporterError, PayloadError
from exporter.events import EventRouter
from exporter.transport import client_session
from exporter.web import WebSecurity, add_headers, security_middleware

log = structlog.get_logger(__name__)

KEY_PATH = re.compile(r"^/[a-z0-9-]{1,32}/keys/pub-key-[A-Za-z0-9-]{1,64}\.pem$")
"""The documented shape of a key path: ``/prod/keys/pub-key-<random-uuid>.pem``."""
KEY_MAX_BYTES = 16 * 1024
KEY_CACHE = 32
KEY_TTL = 24 * 3600.0
"""Adobe: keep a fetched key "not more than 24h"."""
KEY_FAILURE_TTL = 60.0
KEY_FETCHES_PER_MINUTE = 10
SIGNATURE_BYTES = range(128, 1025)
"""The length of an RSA signature of a 1,024- to 8,192-bit key."""


class KeyCache:
    """Adobe's public keys by path: fetched from the configured base only, on a session of their own, one fetch
    at a time per path and a few a minute in all, kept 24 h (a failure a minute)."""

    def __init__(
        self,
        base_url: str,
        *,
        proxy: str | None = None,
        ca_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._proxy = proxy
        self._ca_file = ca_file
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._keys: OrderedDict[str, tuple[rsa.RSAPublicKey | None, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[rsa.RSAPublicKey | None]] = {}
        self._fetched: deque[float] = deque()

    async def get(self, path: str) -> rsa.RSAPublicKey | None:
        """The key at ``path`` under the base; None for a path not of the documented shape, a key that could not be
        fetched (now or within the last minute), or one that is not RSA."""
        if not KEY_PATH.match(path):
            return None
        now = self._clock()
        cached = self._keys.get(path)
        if cached is not None and cached[1] > now:
            return cached[0]
        task = self._inflight.get(path)
        if task is None:
            while self._fetched and self._fetched[0] < now - 60.0:
                self._fetched.popleft()
            if len(self._fetched) >= KEY_FETCHES_PER_MINUTE:
                return None  # a flood of new key paths: no more fetches this minute (nothing is cached for it)
            self._fetched.append(now)
            task = asyncio.get_running_loop().create_task(self._fetch(path))
            self._inflight[path] = task
            task.add_done_callback(lambda _t: self._inflight.pop(path, None))
        return await asyncio.shield(task)

    async def _fetch(self, path: str) -> rsa.RSAPublicKey | None:
        if self._session is None:  # its own pool: two connections, never the Flow Service's
            self._session = client_session(headers={}, proxy=self._proxy, ca_file=self._ca_file, limit=2)
        key: rsa.RSAPublicKey | None = None
        try:
            async with self._session.get(
                f"{self._base}{path}", allow_redirects=False, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                if resp.status == 200:
                    loaded = serialization.load_pem_public_key(await read_capped(resp, KEY_MAX_BYTES, "public key"))
                    key = loaded if isinstance(loaded, rsa.RSAPublicKey) else None
        except (aiohttp.ClientError, TimeoutError, ValueError, ExporterError) as exc:
            log.warning("webhook_key_fetch_failed", path=path, error_type=type(exc).__name__)
        self._keys[path] = (key, self._clock() + (KEY_TTL if key is not None else KEY_FAILURE_TTL))
        self._keys.move_to_end(path)
        if len(self._keys) > KEY_CACHE:
            self._keys.popitem(last=False)
        return key

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _signature(value: str) -> bytes | None:
    """A signature header decoded, when it is base64 of an RSA signature's length; else None."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) in SIGNATURE_BYTES else None


def _verifies(key: rsa.RSAPublicKey | None, signature: bytes, body: bytes) -> bool:
    if key is None:
        return False
    try:
        key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def recipients(payload: object) -> list[object]:
    """The ``recipient_client_id`` values a delivery names: the body's own, or each event's in an array (Adobe's
    "Introduction to Adobe I/O Events Webhooks" page adds it to the payload; the array shape of "Flow run
    notifications" has no top-level object to add it to). A delivery that names none is not another client's."""
    items = payload if isinstance(payload, list) else [payload]
    return [item["recipient_client_id"] for item in items if isinstance(item, dict) and "recipient_client_id" in item]


def _well_formed_signatures(request: web.Request) -> list[tuple[bytes, str]]:
    """The (signature, key path) pairs of a delivery worth a key fetch: both present and well formed."""
    checks = []
    for i in (1, 2):
        raw = _signature(request.headers.get(f"x-adobe-digital-signature-{i}", ""))
        path = request.headers.get(f"x-adobe-public-key{i}-path", "")
        if raw is not None and KEY_PATH.match(path):
            checks.append((raw, path))
    return checks


async def _challenge(request: web.Request) -> web.Response:
    """The registration handshake: the challenge back, as JSON when asked for it, else as text."""
    value = request.query.get("challenge", "")
    if not value or len(value) > 512 or not value.isprintable():
        return web.Response(status=400, text="expected ?challenge=...")
    if "json" in request.headers.get("Accept", ""):
        return web.json_response({"challenge": value})
    return web.Response(text=value)


class _Receiver:
    """Takes one delivery at a time through the checks of the module docstring, cheapest first."""

    def __init__(self, config: WebhookConfig, client_id: str, router: EventRouter, keys: KeyCache) -> None:
        self._config = config
        self._client_id = client_id
        self._router = router
        self._keys = keys

    def _refuse(self, status: int, outcome: str, text: str) -> web.Response:
        self._router.count("webhook", outcome)
        response = web.Response(status=status, text=text)
        if status in (408, 413):
            response.force_close()  # the rest of the body is never read: the connection goes now
        return response

    async def deliver(self, request: web.Request) -> web.Response:
        checks = _well_formed_signatures(request)
        if not checks:  # nothing a key could verify: refused before reading or fetching anything
            return self._refuse(401, "rejected_signature", "signature not valid")
        try:
            async with asyncio.timeout(self._config.read_body_timeout):
                body = await read_capped(request, self._config.max_body_bytes, "webhook")  # type: ignore[arg-type]
        except TimeoutError:
            return self._refuse(408, "invalid", "body too slow")
        except PayloadError:
            return self._refuse(413, "invalid", "body too large")
        verified = False
        for signature, path in checks:
            if _verifies(await self._keys.get(path), signature, body):
                verified = True
                break
        if not verified:
            return self._refuse(401, "rejected_signature", "signature not valid")
        try:
            payload = parse_json(body, "webhook", strict=True)
        except DuplicateKeyError:  # which of two recipient_client_id would we believe? Neither.
            return self._refuse(400, "invalid", "duplicate keys")
        except PayloadError:  # signed by Adobe: acknowledged, or I/O Events retries it for a day and disables us
            return web.Response(text=self._router.count("webhook", "invalid"))
        if any(recipient != self._client_id for recipient in recipients(payload)):
            return self._refuse(401, "rejected_recipient", "not for this client")
        # Whatever its shape, a signed delivery for us is acknowledged; each event in it is counted.
        return web.Response(text=",".join(self._router.handle(payload, "webhook")) or "invalid")


def webhook_app(config: WebhookConfig, *, client_id: str, router: EventRouter, keys: KeyCache) -> web.Application:
    """The receiver (see the module docstring), with the web config file's headers and live certificate."""
    app = web.Application(client_max_size=config.max_body_bytes + 1)
    if config.web_config_path is not None:  # its headers on every answer, the file kept live (a new certificate)
        security = WebSecurity(config.web_config_path, config.web)
        app.middlewares.append(security_middleware(security))
        app.on_response_prepare.append(lambda _request, response: add_headers(security, response))
    app.router.add_get(config.path, _challenge)
    app.router.add_post(config.path, _Receiver(config, client_id, router, keys).deliver)
    return app
