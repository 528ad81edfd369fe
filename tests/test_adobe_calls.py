"""Adobe calls cannot be turned against the exporter: no redirect is followed, answers are bounded before and
after decompression, deep JSON and unforeseen errors are failed polls that every output shows, and upstream
error text never carries the client secret or a token."""

from __future__ import annotations

import json
import resource
import zlib
from collections.abc import Iterable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from exporter.auth import TokenProvider
from exporter.client import FlowServiceClient
from exporter.config import MetricsConfig, PollConfig
from exporter.errors import ConfigError
from exporter.poller import SandboxPoller
from exporter.selfmetrics import SelfMetrics
from exporter.simulator import Credentials
from exporter.tracker import Tracker
from exporter.values import FlowState
from tests.helpers import parse_samples, pick, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter


def bomb(inflated: int, *, gzip: bool) -> bytes:
    """A compressed body of ``inflated`` zero bytes (about a thousandth of that on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    parts = [packer.compress(chunk) for _ in range(inflated >> 20)]
    return b"".join(parts) + packer.flush()


async def poll_and_look(sim: Sim, **poll: object) -> tuple[str, str, list[dict[str, object]]]:
    """One exporter over the simulator: a first good poll, one more, then /metrics, / and the log lines."""
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",), **poll), world=sim.world)
    server = await serve(exporter)
    try:
        with capture_logs() as logs:
            await exporter.poll_once()
            _s, text, _h = await scrape(server)
            _s, page, _h = await scrape(server, "/")
    finally:
        await server.close()
        await exporter.close()
    return text, page, logs


async def test_ims_redirect_to_another_origin_is_refused_and_the_secret_never_sent(sim: Sim) -> None:
    """A 307 from the token endpoint is not followed (the POST carries the client secret); the error names the
    redirect's host."""
    stolen: list[str] = []

    async def steal(request: web.Request) -> web.Response:
        stolen.append(await request.text())
        return web.json_response({"access_token": "x", "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/steal", steal)
    evil = TestServer(app, host="127.0.0.1")
    await evil.start_server()
    try:
        sim.simulator.fail_next("token", 307, times=5, headers={"Location": str(evil.make_url("/steal"))})
        _text, page, logs = await poll_and_look(sim)
    finally:
        await evil.close()
    assert stolen == []
    assert "redirect to 127.0.0.1" in page
    assert any(e.get("redirect_to") == "127.0.0.1" for e in logs)


async def test_flow_service_redirect_is_refused_with_the_host_named(sim: Sim) -> None:
    """A 302 from /flows is not followed; the poll fails with an error naming the Location's host."""
    sim.simulator.fail_next("flows", 302, headers={"Location": "https://elsewhere.example/flows"})
    text, page, _logs = await poll_and_look(sim)
    assert "redirect to elsewhere.example refused" in page
    assert value(parse_samples(text), "aep_exporter_poll_failures_total", sandbox="prod") == 1


async def test_answer_over_the_size_cap_fails_that_request_clearly(sim: Sim) -> None:
    """An answer larger than poll.max_response_bytes fails with a message naming the cap; memory is not spent."""
    huge = json.dumps({"items": [], "_links": {}, "pad": "x" * 300_000})
    sim.simulator.fail_next("flows", 200, body=huge)
    text, page, _logs = await poll_and_look(sim, max_response_bytes=256 * 1024)
    assert "over the 262144-byte cap (poll.max_response_bytes)" in page
    assert value(parse_samples(text), "aep_exporter_poll_failures_total", sandbox="prod") == 1


async def test_gzip_and_deflate_bombs_fail_at_the_inflated_cap_with_memory_bounded(sim: Sim) -> None:
    """A gzip body inflating to 1 GiB and a deflate one to 512 MiB fail at the 32 MiB cap; the process's peak
    memory grows by far less than what they would inflate to."""
    gzip_bomb, deflate_bomb = bomb(1 << 30, gzip=True), bomb(1 << 29, gzip=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for body, encoding in ((gzip_bomb, "gzip"), (deflate_bomb, "deflate")):
        sim.simulator.fail_next("flows", 200, body=body, headers={"Content-Encoding": encoding})
        text, page, _logs = await poll_and_look(sim)
        assert "inflates past the 33554432-byte cap" in page, encoding
        assert value(parse_samples(text), "aep_exporter_poll_failures_total", sandbox="prod") == 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, grown_mib


async def test_deeply_nested_json_is_a_failed_poll_or_a_down_flow(sim: Sim) -> None:
    """JSON nested 100,000 deep in /flows fails the poll (counted, shown); in /runs it marks that flow down."""
    nested = "[" * 100_000 + "]" * 100_000
    sim.simulator.fail_next("flows", 200, body=nested)
    text, page, _logs = await poll_and_look(sim)
    assert "nested too deeply" in page
    assert value(parse_samples(text), "aep_exporter_poll_failures_total", sandbox="prod") == 1

    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",)), world=sim.world)
    server = await serve(exporter)
    try:
        sim.simulator.fail_next("runs", 200, body=nested)
        assert await exporter.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
        await exporter.close()
    ups = pick(parse_samples(text), "aep_exporter_flow_up", sandbox="prod")
    assert sorted(ups.values()) == [0.0] + [1.0] * (len(ups) - 1)


class ExplodingStore:
    """A store whose writes fail with an error no code path foresees (a stand-in for a bug)."""

    def load(
        self,
        buckets: tuple[float, ...],  # noqa: ARG002 -- the Store protocol's signature
        now_ms: int | None = None,  # noqa: ARG002
    ) -> tuple[list[FlowState], list[object]]:
        return [], []

    def save(self, state: FlowState) -> None:  # noqa: ARG002 -- the Store protocol's signature
        raise RuntimeError("disk on fire")

    def delete(self, keys: Iterable[tuple[str, str]]) -> None:  # noqa: ARG002 -- the Store protocol's signature
        return None

    def get_meta(self, key: str) -> str | None:  # noqa: ARG002 -- the Store protocol's signature
        return None

    def all_meta(self) -> dict[str, str]:
        return {}

    def set_meta(self, key: str, value: str) -> None:  # noqa: ARG002 -- small values are written fine
        return None

    def close(self) -> None:
        return None


async def test_an_unforeseen_exception_in_a_cycle_is_a_failed_poll_everywhere(sim: Sim) -> None:
    """An exception nobody foresaw ends the cycle as a failed poll: poll_failures_total, flow_up 0 and the
    sandbox's status say so, and its text (which could quote anything) is not shown, only its type."""
    config = make_config(sim.url, sandboxes=("prod",))
    registry = CollectorRegistry()
    metrics = SelfMetrics(registry)
    tracker = Tracker(ExplodingStore(), ["prod"])  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        auth = TokenProvider(
            session=session,
            url=config.adobe.ims_token_url,
            client_id=config.adobe.client_id,
            client_secret=config.adobe.client_secret,
            scopes="openid",
            metrics=metrics,
        )
        client = FlowServiceClient(
            session=session,
            base_url=config.adobe.flow_service_url,
            auth=auth,
            client_id=config.adobe.client_id,
            org_id=config.adobe.org_id,
            metrics=metrics,
            requests_per_second=1000.0,
        )
        poller = SandboxPoller(
            sandbox=config.sandboxes[0],
            poll=config.poll,
            metrics=MetricsConfig(max_error_codes_per_flow=5, duration_buckets=(60.0,), max_flows_per_sandbox=100),
            shard=config.shard,
            client=client,
            tracker=tracker,
            self_metrics=metrics,
            clock=lambda: sim.world.now_ms() / 1000.0,
        )
        assert await poller.cycle() is False
    status = tracker.snapshot().sandboxes[0]
    assert status.last_ok is False and status.last_error == "unexpected RuntimeError"
    assert registry.get_sample_value("aep_exporter_poll_failures_total", {"sandbox": "prod"}) == 1


async def test_upstream_error_text_never_shows_the_secret_or_a_token(sim: Sim) -> None:
    """An API error whose title quotes the client secret and the access token shows <redacted> in their place
    on the landing page, in the logs and in metrics."""
    secret = Credentials().client_secret
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",)), world=sim.world)
    server = await serve(exporter)
    try:
        with capture_logs() as logs:
            assert await exporter.poll_once()
            token = next(iter(sim.simulator.tokens))
            title = f"token {token} is bad, and so is {secret}"
            sim.simulator.fail_next("flows", 400, body=json.dumps({"type": "x/FLOW-9-400", "title": title}))
            assert not await exporter.poll_once()
            _s, text, _h = await scrape(server)
            _s, page, _h = await scrape(server, "/")
    finally:
        await server.close()
        await exporter.close()
    everything = page + text + json.dumps(logs, default=str)
    assert "&lt;redacted&gt;" in page  # the landing page escapes it as any text
    assert token not in everything and secret not in everything


def test_max_response_bytes_takes_sizes_with_units() -> None:
    """poll.max_response_bytes accepts 32MiB, 500KiB, 1GB or a whole number of bytes; below 1 KiB is refused."""
    from exporter.configfile import parse_config

    base = {
        "adobe": {"client_id": "c", "client_secret": "s", "org_id": "o@AdobeOrg"},
        "sandboxes": [{"name": "prod", "discover": {"enabled": True}}],
    }
    for raw, size in (("32MiB", 32 << 20), ("500KiB", 500 << 10), ("1GB", 10**9), (4096, 4096)):
        assert parse_config({**base, "poll": {"max_response_bytes": raw}}).poll.max_response_bytes == size
    assert PollConfig().max_response_bytes == 32 << 20
    with pytest.raises(ConfigError, match=r"poll\.max_response_bytes"):
        parse_config({**base, "poll": {"max_response_bytes": "12"}})


async def test_an_ims_refusal_shows_adobes_description_redacted_with_what_to_do(sim: Sim) -> None:
    """IMS answers invalid_scope with an error_description that quotes the client secret: the sandbox's error
    shows the error, the description with the secret as <redacted>, and the hint to copy the console's scopes."""
    secret = Credentials().client_secret
    exporter = make_exporter(make_config(sim.url, sandboxes=("prod",), retries=0), world=sim.world)
    body = json.dumps({"error": "invalid_scope", "error_description": f"scope 'x' is not allowed for {secret}"})
    sim.simulator.fail_next("token", 400, body=body)
    try:
        await exporter.start()
        assert not await exporter.poll_once()
        error = exporter.snapshot().sandboxes[0].last_error or ""
    finally:
        await exporter.close()
    assert "HTTP 400 (invalid_scope): scope 'x' is not allowed for <redacted>" in error
    assert "copy the scopes the Developer Console lists" in error
    assert secret not in error
