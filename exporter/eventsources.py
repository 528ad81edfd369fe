"""Where Adobe I/O Events come in (``events:``): the journal reader's task and the webhook's listener with its
key cache, started once the exporter has its Flow Service client, and stopped with it. Both hand what they
receive to one ``EventRouter`` (events.py), which asks the sandbox pollers for a refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiohttp import web

from exporter.client import FlowServiceClient
from exporter.config import AdobeConfig, EventsConfig
from exporter.events import EventRouter
from exporter.journal import JournalReader
from exporter.listeners import ListenerLimits, bound_port, start_listener
from exporter.selfmetrics import SelfMetrics
from exporter.tracker import Tracker
from exporter.webhook import KeyCache, webhook_app

log = structlog.get_logger(__name__)


class EventSources:
    """The journal reader and the webhook listener of one exporter; ``start`` is idempotent per source."""

    def __init__(
        self,
        *,
        router: EventRouter,
        tracker: Tracker,
        metrics: SelfMetrics,
        clock: Callable[[], float],
        on_gap: Callable[[], None],
    ) -> None:
        self.router = router
        self._tracker = tracker
        self._metrics = metrics
        self._clock = clock
        self._on_gap = on_gap  # the journal lost its place: every sandbox is polled now
        self._journal: asyncio.Task[None] | None = None
        self._webhook: web.AppRunner | None = None
        self._keys: KeyCache | None = None

    async def start(self, events: EventsConfig, adobe: AdobeConfig, client: FlowServiceClient) -> None:
        """Start what ``events`` asks for and is not running yet. The webhook port is bound here; a busy one
        raises OSError."""
        sources = (("journal",) if events.journal_url else ()) + (("webhook",) if events.webhook else ())
        self._metrics.start_events(sources)
        if events.journal_url and self._journal is None:
            reader = JournalReader(
                client=client,
                url=events.journal_url,
                org_id=adobe.org_id,
                router=self.router,
                tracker=self._tracker,
                metrics=self._metrics,
                wait=events.journal_wait,
                clock=self._clock,
                on_gap=self._on_gap,
            )
            self._journal = asyncio.get_running_loop().create_task(reader.run(), name="events-journal")
        hook = events.webhook
        if hook is not None and self._webhook is None:
            self._keys = KeyCache(hook.public_key_base_url, proxy=adobe.proxy, ca_file=adobe.ca_file)
            app = webhook_app(hook, client_id=adobe.client_id, router=self.router, keys=self._keys)
            limits = ListenerLimits(header_timeout=hook.read_header_timeout, max_connections=hook.max_connections)
            self._webhook, _site = await start_listener(
                app, name="webhook", limits=limits, host=hook.host, port=hook.port, ssl_context=hook.web.ssl_context
            )
            log.info(
                "webhook_listening",
                listen=f"{hook.host}:{hook.port}",
                path=hook.path,
                tls=hook.web.ssl_context is not None,
                max_connections=hook.max_connections,
            )

    @property
    def webhook_port(self) -> int | None:
        """The webhook listener's port (when it runs), for tests that ask for port 0."""
        return None if self._webhook is None else bound_port(self._webhook)

    async def close(self) -> None:
        """Stop the journal reader, close the webhook listener and its key cache, then the router's retries."""
        if self._journal is not None:
            self._journal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._journal
            self._journal = None
        if self._webhook is not None:
            await self._webhook.cleanup()
            self._webhook = None
        if self._keys is not None:
            await self._keys.close()
            self._keys = None
        await self.router.close()
