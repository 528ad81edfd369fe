"""Flow Service HTTP client: headers, pagination and the listing envelope, retries, rate limit, error mapping,
self-metrics.

One instance (and one aiohttp session) serves every sandbox, so the rate limit and the concurrency cap
are global, as Adobe's gateway sees them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import structlog
from multidict import CIMultiDictProxy

from exporter.auth import TokenProvider
from exporter.backoff import full_jitter, retry_after_seconds
from exporter.bodies import DEFAULT_MAX_BYTES, decode, decode_text, read_capped
from exporter.checks import clean_text
from exporter.errors import (
    ApiError,
    NotFoundError,
    PayloadError,
    RedirectError,
    ServerError,
    ThrottledError,
    TransportError,
)
from exporter.hints import hint_for
from exporter.selfmetrics import SelfMetrics
from exporter.transport import describe_failure

log = structlog.get_logger(__name__)

PAGE_LIMIT = 100
MAX_PAGES = 1000
"""A listing never follows more pages than this, so a server that always says "next" cannot trap a poll."""

Params = Sequence[tuple[str, str]]
TITLE_BOUND = 64 * 1024
"""An error title is read at most this far (then redacted, then cut to what a message shows)."""


class RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart, across every caller."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


class FlowServiceClient:
    """``GET`` on the Flow Service with everything a polite, robust client does."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        auth: TokenProvider,
        client_id: str,
        org_id: str,
        metrics: SelfMetrics,
        timeout: float = 30.0,
        retries: int = 3,
        requests_per_second: float = 10.0,
        max_concurrency: int = 8,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_response_bytes: int = DEFAULT_MAX_BYTES,
        proxy: str | None = None,
    ) -> None:
        self._session = session
        self._proxy = proxy
        self._base = base_url.rstrip("/")
        self._auth = auth
        self._client_id = client_id
        self._org_id = org_id
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._limiter = RateLimiter(requests_per_second)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        self._sleep = sleep
        self._max_bytes = max_response_bytes

    async def get(self, sandbox: str, endpoint: str, path: str, params: Params) -> dict[str, Any]:
        """One GET, retried on 429/5xx/timeouts/connection errors, renewing the token once on 401."""
        status, resp_headers, raw = await self._exchange(
            sandbox, endpoint, f"{self._base}{path}", params, lambda token: self._headers(sandbox, token)
        )
        return await self._answer(sandbox, endpoint, status, resp_headers, raw)

    async def fetch(
        self, endpoint: str, url: str, headers: Mapping[str, str], max_bytes: int | None = None
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """A GET to another Adobe service with the same token (the events journal): this client's rate limit,
        concurrency cap, retries, token renewal and request metrics; the caller reads the status and every
        header field (several ``Link`` fields, say). ``headers`` come on top of the token and API key; the body is
        read up to ``max_bytes`` (default: ``poll.max_response_bytes``)."""
        return await self._exchange(
            "",
            endpoint,
            url,
            (),
            lambda token: {
                "Authorization": f"Bearer {token}",
                "x-api-key": self._client_id,
                "Accept": "application/json",
                **headers,
            },
            max_bytes=max_bytes,
        )

    async def _exchange(
        self,
        sandbox: str,
        endpoint: str,
        url: str,
        params: Params,
        headers_for: Callable[[str], Mapping[str, str]],
        *,
        max_bytes: int | None = None,
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """The final answer to a GET: transport failures, 429 and 5xx retried with backoff, a 401 renewing the
        token once; TransportError when the network never answered."""
        renewed = False
        attempt = 0
        while True:
            token = await self._auth.token()
            try:
                status, resp_headers, raw = await self._send(
                    sandbox, endpoint, url, params, dict(headers_for(token)), max_bytes=max_bytes or self._max_bytes
                )
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connection"
                if attempt >= self._retries:
                    detail = describe_failure(exc, url, timeout=self._timeout.total, proxy=self._proxy)
                    raise TransportError(endpoint, reason, detail) from None
                await self._backoff(endpoint, reason, attempt, None)
                attempt += 1
                continue
            if status == 401 and not renewed:
                renewed = True
                self._metrics.api_retries.labels(endpoint, "unauthorized").inc()
                await self._auth.renew(token)
                continue
            if (status == 429 or status >= 500) and attempt < self._retries:
                await self._backoff(
                    endpoint, "throttled" if status == 429 else "server_error", attempt, resp_headers.get("Retry-After")
                )
                attempt += 1
                continue
            return status, resp_headers, raw

    def _headers(self, sandbox: str, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "x-api-key": self._client_id,
            "x-gw-ims-org-id": self._org_id,
            "x-sandbox-name": sandbox,
            "Accept": "application/json",
        }

    async def _answer(
        self, sandbox: str, endpoint: str, status: int, headers: Mapping[str, str], raw: bytes
    ) -> dict[str, Any]:
        """A final answer: the JSON object of a 200, else the error it stands for (never a redirect followed)."""
        encoding = headers.get("Content-Encoding", "")
        if status == 200:
            data = await decode(raw, encoding, self._max_bytes, endpoint)
            if not isinstance(data, dict):
                raise PayloadError(f"{endpoint}: answer is not a JSON object")
            return data
        if 300 <= status < 400:
            raise RedirectError(endpoint, status, _host_of(headers.get("Location", "")))
        code, detail = _error_code(await decode_text(raw, encoding, self._max_bytes, endpoint))
        detail = self._auth.redact(detail, 200)
        if status == 429:
            raise ThrottledError(endpoint, status, code, detail)
        if status >= 500:
            raise ServerError(endpoint, status, code, detail)
        found = hint_for(status, code)
        hint = found.text(sandbox) if found is not None else ""
        text = f"{detail.rstrip('.')}. {hint[:1].upper()}{hint[1:]}" if detail and hint else detail or hint
        if status == 404:
            raise NotFoundError(endpoint, status, code, text)
        raise ApiError(endpoint, status, code, text)

    async def _send(
        self, sandbox: str, endpoint: str, url: str, params: Params, headers: dict[str, str], *, max_bytes: int
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        async with self._slots:
            await self._limiter.acquire()
            started = time.perf_counter()
            code = "error"
            try:
                async with self._session.get(
                    url, params=list(params), headers=headers, timeout=self._timeout, allow_redirects=False
                ) as resp:
                    code = str(resp.status)
                    body = await read_capped(resp, max_bytes, endpoint)
                    return resp.status, resp.headers, body
            finally:
                self._metrics.api_requests.labels(sandbox, endpoint, code).inc()
                self._metrics.api_latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _backoff(self, endpoint: str, reason: str, attempt: int, retry_after: str | None) -> None:
        self._metrics.api_retries.labels(endpoint, reason).inc()
        delay = retry_after_seconds(retry_after)
        if delay is None:
            delay = full_jitter(attempt, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)
        log.debug("request_retry", endpoint=endpoint, reason=reason, attempt=attempt + 1, delay=round(delay, 3))
        await self._sleep(delay)

    async def pages(self, sandbox: str, endpoint: str, path: str, params: Params) -> AsyncGenerator[list[object], None]:
        """Each page's ``items``, following ``_links.next``; our own filters are resent with every token."""
        base_params = [*params, ("limit", str(PAGE_LIMIT))]
        page_params: list[tuple[str, str]] = list(base_params)
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            envelope = await self.get(sandbox, endpoint, path, page_params)
            yield items_of(envelope, endpoint)
            href = next_link(envelope)
            token = _continuation_token(href) if href else None
            if not token:
                return
            if token in seen_tokens:
                raise PayloadError(f"{endpoint}: the API repeated continuation token, stopping")
            seen_tokens.add(token)
            page_params = [*base_params, ("continuationToken", token)]
        log.warning("pagination_limit_reached", sandbox=sandbox, endpoint=endpoint, pages=MAX_PAGES)


def _continuation_token(href: str) -> str | None:
    """The token from a ``next`` href; parsed as a query value, so ``=`` inside it survives."""
    for key, value in parse_qsl(urlsplit(href).query, keep_blank_values=True):
        if key == "continuationToken" and value:
            return value
    return None


def _host_of(location: str) -> str:
    """The host a redirect points at, cleaned for a log line (or a placeholder when it has none)."""
    host = urlsplit(location).hostname if location else None
    return clean_text(host, 128) if host else "(no Location)"


def _error_code(body: bytes) -> tuple[str | None, str]:
    """Adobe's error code and title from a gateway or RFC-7807 body; never the raw body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, ""
    if not isinstance(data, dict):
        return None, ""
    code = data.get("error_code") or data.get("code") or data.get("type")
    title = data.get("title") or data.get("message") or ""
    if isinstance(code, str) and "/" in code:  # RFC-7807 "type" is a URL ending in the code
        code = code.rstrip("/").rsplit("/", 1)[-1]
    # The title is cut only after redaction (a cut inside a secret would show part of it): here, just bounded.
    return (clean_text(str(code), 64) if code else None), str(title)[:TITLE_BOUND]


# --- the listing envelope of /flows and /runs: {"items": [...], "_links": {"next": {"href": ...}}} ---


def items_of(envelope: object, what: str) -> list[object]:
    """The ``items`` list of a Flow Service list envelope; PayloadError when the shape is wrong."""
    if not isinstance(envelope, dict):
        raise PayloadError(f"{what} answer is not a JSON object")
    items = envelope.get("items", [])
    if not isinstance(items, list):
        raise PayloadError(f"{what} answer has no items list")
    return items


def next_link(envelope: dict[str, Any]) -> str | None:
    """``_links.next.href`` of a list envelope, or None on the last page."""
    href = _mapping(_mapping(envelope.get("_links")).get("next")).get("href")
    return href if isinstance(href, str) and href else None


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
