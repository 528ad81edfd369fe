"""HTTP face of the exporter: ``/metrics``, ``/``, ``/healthz``, ``/readyz``.

``/metrics`` = the flow block + the self-metrics block. The flow block is what prometheus-client renders
from the snapshot's families; it is rendered once per snapshot version and format (off the event loop)
and cached, so a scrape costs the same with 10 flows or 5,000. Only the small self-metrics block is
rendered per scrape. Gzip reuses a compressor that has already eaten the cached block: a copy of it
compresses just the per-scrape tail, and the result is one ordinary gzip stream.
"""

from __future__ import annotations

import asyncio
import html
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_format

from exporter import __version__
from exporter.collector import CollectorOptions, build_families
from exporter.tracker import Snapshot

OPENMETRICS_EOF = b"# EOF\n"
TEXT_TYPE = text_format.CONTENT_TYPE_PLAIN_0_0_4  # our names are legacy-valid: same bytes, widest support
OPENMETRICS_TYPE = openmetrics_format.CONTENT_TYPE_LATEST
LANDING_FLOW_ROWS = 1000


class _Families:
    """The ``collect()`` shape prometheus-client's renderers expect, over a ready list of families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def render_flow_block(snapshot: Snapshot, options: CollectorOptions, openmetrics: bool) -> bytes:
    """The flow families as prometheus-client renders them (OpenMetrics without its ``# EOF``)."""
    families = _Families(build_families(snapshot, options))
    if not openmetrics:
        return text_format.generate_latest(families)
    body: bytes = openmetrics_format.generate_latest(families)  # type: ignore[no-untyped-call]
    return body[: -len(OPENMETRICS_EOF)] if body.endswith(OPENMETRICS_EOF) else body


@dataclass
class _Rendered:
    version: int
    body: bytes
    gzip_prefix: bytes | None = None
    gzip_state: zlib._Compress | None = None  # a zlib compressor that has consumed ``body``; copied per gzip scrape


class MetricsRenderer:
    """Caches the flow block per snapshot version and format; see the module docstring."""

    def __init__(self, source: Callable[[], Snapshot], options: CollectorOptions,
                 self_registry: CollectorRegistry) -> None:
        self._source = source
        self._options = options
        self._self_registry = self_registry
        self._cache: dict[bool, _Rendered] = {}
        self._locks = {False: asyncio.Lock(), True: asyncio.Lock()}
        self.renders = 0

    def set_options(self, options: CollectorOptions) -> None:
        """New cardinality controls (config reload): the cache is dropped."""
        self._options = options
        self._cache.clear()

    async def _flow_block(self, openmetrics: bool) -> _Rendered:
        snapshot = self._source()
        cached = self._cache.get(openmetrics)
        if cached is not None and cached.version == snapshot.version:
            return cached
        async with self._locks[openmetrics]:
            snapshot = self._source()
            cached = self._cache.get(openmetrics)
            if cached is not None and cached.version == snapshot.version:
                return cached
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, render_flow_block, snapshot, self._options, openmetrics)
            self.renders += 1
            rendered = _Rendered(version=snapshot.version, body=body)
            self._cache[openmetrics] = rendered
            return rendered

    def _self_block(self, openmetrics: bool) -> bytes:
        if openmetrics:
            body: bytes = openmetrics_format.generate_latest(self._self_registry)  # type: ignore[no-untyped-call]
            return body
        return text_format.generate_latest(self._self_registry)

    async def render(self, *, openmetrics: bool, gzip: bool) -> bytes:
        """The whole ``/metrics`` body in the asked format."""
        block = await self._flow_block(openmetrics)
        tail = self._self_block(openmetrics)
        if not gzip:
            return block.body + tail
        if block.gzip_state is None:
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
            block.gzip_prefix = compressor.compress(block.body)
            block.gzip_state = compressor
        compressor = block.gzip_state.copy()
        assert block.gzip_prefix is not None  # noqa: S101 -- set together with gzip_state
        return block.gzip_prefix + compressor.compress(tail) + compressor.flush()


def wants_openmetrics(accept: str) -> bool:
    """Whether the ``Accept`` header asks for OpenMetrics, as prometheus-client decides it."""
    _encoder, content_type = text_format.choose_encoder(accept)
    return content_type.startswith("application/openmetrics-text")


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def landing_page(snapshot: Snapshot, *, title: str = "AEP Flow Exporter") -> str:
    """A small HTML page: version, links, each sandbox's last poll and each flow's newest run."""
    esc = html.escape
    rows = []
    for sb in snapshot.sandboxes:
        result = "not yet polled" if sb.last_ok is None else ("ok" if sb.last_ok else f"failed: {sb.last_error}")
        rows.append(f"<tr><td>{esc(sb.name)}</td><td>{sb.flows}</td><td>{sb.dropped}</td>"
                    f"<td>{esc(result)}</td><td>{_fmt_time(sb.last_success_s)}</td></tr>")
    flow_rows = []
    for state in snapshot.flows[:LANDING_FLOW_ROWS]:
        flow = state.flow
        last = state.last_run
        status = last.status if last else "no runs"
        ended = _fmt_time(last.ended_ms / 1000.0) if last and last.ended_ms is not None else "-"
        flow_rows.append(
            f"<tr><td>{esc(state.sandbox)}</td><td>{esc(flow.name if flow else '?')}</td>"
            f"<td><code>{esc(state.flow_id)}</code></td><td>{esc(flow.kind if flow else '?')}</td>"
            f"<td>{esc(flow.state if flow else '?')}</td><td class='{esc(status)}'>{esc(status)}</td>"
            f"<td>{ended}</td><td>{'yes' if state.up else 'no'}</td></tr>"
        )
    more = len(snapshot.flows) - LANDING_FLOW_ROWS
    note = f"<p>{more} more flows not shown; see /metrics.</p>" if more > 0 else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}.failed{{color:#b00}}.success{{color:#070}}</style>
</head><body>
<h1>{esc(title)}</h1>
<p>Version {esc(__version__)}. <a href="/metrics">Metrics</a> &middot; <a href="/healthz">Health</a>
&middot; <a href="/readyz">Readiness</a></p>
<h2>Sandboxes</h2>
<table><tr><th>Sandbox</th><th>Flows</th><th>Dropped</th><th>Last poll</th><th>Last success</th></tr>
{''.join(rows)}</table>
<h2>Flows</h2>
<table><tr><th>Sandbox</th><th>Name</th><th>Flow id</th><th>Kind</th><th>State</th><th>Last run</th>
<th>Ended</th><th>Up</th></tr>
{''.join(flow_rows)}</table>{note}
</body></html>
"""


def is_ready(snapshot: Snapshot) -> bool:
    """Ready once every sandbox has had one successful poll."""
    return all(sb.last_success_s is not None for sb in snapshot.sandboxes)


def create_web_app(*, renderer: MetricsRenderer, snapshot: Callable[[], Snapshot]) -> web.Application:
    """The aiohttp application serving the four endpoints."""

    async def metrics(request: web.Request) -> web.Response:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        body = await renderer.render(openmetrics=openmetrics, gzip=gzip)
        content_type = OPENMETRICS_TYPE if openmetrics else TEXT_TYPE
        headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=landing_page(snapshot()), content_type="text/html")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if is_ready(snapshot()):
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: not every sandbox has been polled successfully yet\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
