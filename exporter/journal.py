"""The pull way in to Adobe I/O Events: the registration's journal, read exactly as Adobe's "Journaling API" page
documents it (outbound HTTPS only, so it works behind a firewall).

- Every answer, ``200`` and ``204`` alike, carries ``Link: <...?since=<position>>; rel="next"``: the reader always
  follows it. Every ``Link`` field is read (several fields, or one with comma-joined values; relative or absolute
  targets); ``rel="validate"`` and other relations are ignored. A target off the journal URL's own origin and
  path prefix is never followed (the token would go with it).
- ``latest=true`` (jump to the end) is sent only on a first start with no stored position: sent again it means
  "from now on" and skips whatever was written in between.
- The position the next link carries is kept in the state file, after a batch is applied and after a ``204``
  alike, so a restart resumes exactly there (an event applied twice is harmless: its refresh goes through the
  counting rule).
- A ``204`` is waited out for its ``retry-after`` (seconds or an HTTP date, capped; ``events.journal_wait`` when
  absent). A journal with no events at all answers ``204`` to a call without parameters: that is normal.
- ``410 Gone`` (a text body: "Events at position ... have expired") is logged once; reading restarts from the
  oldest events the journal keeps, and every sandbox is polled at once (``on_gap``), so nothing announced in the
  gap waits for the next interval.

Nothing the journal answers can wedge the reader or make it spin: a next link that keeps failing is retried with
backoff and then abandoned for the stored position; an empty or unchanged next link and unusable positions back
off; every request asks for a ``limit`` (kept in the next links, as Adobe does), halved when a batch is still over
the size cap (which applies to the inflated body); large batches are parsed off the event loop; every entry is
counted under an outcome. Requests go through the Flow Service client (its token, rate limit, retries and
request metrics, ``endpoint="journal"``).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import structlog

from exporter.backoff import full_jitter, retry_after_seconds
from exporter.bodies import decode
from exporter.checks import clean_text
from exporter.client import FlowServiceClient
from exporter.errors import PayloadError, TooLargeError
from exporter.events import EventRouter
from exporter.selfmetrics import SelfMetrics
from exporter.tracker import Tracker

log = structlog.get_logger(__name__)

POSITION_KEY = "events.journal.position"
JOURNAL_MAX_BYTES = 8 * 1024 * 1024
"""The cap on one journal answer, once inflated."""
JOURNAL_LIMIT = 100
"""Events asked for per batch: Adobe's Platform notifications are a few KiB each, far under the cap."""
MAX_WAIT = 60.0
"""The longest wait between reads, whatever ``retry-after`` says."""
LINK_ATTEMPTS = 3
"""Failed reads of one next link before it is abandoned for the stored position."""
YIELD_EVERY = 100
"""Entries handed on between two yields to the event loop (a big batch never holds up a scrape)."""
_POSITION_RE = re.compile(r"^[A-Za-z0-9._:~+/=-]{1,512}$")
_LINK_RE = re.compile(r"<([^>]*)>([^,<]*)")


def journal_position(value: object) -> str | None:
    """A journal position (opaque to us) that may be stored and sent back in a URL, or None."""
    return value if isinstance(value, str) and _POSITION_RE.match(value) else None


def link_targets(fields: Iterable[str], relation: str) -> list[str]:
    """The targets of every ``Link`` value with ``rel`` ``relation`` (RFC 8288: several fields or comma-joined
    values, ``rel`` quoted or not, several relations in one ``rel``), in order."""
    targets = []
    for field_value in fields:
        for match in _LINK_RE.finditer(field_value):
            for param in match.group(2).split(";"):
                name, _, rels = param.partition("=")
                if name.strip().lower() == "rel" and relation in rels.strip().strip('"').lower().split():
                    targets.append(match.group(1).strip())
                    break
    return targets


def with_query(url: str, extra: Mapping[str, str], drop: Iterable[str] = ()) -> str:
    """``url`` with ``extra`` query parameters set (replacing any of the same name) and ``drop`` removed."""
    parts = urlsplit(url)
    removed = set(extra) | set(drop)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in removed]
    return urlunsplit(parts._replace(query=urlencode([*query, *extra.items()])))


def same_url(a: str, b: str) -> bool:
    """Whether two URLs name the same resource and query, whatever the order of their parameters."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.netloc, pa.path) == (pb.scheme, pb.netloc, pb.path) and sorted(
        parse_qsl(pa.query, keep_blank_values=True)
    ) == sorted(parse_qsl(pb.query, keep_blank_values=True))


def query_value(url: str, name: str) -> str | None:
    return next((v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if k == name), None)


class JournalReader:
    """Reads the events journal forever (see the module docstring)."""

    def __init__(
        self,
        *,
        client: FlowServiceClient,
        url: str,
        org_id: str,
        router: EventRouter,
        tracker: Tracker,
        metrics: SelfMetrics,
        wait: float,
        clock: Callable[[], float] = time.time,
        on_gap: Callable[[], None] = lambda: None,
        limit: int = JOURNAL_LIMIT,
        max_bytes: int = JOURNAL_MAX_BYTES,
        max_wait: float = MAX_WAIT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        base = urlsplit(url)
        self._client = client
        self._base = with_query(url, {}, drop=("since", "latest", "limit"))
        self._origin = (base.scheme, base.netloc)
        self._prefix = base.path.rstrip("/")
        self._org_id = org_id
        self._router = router
        self._tracker = tracker
        self._metrics = metrics
        self._wait = wait
        self._clock = clock
        self._on_gap = on_gap
        self._limit = limit
        self._max_bytes = max_bytes
        self._max_wait = max_wait
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        self._next: str | None = None  # the next link to follow
        self._position: str | None = None  # the stored position
        self._loaded = False
        self._from_oldest = False  # after an expired position: read from the oldest event kept
        self._failures = 0  # reads in a row that failed
        self._link_failures = 0  # ... of the current next link
        self._stalls = 0  # reads in a row that could not move on (no usable or an unchanged next link)
        self._stored = ""  # the position last written to the state file

    async def run(self) -> None:
        while True:
            try:
                delay = await self.read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- the journal is a speed-up; nothing it does may end the loop
                delay = self._failed(exc)
            await self._sleep(delay)

    async def read_once(self) -> float:
        """One read; the seconds to wait before the next (0 while the journal has more)."""
        url, constructed = await self._url()
        try:
            status, headers, body = await self._client.fetch(
                "journal", url, {"x-ims-org-id": self._org_id}, self._max_bytes
            )
            data = (
                await decode(body, headers.get("Content-Encoding", ""), self._max_bytes, "journal")
                if status == 200
                else None
            )
        except TooLargeError:
            if self._limit == 1:
                raise
            self._limit = max(1, self._limit // 2)  # a batch too big to take: ask for fewer events
            log.warning("journal_batch_too_large", limit=self._limit, max_bytes=self._max_bytes)
            return 0.0
        # Adobe answers 410 Gone for an expired position; a 400 or 404 for a position we built the URL from (the
        # state file's) says the same in other words: it cannot be read from, so start over.
        if status == 410 or (status in (400, 404) and constructed and query_value(url, "since") is not None):
            return await self._expired(url, status)
        if status == 204:
            self._follow(self._next_link(headers.getall("Link", []), url), url)
            await self._store()
            self._read_ok()
            wait = retry_after_seconds(headers.get("Retry-After"))
            return min(self._max_wait, self._wait if wait is None else wait)
        if status != 200:
            raise PayloadError(f"journal answered HTTP {status}")
        if not isinstance(data, dict) or not isinstance(data.get("events", []), list):
            raise PayloadError("journal answer is not an events batch")
        return await self._apply_batch(data, url, headers.getall("Link", []))

    async def _apply_batch(self, data: dict[str, Any], url: str, links: list[str]) -> float:
        """Hand each entry to the router (each counted under an outcome), then keep the position after it."""
        entries: list[object] = data.get("events", [])
        position = None
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and "event" in entry:
                self._router.handle(entry["event"], "journal")
                position = journal_position(entry.get("position")) or position
            else:
                self._router.count("journal", "invalid")
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        page = data.get("_page")
        if isinstance(page, dict):
            position = journal_position(page.get("last")) or position
        following = self._next_link(links, url) or (self._since(position) if position else None)
        self._read_ok()
        if following is None or (entries and same_url(following, url)):  # nowhere new to go: back off, never spin
            self._stalls += 1
            if self._stalls == 1:
                log.warning("journal_next_link_unusable", hint="the journal's answer names no usable next position")
            return min(self._max_wait, self._wait * float(2 ** min(self._stalls, 6)))
        self._stalls = 0
        self._follow(following, url)
        await self._store()
        return 0.0 if entries else self._wait

    def _next_link(self, fields: list[str], current: str) -> str | None:
        """The first ``rel="next"`` target that stays on the journal's origin and path prefix, made absolute."""
        for target in link_targets(fields, "next"):
            if not target:
                continue
            absolute = urljoin(current, target)
            parts = urlsplit(absolute)
            path = parts.path.rstrip("/")
            if (parts.scheme, parts.netloc) == self._origin and (
                path == self._prefix or path.startswith(self._prefix + "/")
            ):
                return absolute
        return None

    def _follow(self, link: str | None, current: str) -> None:
        """Read ``link`` next (``current`` again without one), and remember the position it carries."""
        if link is None:
            if query_value(current, "latest") is not None:
                return  # no next link after latest=true: ask again (nothing else is possible)
            link = current
        if link != self._next:
            self._link_failures = 0
        self._next = link
        self._from_oldest = False
        position = journal_position(query_value(link, "since"))
        if position:
            self._position = position

    async def _store(self) -> None:
        stored = self._position or ""
        if stored and stored != self._stored:
            await self._tracker.set_meta(POSITION_KEY, stored)
            self._stored = stored

    async def _expired(self, url: str, status: int) -> float:
        """The position is older than the journal keeps: start from the oldest event, and poll everything now."""
        if query_value(url, "since") is None:
            raise PayloadError(f"journal answered HTTP {status} to a read from its oldest event")
        log.warning(
            "journal_position_expired",
            status=status,
            position=clean_text(query_value(url, "since") or "", 80),
            hint="the events after the stored position are gone (kept 7 days): reading from the oldest event "
            "kept, and polling every sandbox now",
        )
        self._next = None
        self._position = None
        self._from_oldest = True
        self._stored = ""
        await self._tracker.set_meta(POSITION_KEY, "")
        self._on_gap()
        return 0.0

    def _failed(self, exc: Exception) -> float:
        """A read failed: back off; a next link that keeps failing is abandoned for the stored position."""
        self._failures += 1
        if self._next is not None:
            self._link_failures += 1
            if self._link_failures >= LINK_ATTEMPTS:
                log.warning(
                    "journal_next_link_abandoned",
                    attempts=self._link_failures,
                    hint="resuming from the stored position",
                )
                self._next = None
                self._link_failures = 0
        delay = max(self._wait, full_jitter(min(self._failures, 6), base=self._wait, cap=self._max_wait, rng=self._rng))
        log.warning(
            "journal_read_failed",
            error=clean_text(str(exc), 300),
            error_type=type(exc).__name__,
            retry_in=round(delay, 1),
        )
        return min(self._max_wait, delay)

    def _read_ok(self) -> None:
        self._failures = 0
        self._link_failures = 0
        if self._metrics.journal_read is not None:
            self._metrics.journal_read.set(self._clock())

    async def _url(self) -> tuple[str, bool]:
        """The URL of the next read (with our ``limit``), and whether it was built here rather than linked."""
        if not self._loaded:  # a file edited by hand, too: validated
            self._position = journal_position(await self._tracker.get_meta(POSITION_KEY))
            self._stored = self._position or ""
            self._loaded = True
        if self._next is not None:
            return with_query(self._next, {"limit": str(self._limit)}), False
        if self._from_oldest:
            url = self._base
        elif self._position:
            url = self._since(self._position)
        else:
            url = with_query(self._base, {"latest": "true"})  # a first start: polling has the history
        return with_query(url, {"limit": str(self._limit)}), True

    def _since(self, position: str) -> str:
        return with_query(self._base, {"since": position})
