"""Composition root: the ``Exporter`` that builds, starts and stops every part for one config (state, IMS and
Flow Service clients, sandbox pollers, event sources, the web app) and applies a reload. Only cli.py and
demo.py import it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.auth import TokenProvider
from exporter.bodies import ACCEPT_ENCODING
from exporter.client import FlowServiceClient
from exporter.config import Config
from exporter.configfile import Overrides, load_config
from exporter.errors import ConfigError
from exporter.events import RETRY_DELAYS, EventRouter
from exporter.eventsources import EventSources
from exporter.exposition import SELF_TTL, MetricsRenderer
from exporter.flowlist import Survey
from exporter.logs import OnceLog
from exporter.poller import SandboxPoller
from exporter.selfmetrics import SelfMetrics
from exporter.store import MemoryStore, open_store
from exporter.tracker import Tracker
from exporter.transport import client_session
from exporter.values import Snapshot
from exporter.web import WebSecurity, create_web_app

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class Tuning:
    """Knobs that are not user config: retry timing (tests shorten it)."""

    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    seed: int | None = None
    self_metrics_ttl: float = SELF_TTL
    event_retries: tuple[float, ...] = RETRY_DELAYS  # when an event's run is not counted yet: try again after


def tune_interpreter() -> None:
    """The flow exposition renders on a worker thread; switching the GIL every 1 ms instead of 5 ms lets the
    event loop take it back sooner, keeping /healthz and scrapes responsive during a large render."""
    sys.setswitchinterval(0.001)


class Exporter:
    """The daemon: state, pollers and web app for one config. ``start()`` opens what it needs (the state file, the
    HTTP session) and, when asked, starts polling; ``close()`` stops and releases everything it started."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        tuning: Tuning | None = None,
        clock: Callable[[], float] = time.time,
        config_path: str | Path | None = None,
        config_overrides: Overrides | None = None,
        clock_note: str = "",
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.config_overrides = config_overrides  # command-line flags, applied again on every reload
        self.tuning = tuning or Tuning()
        self.clock = clock
        self.clock_note = clock_note  # the landing page's word on the clock (the demo's is the simulator's)
        self.registry = registry or CollectorRegistry()
        self.metrics = SelfMetrics(self.registry)
        self.tracker = Tracker(MemoryStore(), [s.name for s in config.sandboxes])  # the state file opens in start()
        self.renderer = MetricsRenderer(
            self.tracker.snapshot, config.metrics, self.registry, self_ttl=self.tuning.self_metrics_ttl
        )
        self.web_security = WebSecurity(config.server.web_config_path, config.server.web)
        self.once = OnceLog()
        self.pollers: list[SandboxPoller] = []
        self._session: aiohttp.ClientSession | None = None
        self._auth: TokenProvider | None = None
        self._auth_for: tuple[str, ...] = ()
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[object]] = set()  # reloads asked for by SIGHUP
        self.router = EventRouter(
            pollers=lambda: self.pollers,
            tracker=self.tracker,
            metrics=self.metrics,
            clock=clock,
            retry_delays=self.tuning.event_retries,
        )
        self.events = EventSources(
            router=self.router, tracker=self.tracker, metrics=self.metrics, clock=clock, on_gap=self.poll_all_now
        )
        self._client: FlowServiceClient | None = None
        self.metrics.shard_index.set(config.shard.index)
        self.metrics.shard_total.set(config.shard.total)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(clock())

    def snapshot(self) -> Snapshot:
        return self.tracker.snapshot()

    async def start(self, *, poll: bool = False) -> None:
        """Open the state file (serving what it holds at once) and the HTTP session, and build the pollers; with
        ``poll``, start one polling loop per sandbox. Calling it again only starts the loops if asked."""
        if self._session is None:
            await self._open_state()
            # The session does not decompress: bodies.py does, with a cap on the inflated size (gzip bombs).
            self._session = client_session(
                headers={"User-Agent": f"aep-flow-exporter/{__version__}", "Accept-Encoding": ACCEPT_ENCODING},
                proxy=self.config.adobe.proxy,
                ca_file=self.config.adobe.ca_file,
            )
            self._build_pollers()
        if poll and not self._loops:
            self._start_loops()
            await self.start_events()

    async def _open_state(self) -> None:
        config = self.config
        path = config.state.path
        states, resets = await self.tracker.attach(
            lambda: open_store(path), config.metrics.duration_buckets, int(self.clock() * 1000)
        )
        by_name = {s.name: s for s in config.sandboxes}
        self.tracker.restore(
            dataclasses.replace(s, labels=by_name[s.sandbox].labels_for(s.flow_id), up=True)
            for s in states
            if s.sandbox in by_name
        )
        await self.tracker.purge(s.key for s in states if s.sandbox not in by_name)  # sandboxes no longer configured
        for sandbox, flow_id in resets:
            log.warning(
                "histogram_reset",
                sandbox=sandbox,
                flow_id=flow_id,
                reason="metrics.duration_buckets changed since the state file was written, "
                "or the stored histogram was not valid",
            )
        if states:
            log.info("state_loaded", path=path, flows=len(states))

    def _build_pollers(self) -> None:
        assert self._session is not None  # noqa: S101 -- start() opened it
        config = self.config
        rng = random.Random(self.tuning.seed)  # noqa: S311 -- jitter, not cryptography
        credentials = (
            config.adobe.ims_token_url,
            config.adobe.client_id,
            config.adobe.client_secret.reveal(),
            config.adobe.scopes,
        )
        if self._auth is None or credentials != self._auth_for:
            if self._auth is not None:
                self._auth.invalidate()  # a token of the old credentials is never used again
            self._auth = _token_provider(
                config, session=self._session, metrics=self.metrics, tuning=self.tuning, clock=self.clock, rng=rng
            )
            self._auth_for = credentials
        client = _flow_service(
            config, session=self._session, auth=self._auth, metrics=self.metrics, tuning=self.tuning, rng=rng
        )
        self._client = client
        self.pollers = [
            SandboxPoller(
                sandbox=sb,
                poll=config.poll,
                metrics=config.metrics,
                shard=config.shard,
                client=client,
                tracker=self.tracker,
                self_metrics=self.metrics,
                once=self.once,
                clock=self.clock,
                rng=rng,
            )
            for sb in config.sandboxes
        ]

    async def survey(self) -> list[Survey]:
        """What the credential can see in each sandbox (``check-config --online``): a token first (AuthError when
        IMS refuses it), then every sandbox's flows. Opens the state file like start(): give a config without one."""
        await self.start()
        assert self._auth is not None  # noqa: S101 -- start() made it
        await self._auth.token()
        return list(await asyncio.gather(*(p.survey() for p in self.pollers)))

    async def poll_once(self) -> bool:
        """One cycle of every sandbox, concurrently; True when all of them succeeded."""
        results = await asyncio.gather(*(p.cycle() for p in self.pollers))
        return all(results)

    def poll_all_now(self) -> None:
        """Start every sandbox's next cycle now (the journal lost events: whatever they announced is read at once)."""
        for poller in self.pollers:
            poller.poll_now()

    def _start_loops(self) -> None:
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(p.run(), name=f"poll-{p.name}") for p in self.pollers]

    async def _stop_loops(self) -> None:
        await _cancel(self._loops)
        self._loops = []

    def reload_soon(self) -> None:
        """Reload in the background (SIGHUP); the task is owned, and cancelled by ``close()``."""
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start_events(self) -> None:
        """Adobe I/O Events (``events:``): the journal reader and the webhook listener, once ``start()`` has run.
        The webhook port is bound here; a busy one raises OSError."""
        assert self._client is not None  # noqa: S101 -- start() made it
        await self.events.start(self.config.events, self.config.adobe, self._client)

    @property
    def webhook_port(self) -> int | None:
        """The webhook listener's port (when it runs), for tests that ask for port 0."""
        return self.events.webhook_port

    async def close(self) -> None:
        """Stop any reload under way (first: it could start loops again), the loops, the events, then close the
        session and the state file."""
        await _cancel(list(self._tasks))
        await self._stop_loops()
        await self.events.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.tracker.close()

    async def reload(self) -> bool:
        """Re-read the config file and apply it; an invalid one keeps the current config running."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path, overrides=self.config_overrides)
            if new.state.path != self.config.state.path:
                raise ConfigError([f"state.path: cannot change on reload (restart to use {new.state.path})"])
        except ConfigError as exc:
            self.metrics.reload_ok.set(0)
            log.error("config_reload_failed", problems=list(exc.problems))  # noqa: TRY400 -- the problems list is the useful part, not a traceback
            return False
        self.web_security.refresh(force=True)  # the web config file is re-read on every reload, even unchanged
        self._warn_unreloadable(new)
        running = bool(self._loops)
        await self._stop_loops()
        removed = {s.name for s in self.config.sandboxes} - {s.name for s in new.sandboxes}
        self.config = new
        await self.tracker.set_sandboxes([s.name for s in new.sandboxes])
        for name in removed:
            self.metrics.forget_sandbox(name)
        self.renderer.set_options(new.metrics)
        self.metrics.shard_index.set(new.shard.index)
        self.metrics.shard_total.set(new.shard.total)
        if self._session is not None:
            self._build_pollers()
        if running:
            self._start_loops()
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(self.clock())
        log.info("config_reloaded", sandboxes=[s.name for s in new.sandboxes])
        return True

    def _warn_unreloadable(self, new: Config) -> None:
        old = self.config.server
        if (new.server.host, new.server.port, new.server.web_config_file, new.server.enable_lifecycle) != (
            old.host,
            old.port,
            old.web_config_file,
            old.enable_lifecycle,
        ):
            log.warning(
                "server_settings_not_reloaded",
                hint="listen, web_config_file and enable_lifecycle take effect at the next restart",
            )
        if new.events != self.config.events:
            log.warning("events_settings_not_reloaded", hint="events: takes effect at the next restart")
        if (new.adobe.proxy, new.adobe.ca_file) != (self.config.adobe.proxy, self.config.adobe.ca_file):
            log.warning(
                "network_settings_not_reloaded", hint="adobe.proxy and adobe.ca_file take effect at the next restart"
            )

    def web_app(self, *, poll: bool = True) -> web.Application:
        """The aiohttp app; its cleanup context starts the exporter (and its polling loops) and closes it."""
        server = self.config.server
        app = create_web_app(
            renderer=self.renderer,
            snapshot=self.snapshot,
            security=self.web_security,
            reload=self.reload if server.enable_lifecycle else None,
            clock=self.clock,
            clock_note=self.clock_note,
            aep_ui=server.aep_ui,
        )

        async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
            await self.start(poll=poll)
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.reload_soon)
            yield
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            await self.close()
            log.info("stopped")

        app.cleanup_ctx.append(lifecycle)
        return app


def _token_provider(
    config: Config,
    *,
    session: aiohttp.ClientSession,
    metrics: SelfMetrics,
    tuning: Tuning,
    clock: Callable[[], float],
    rng: random.Random,
) -> TokenProvider:
    """IMS tokens for ``adobe:``, with ``poll.timeout`` and at most two retries."""
    return TokenProvider(
        session=session,
        url=config.adobe.ims_token_url,
        client_id=config.adobe.client_id,
        client_secret=config.adobe.client_secret,
        scopes=config.adobe.scopes,
        metrics=metrics,
        timeout=config.poll.timeout,
        retries=min(config.poll.retries, 2),
        backoff_base=tuning.backoff_base,
        clock=clock,
        rng=rng,
        proxy=config.adobe.proxy,
    )


def _flow_service(
    config: Config,
    *,
    session: aiohttp.ClientSession,
    auth: TokenProvider,
    metrics: SelfMetrics,
    tuning: Tuning,
    rng: random.Random,
) -> FlowServiceClient:
    """The Flow Service client of ``adobe:``, paced and bounded as ``poll:`` says."""
    return FlowServiceClient(
        session=session,
        base_url=config.adobe.flow_service_url,
        auth=auth,
        client_id=config.adobe.client_id,
        org_id=config.adobe.org_id,
        metrics=metrics,
        timeout=config.poll.timeout,
        retries=config.poll.retries,
        requests_per_second=config.poll.requests_per_second,
        max_concurrency=config.poll.max_concurrency,
        backoff_base=tuning.backoff_base,
        backoff_cap=tuning.backoff_cap,
        rng=rng,
        max_response_bytes=config.poll.max_response_bytes,
        proxy=config.adobe.proxy,
    )


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
