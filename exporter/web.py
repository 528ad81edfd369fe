"""HTTP face of the exporter: thin handlers for ``/metrics``, ``/``, ``/runbook``, ``/healthz``, ``/readyz`` and
``/-/reload`` (the pages themselves are pages.py's), and the web config file kept live (basic auth, headers).

``/metrics`` writes the parts exposition.py's renderer hands it, in slices, never concatenated into a second
copy of a large body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import os
import ssl
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import structlog
from aiohttp import web
from prometheus_client import exposition as text_format

from exporter.config import AEP_UI
from exporter.errors import ConfigError
from exporter.exposition import Format, MetricsRenderer
from exporter.flowpage import flow_json, flow_page
from exporter.pages import flow_path, landing_page, runbook_page
from exporter.values import Snapshot
from exporter.webconfig import WebConfig, load_web_config

log = structlog.get_logger(__name__)

WRITE_CHUNK = 256 * 1024
"""/metrics is written in slices of this size, so a slow reader never makes the transport copy a 40 MB body."""


def wants_openmetrics(accept: str) -> bool:
    """Whether the ``Accept`` header asks for OpenMetrics, as prometheus-client decides it."""
    _encoder, content_type = text_format.choose_encoder(accept)
    return content_type.startswith("application/openmetrics-text")


def is_ready(snapshot: Snapshot) -> bool:
    """Ready once every sandbox has had one successful poll."""
    return all(sb.last_success_s is not None for sb in snapshot.sandboxes)


def _metrics_endpoint(renderer: MetricsRenderer) -> Handler:
    """``GET /metrics``: the format the ``Accept`` header asks for, gzipped when accepted, written in slices."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        parts = await renderer.render_parts(openmetrics=openmetrics, gzip=gzip)
        content_type = Format.of(openmetrics=openmetrics).content_type
        headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(p) for p in parts)
        await response.prepare(request)
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(view), WRITE_CHUNK):
                await response.write(view[start : start + WRITE_CHUNK])  # waits for the reader: bounded buffering
        await response.write_eof()
        return response

    return metrics


def _wants_json(request: web.Request) -> bool:
    """``?format=json``, or an Accept header that prefers JSON to HTML."""
    if request.query.get("format") == "json":
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _add_flow_pages(
    app: web.Application, snapshot: Callable[[], Snapshot], clock: Callable[[], float], aep_ui: str
) -> None:
    """``/flows/<sandbox>/<flow id>`` (HTML, or JSON when asked) and ``/runs/<run id>`` (to the run's row)."""

    async def flow(request: web.Request) -> web.Response:
        key = (request.match_info["sandbox"], request.match_info["flow_id"])
        state = next((s for s in snapshot().flows if s.key == key), None)
        if state is None:
            return web.Response(status=404, text="no such flow here: see the landing page (/) for the flows tracked\n")
        try:
            if _wants_json(request):
                body = json.dumps(flow_json(state, aep_ui=aep_ui), ensure_ascii=True, indent=1)
                return web.Response(text=body + "\n", content_type="application/json")
            page = flow_page(state, now=clock(), aep_ui=aep_ui).encode("utf-8", "replace")
        except Exception as exc:  # noqa: BLE001 -- model.py validated the data; whatever slips through is no 500
            log.error("flow_page_failed", sandbox=state.sandbox, flow_id=state.flow_id, error=type(exc).__name__)  # noqa: TRY400 -- a traceback could quote the value
            return web.Response(text="this flow's runs could not be shown (see the log); /metrics has its series\n")
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def run(request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        for state in snapshot().flows:
            if any(r.id == run_id for r in state.recent_runs):
                anchor = urllib.parse.quote(f"run-{run_id}", safe="")
                raise web.HTTPFound(f"{flow_path(state.sandbox, state.flow_id)}#{anchor}")
        return web.Response(
            status=404, text="no such run among the flows' newest runs: see the landing page (/) for the flows\n"
        )

    app.router.add_get("/flows/{sandbox}/{flow_id}", flow)
    app.router.add_get("/runs/{run_id}", run)


def create_web_app(
    *,
    renderer: MetricsRenderer,
    snapshot: Callable[[], Snapshot],
    security: WebSecurity | None = None,
    reload: Callable[[], Awaitable[bool]] | None = None,
    clock: Callable[[], float] = time.time,
    clock_note: str = "",
    aep_ui: str = AEP_UI,
) -> web.Application:
    """The aiohttp application: the endpoints (the landing page on ``clock``, and ``/runbook``), the web config
    file's basic auth and headers when ``security`` is given, and ``POST /-/reload`` when ``reload`` is given
    (else 403, as Prometheus answers when its lifecycle endpoints are off)."""

    metrics = _metrics_endpoint(renderer)

    async def index(_request: web.Request) -> web.Response:
        # Every string on the page was validated in model.py; "replace" keeps a page up whatever slips through.
        body = landing_page(snapshot(), now=clock(), clock_note=clock_note).encode("utf-8", "replace")
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    async def runbook(_request: web.Request) -> web.Response:
        return web.Response(text=runbook_page(), content_type="text/html", charset="utf-8")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if is_ready(snapshot()):
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: not every sandbox has been polled successfully yet\n")

    async def reload_handler(_request: web.Request) -> web.Response:
        assert reload is not None  # noqa: S101 -- only routed when given
        if await reload():
            return web.Response(text="config reloaded\n")
        return web.Response(
            status=500,
            text="config reload failed: the previous config is still in use "
            "(see the log and aep_exporter_config_last_reload_successful)\n",
        )

    async def reload_disabled(_request: web.Request) -> web.Response:
        return web.Response(status=403, text="Lifecycle API is not enabled (server.enable_lifecycle).\n")

    app = web.Application(middlewares=[security_middleware(security)] if security is not None else [])
    if security is not None:
        app.on_response_prepare.append(lambda _request, response: add_headers(security, response))
    app.router.add_post("/-/reload", reload_handler if reload is not None else reload_disabled)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/runbook", runbook)
    _add_flow_pages(app, snapshot, clock, aep_ui)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


# --- the web config file, live: re-read on change, basic auth, headers -----------------------------------------
# Re-read when it changes (checked on every request, as exporter-toolkit re-reads it), on SIGHUP and on
# POST /-/reload: a rotated or removed password stops working at once; a rotated certificate and key are loaded
# for new connections. A file that becomes invalid fails closed (500) until it is fixed, logged once.
# Basic auth applies to every endpoint but /healthz (liveness probes carry no credentials). bcrypt runs on its
# own two threads, never the event loop's default pool, and each answer (success or failure) is remembered by a
# SHA-256 of the password, so a flood of wrong passwords cannot slow authenticated scrapes. Unknown users are
# checked against a dummy hash (made on first use), so timing does not tell which user names exist. A password
# over bcrypt's 72 bytes is simply wrong (401).

UNPROTECTED = frozenset({"/healthz"})
BCRYPT_MAX_BYTES = 72
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.cache
def _dummy_hash() -> bytes:
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))


class WebSecurity:
    """The live web config: re-read when the file changes (checked per request), or on ``reload()``."""

    def __init__(self, path: Path | None, config: WebConfig) -> None:
        self.path = path
        self.config = config
        self.broken: str | None = None
        self.generation = 0  # bumped at each change of users: auth caches key on it
        self._signature = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            info = os.stat(self.path)
        except OSError:
            return (-1, -1, -1)
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the file if it changed (or ``force``); an invalid file fails closed until fixed."""
        if self.path is None:
            return
        signature = self._stat()
        if not force and signature == self._signature:
            return
        self._signature = signature
        try:
            new = load_web_config(self.path)
        except ConfigError as exc:
            self.broken = "; ".join(exc.problems)
            self.generation += 1
            log.error(  # noqa: TRY400 -- the problems are the message
                "web_config_invalid",
                path=str(self.path),
                problems=list(exc.problems),
                hint="requests get 500 until the file is fixed",
            )
            return
        self.broken = None
        self.generation += 1
        if self.config.ssl_context is not None and new.cert_files is not None:
            try:  # new connections present the new certificate
                self.config.ssl_context.load_cert_chain(*new.cert_files)
            except (ssl.SSLError, OSError) as exc:
                log.error("web_certificate_reload_failed", error=str(exc))  # noqa: TRY400 -- one line, no traceback
        if (new.ssl_context is None) != (self.config.ssl_context is None):
            log.warning("web_tls_change_needs_restart", path=str(self.path))
        self.config = WebConfig(
            ssl_context=self.config.ssl_context, users=new.users, headers=new.headers, cert_files=new.cert_files
        )
        log.info("web_config_reloaded", path=str(self.path), users=len(new.users))


def security_middleware(security: WebSecurity, *, cache_size: int = 4096) -> Any:
    """An aiohttp middleware: the web config re-read on change, its headers added, and HTTP basic auth on every
    path but /healthz when the file has users."""
    answers: OrderedDict[tuple[int, str, bytes], bool] = OrderedDict()
    bcrypt_pool = ThreadPoolExecutor(2, thread_name_prefix="bcrypt")

    def check(users: Mapping[str, bytes], user: str, password: bytes) -> bool:
        if len(password) > BCRYPT_MAX_BYTES:
            return False  # bcrypt refuses longer ones: a wrong password, not a server error
        hashed = users.get(user)
        ok = bcrypt.checkpw(password, hashed if hashed is not None else _dummy_hash())
        return ok and hashed is not None

    async def authorized(request: web.Request) -> bool:
        users = security.config.users
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        if not sep:
            return False
        key = (security.generation, user, hashlib.sha256(password.encode()).digest())
        if key in answers:
            answers.move_to_end(key)
            return answers[key]
        ok = await asyncio.get_running_loop().run_in_executor(bcrypt_pool, check, users, user, password.encode())
        answers[key] = ok
        if len(answers) > cache_size:
            answers.popitem(last=False)
        return ok

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        security.refresh()
        if security.broken is not None and request.path not in UNPROTECTED:
            return web.Response(status=500, text="web config file is invalid: see the exporter's log\n")
        if security.config.users and request.path not in UNPROTECTED and not await authorized(request):
            return web.Response(
                status=401,
                text="Unauthorized\n",
                headers={"WWW-Authenticate": 'Basic realm="aep-flow-exporter", charset="UTF-8"'},
            )
        return await handler(request)

    return middleware


async def add_headers(security: WebSecurity, response: web.StreamResponse) -> None:
    """``http_server_config.headers`` on every response (an ``on_response_prepare`` hook: streamed ones too)."""
    for name, text in security.config.headers.items():
        response.headers[name] = text
