"""Every HTTP listener of the exporter (``/metrics`` and the I/O Events webhook) is started here, the same way, with
the same limits, so that no client can take the process down:

- a **header and idle timeout**: a connection that has not sent a whole request head within it, or idles longer
  between requests, is closed (aiohttp's keep-alive timer, which runs from the moment a connection opens); the
  unread rest of a refused body is drained a second at most (aiohttp lingers ten by default);
- a **connection cap** per listener: a connection over it is accepted and closed at once, so its file descriptor
  comes straight back; the caps together stay below the process's file limit with a reserve for everything
  else (Adobe calls, the state file), raised to the hard limit at start when the soft one is lower;
- an explicit **listen backlog**;
- error answers that never echo what the client sent (aiohttp's 400 quotes the offending header, which may be an
  ``Authorization``): the status and its reason only.

A listener's body timeout, when it reads bodies, is its handler's (the webhook's). ``serve_until_signal`` keeps
them open until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = structlog.get_logger(__name__)

FD_RESERVE = 128
"""File descriptors kept for everything but the listeners' clients: Adobe connections, the state file, logs."""


@dataclass(frozen=True, kw_only=True)
class ListenerLimits:
    """The limits of one listener (see the module docstring)."""

    header_timeout: float
    max_connections: int
    backlog: int = 128
    lingering: float = 1.0  # how long an answered request's unread body is drained before the connection closes


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Go programs do at start); the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def connection_budget_problem(caps: dict[str, int], soft_limit: int) -> str | None:
    """What is wrong when the listeners' caps and the reserve do not fit in the file limit, or None."""
    needed = sum(caps.values()) + FD_RESERVE
    if needed <= soft_limit:
        return None
    listed = ", ".join(f"{name} {cap}" for name, cap in caps.items())
    return (
        f"the connection caps ({listed}) plus {FD_RESERVE} kept in reserve need {needed} open files, over the "
        f"process's limit of {soft_limit}: lower them or raise the limit (ulimit -n, LimitNOFILE=)"
    )


class _QuietHandler(RequestHandler):
    """aiohttp's request handler, but an error answer carries only its status and reason: never the message
    aiohttp builds from what the client sent."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # noqa: ARG002 -- the message is what we drop
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, None)  # logs it, checks nothing was sent yet
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        quiet = web.Response(status=status, text=f"{status} {phrase}\n")
        quiet.force_close()
        del response
        return quiet


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted (its descriptor is back at once)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class CappedSite(web.BaseSite):
    """A TCP site whose connections are capped (see the module docstring)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        *,
        host: str | None = None,
        port: int | None = None,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: ListenerLimits,
        name: str,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=limits.backlog)
        self._host, self._port, self._sock = host, port, sock
        self._limits = limits
        self._listener = name
        self.refused = 0

    @property
    def name(self) -> str:
        return f"{self._listener} on {self._host}:{self._port}"

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # noqa: S101 -- the runner is set up before its sites start
        if len(server.connections) >= self._limits.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "connections_refused",
                    listener=self._listener,
                    cap=self._limits.max_connections,
                    refused=self.refused,
                )
            return _Refused()
        # aiohttp's Server builds RequestHandler(server, loop=..., **kwargs); the same, with quiet error answers.
        return _QuietHandler(server, loop=server._loop, **server._kwargs)  # noqa: SLF001

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                self._protocol, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                self._protocol,
                self._host,
                self._port or 0,
                ssl=self._ssl_context,
                backlog=self._backlog,
                reuse_address=True,
            )


async def start_listener(
    app: web.Application,
    *,
    name: str,
    limits: ListenerLimits,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, CappedSite]:
    """Set ``app`` up and serve it with ``limits``, on ``sock`` (bound already) or ``host:port``; OSError when the
    port cannot be bound (the runner is cleaned up then)."""
    runner = web.AppRunner(
        app, access_log=None, keepalive_timeout=limits.header_timeout, lingering_time=limits.lingering
    )
    await runner.setup()
    site = CappedSite(runner, host=host, port=port, sock=sock, ssl_context=ssl_context, limits=limits, name=name)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner's first site listens on (for tests and demos that ask for port 0)."""
    return int(runner.addresses[0][1])


async def serve_until_signal(runners: list[web.AppRunner]) -> None:
    """Wait for SIGINT or SIGTERM, then close the listeners, the last started first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
