"""The Adobe I/O Events webhook: its own listener, serving only its path (never ``/metrics``).

- ``GET <path>?challenge=...``: the registration handshake, answered with the challenge (as JSON when the
  request asks for JSON, else as text).
- ``POST <path>``: a delivery. The body (capped at ``max_body_bytes``) must carry a valid signature:
  ``x-adobe-digital-signature-1`` / ``-2`` are base64 RSA-SHA256 (PKCS#1 v1.5) signatures of the raw body, each
  checked with the PEM public key at ``x-adobe-public-key1-path`` / ``-2-path``; a delivery is accepted when
  either verifies. Keys are fetched only from ``public_key_base_url`` (Adobe's static key host by default): a
  path with a scheme, a host, ``..``, a query or anything but ``[A-Za-z0-9._/-]`` is refused; fetched keys are
  cached. The body's ``recipient_client_id`` must be our client id. Unsigned, forged or foreign deliveries get
  401 and are counted (``rejected_signature``, ``rejected_recipient``), never applied; retries
  (``x-adobe-retry-count``) and duplicate event ids are idempotent (the router drops ids it has seen).

The signature check uses ``cryptography`` (RSA verification is not in Python's standard library).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from exporter.bodies import parse_json, read_capped
from exporter.config import WebhookConfig
from exporter.errors import DuplicateKeyError, ExporterError, PayloadError
from exporter.events import EventRouter

_KEY_PATH = re.compile(r"^/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*\.pem$")
KEY_MAX_BYTES = 16 * 1024
KEY_CACHE = 32


class KeyCache:
    """Adobe's public keys by path, fetched from the configured base only, and kept."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()

    async def get(self, path: str) -> rsa.RSAPublicKey | None:
        """The key at ``path`` under the base; None for a path that could leave it, or a key that is not RSA."""
        if not _KEY_PATH.match(path) or ".." in path:
            return None
        if path in self._keys:
            return self._keys[path]
        try:
            async with self._session.get(f"{self._base}{path}", allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    return None
                pem = await read_capped(resp, KEY_MAX_BYTES, "public key")
            key = serialization.load_pem_public_key(pem)
        except (aiohttp.ClientError, TimeoutError, ValueError, ExporterError):
            return None
        if not isinstance(key, rsa.RSAPublicKey):
            return None
        self._keys[path] = key
        if len(self._keys) > KEY_CACHE:
            self._keys.popitem(last=False)
        return key


def _verifies(key: rsa.RSAPublicKey | None, signature: str, body: bytes) -> bool:
    if key is None or not signature:
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), body, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def recipients(payload: object) -> list[object]:
    """The ``recipient_client_id`` values a delivery names: the body's own, or each event's in an array (Adobe's
    "Introduction to Adobe I/O Events Webhooks" page adds it to the payload; the array shape of "Flow run
    notifications" has no top-level object to add it to). A delivery that names none is not another client's."""
    items = payload if isinstance(payload, list) else [payload]
    return [item["recipient_client_id"] for item in items if isinstance(item, dict) and "recipient_client_id" in item]


def webhook_app(config: WebhookConfig, *, client_id: str, router: EventRouter, keys: KeyCache) -> web.Application:
    """The receiver (see the module docstring)."""

    async def challenge(request: web.Request) -> web.Response:
        value = request.query.get("challenge", "")
        if not value or len(value) > 512 or not value.isprintable():
            return web.Response(status=400, text="expected ?challenge=...")
        if "json" in request.headers.get("Accept", ""):
            return web.json_response({"challenge": value})
        return web.Response(text=value)

    async def deliver(request: web.Request) -> web.Response:
        try:
            body = await read_capped(request, config.max_body_bytes, "webhook")  # type: ignore[arg-type]
        except PayloadError:
            router.count("webhook", "invalid")
            return web.Response(status=413, text="body too large")
        headers = request.headers
        checks = [(headers.get(f"x-adobe-digital-signature-{i}", ""), headers.get(f"x-adobe-public-key{i}-path", ""))
                  for i in (1, 2)]
        verified = False
        for signature, path in checks:
            if signature and path and _verifies(await keys.get(path), signature, body):
                verified = True
                break
        if not verified:
            router.count("webhook", "rejected_signature")
            return web.Response(status=401, text="signature not valid")
        try:
            payload = parse_json(body, "webhook", strict=True)
        except DuplicateKeyError:  # which of two recipient_client_id would we believe? Neither.
            router.count("webhook", "invalid")
            return web.Response(status=400, text="duplicate keys")
        except PayloadError:  # signed by Adobe: acknowledged, or I/O Events retries it for a day and disables us
            return web.Response(text=router.count("webhook", "invalid"))
        if any(recipient != client_id for recipient in recipients(payload)):
            router.count("webhook", "rejected_recipient")
            return web.Response(status=401, text="not for this client")
        # Whatever its shape, a signed delivery for us is acknowledged; each event in it is counted.
        return web.Response(text=",".join(router.handle(payload, "webhook")) or "invalid")

    app = web.Application(client_max_size=config.max_body_bytes + 1)
    app.router.add_get(config.path, challenge)
    app.router.add_post(config.path, deliver)
    return app
