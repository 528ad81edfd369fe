"""Adobe IMS OAuth server-to-server: one cached access token, renewed ahead of expiry, one renewal at a time.

The token is renewed once 90 % of its lifetime has passed (so at the latest 10 % before it expires), or
at once when the API says 401. Concurrent callers share the renewal in flight. Neither the client secret
nor any token is ever logged, put in an exception, or exposed: errors carry the HTTP status and IMS's
error code only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import structlog

from exporter.backoff import full_jitter
from exporter.bodies import decode, read_capped
from exporter.checks import clean_text
from exporter.errors import AuthError, PayloadError
from exporter.redaction import redactor, safe_text
from exporter.selfmetrics import SelfMetrics
from exporter.transport import describe_failure
from exporter.values import Secret

log = structlog.get_logger(__name__)

RENEW_AT_FRACTION = 0.9
IMS_MAX_BYTES = 1024 * 1024
"""A token answer is a few hundred bytes."""

IMS_HINTS = {
    "invalid_client": "Check adobe.client_id and the client secret: both come from the project's OAuth "
    "Server-to-Server credential in the Adobe Developer Console (a rotated secret must be updated "
    "here too); see docs/adobe-setup.md",
    "invalid_scope": "The credential may not ask for these scopes: copy the scopes the Developer Console lists for "
    "the credential into adobe.scopes",
    "unauthorized_client": "The credential is not allowed the client_credentials grant: use an OAuth "
    "Server-to-Server credential (docs/adobe-setup.md)",
}
"""What to do about each OAuth error IMS may answer with."""


class TokenProvider:
    """Hands out a valid bearer token; see the module docstring."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        url: str,
        client_id: str,
        client_secret: Secret,
        scopes: str,
        metrics: SelfMetrics,
        timeout: float = 30.0,
        retries: int = 2,
        backoff_base: float = 0.5,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        proxy: str | None = None,
    ) -> None:
        self._session = session
        self._url = url
        self._proxy = proxy
        self._client_id = client_id
        self._secret = client_secret
        self._scopes = scopes
        self._metrics = metrics
        self._timeout = timeout
        self._retries = retries
        self._backoff_base = backoff_base
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        self._token: str | None = None
        self._issued: list[str] = []  # tokens handed out so far (the newest few): redacted from upstream text
        self._pattern = redactor([client_secret.reveal()], client_id)
        self._pattern_for = 0  # how many tokens the pattern knows
        self._renew_at = 0.0
        self._expires_at = 0.0
        self._inflight: asyncio.Task[str] | None = None

    @property
    def expires_at(self) -> float:
        return self._expires_at

    async def token(self) -> str:
        """A token that is valid now and not yet due for renewal."""
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        return await self._renew()

    async def renew(self, rejected: str | None) -> str:
        """A new token because ``rejected`` was refused (401); shared if another caller already renewed it."""
        if self._token is not None and rejected != self._token and self._clock() < self._renew_at:
            return self._token
        self._renew_at = 0.0
        return await self._renew()

    def redact(self, text: str, limit: int = 300) -> str:
        """``text`` (from upstream: an error title, a message) safe to show: the client secret and every token this
        provider was issued redacted in every encoding, before it is cut to ``limit``; its controls escaped."""
        if self._pattern_for != len(self._issued):
            self._pattern = redactor([self._secret.reveal(), *self._issued], self._client_id)
            self._pattern_for = len(self._issued)
        return safe_text(text, self._pattern, limit)

    def invalidate(self) -> None:
        """Forget the token (a config reload with new credentials)."""
        self._token = None
        self._renew_at = 0.0

    async def _renew(self) -> str:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> str:
        last_error: AuthError | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(full_jitter(attempt, base=self._backoff_base, cap=10.0, rng=self._rng))
            try:
                return await self._request()
            except _TransientError as exc:
                last_error = AuthError(str(exc))
        assert last_error is not None  # noqa: S101 -- the loop ran at least once
        raise last_error

    async def _request(self) -> str:
        status, location, body = await self._post()
        if 300 <= status < 400:
            self._metrics.token_failures.inc()
            host = urlsplit(location).hostname if location else None
            where = clean_text(host, 128) if host else "(no Location)"
            log.error("token_request_failed", status=status, redirect_to=where)
            raise AuthError(
                f"IMS token request answered HTTP {status}, a redirect to {where}: refused, the "
                "client secret is never sent anywhere but adobe.ims_token_url (check that URL)"
            )
        if status >= 500:
            self._metrics.token_failures.inc()
            log.warning("token_request_failed", status=status)
            raise _TransientError(f"IMS token request failed: HTTP {status}")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            self._metrics.token_failures.inc()
            error = body.get("error") if isinstance(body, dict) else None
            error = self.redact(str(error), 64) if error else "no access_token in answer"
            described = body.get("error_description") if isinstance(body, dict) else None
            description = self.redact(str(described), 300) if described else ""
            log.error("token_request_failed", status=status, error=error, description=description)
            text = f"IMS refused the token request: HTTP {status} ({error})"
            if description:
                text += f": {description}"
            hint = IMS_HINTS.get(error)
            raise AuthError(f"{text}. {hint}" if hint else text)
        return self._take(body["access_token"], body.get("expires_in"))

    async def _post(self) -> tuple[int, str, object]:
        """The token request: its status, a redirect's Location, and the JSON body (None for 3xx and 5xx)."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret.reveal(),
            "scope": self._scopes,
        }
        self._metrics.token_requests.inc()
        started = time.perf_counter()
        code = "error"
        try:
            # Never follow a redirect: this request carries the client secret.
            async with self._session.post(
                self._url, data=form, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as resp:
                code = str(resp.status)
                raw = await read_capped(resp, IMS_MAX_BYTES, "token")
                body = None
                if resp.status < 300 or 400 <= resp.status < 500:
                    body = await decode(raw, resp.headers.get("Content-Encoding", ""), IMS_MAX_BYTES, "token")
                return resp.status, resp.headers.get("Location", ""), body
        except (TimeoutError, aiohttp.ClientError, PayloadError) as exc:
            self._metrics.token_failures.inc()
            reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            if code == "error":
                detail = describe_failure(exc, self._url, timeout=self._timeout, proxy=self._proxy)
                log.warning("token_request_failed", reason=reason, detail=detail)
                raise _TransientError(f"IMS token request failed: {detail}") from None
            log.warning("token_request_failed", reason=reason, status=code)
            raise AuthError(f"IMS token request failed: HTTP {code}, unreadable answer") from None
        finally:
            self._metrics.api_requests.labels("", "token", code).inc()
            self._metrics.api_latency.labels("token").observe(time.perf_counter() - started)

    def _take(self, token: str, lifetime: object) -> str:
        """Keep a new token, renewed at 90 % of its lifetime (seconds; some IMS versions said milliseconds)."""
        seconds = float(lifetime) if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) else 0.0
        if not 0 < seconds < float("inf"):
            seconds = 3600.0
        if seconds > 10_000_000:
            seconds = seconds / 1000.0
        now = self._clock()
        self._token = token
        self._issued = [*self._issued[-3:], token]
        self._renew_at = now + RENEW_AT_FRACTION * seconds
        self._expires_at = now + seconds
        self._metrics.token_expiry.set(self._expires_at)
        log.info("token_renewed", expires_in=round(seconds))
        return token


class _TransientError(Exception):
    """An IMS failure worth another try (5xx, timeout, connection); becomes AuthError at the end."""
