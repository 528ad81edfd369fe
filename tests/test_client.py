"""The Flow Service client and IMS auth against the simulator: pagination, retries, backoff, token renewal."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from exporter.auth import TokenProvider
from exporter.backoff import retry_after_seconds
from exporter.client import FlowServiceClient
from exporter.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    PayloadError,
    ServerError,
    ThrottledError,
    TransportError,
)
from exporter.selfmetrics import SelfMetrics
from exporter.simulator import Credentials
from exporter.simulator.server import API_PREFIX, IMS_PATH
from exporter.values import Secret
from tests.simulation import Sim, make_world, start_sim


@dataclass
class Rig:
    """A client wired to the simulator, with sleeps recorded instead of slept."""

    sim: Sim
    client: FlowServiceClient
    auth: TokenProvider
    metrics: SelfMetrics
    registry: CollectorRegistry
    sleeps: list[float] = field(default_factory=list)
    clock: list[float] = field(default_factory=lambda: [1_000_000.0])

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def build_rig(
    sim: Sim,
    session: aiohttp.ClientSession,
    *,
    timeout: float = 5.0,
    retries: int = 3,
    secret: str = Credentials().client_secret,
) -> Rig:
    registry = CollectorRegistry()
    metrics = SelfMetrics(registry)
    sleeps: list[float] = []
    clock = [1_000_000.0]

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    creds = Credentials()
    auth = TokenProvider(
        session=session,
        url=f"{sim.url}{IMS_PATH}",
        client_id=creds.client_id,
        client_secret=Secret(secret),
        scopes="openid",
        metrics=metrics,
        backoff_base=0.001,
        clock=lambda: clock[0],
    )
    client = FlowServiceClient(
        session=session,
        base_url=f"{sim.url}{API_PREFIX}",
        auth=auth,
        client_id=creds.client_id,
        org_id=creds.org_id,
        metrics=metrics,
        timeout=timeout,
        retries=retries,
        requests_per_second=1000,
        backoff_base=0.5,
        backoff_cap=8.0,
        sleep=fake_sleep,
    )
    return Rig(sim, client, auth, metrics, registry, sleeps, clock)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def rig(sim: Sim, session: aiohttp.ClientSession) -> Rig:
    return build_rig(sim, session)


async def collect(rig: Rig, sandbox: str, path: str, params: list[tuple[str, str]]) -> list[list[object]]:
    return [page async for page in rig.client.pages(sandbox, path.strip("/"), path, params)]


async def test_pagination_follows_continuation_tokens_and_resends_filters(session: aiohttp.ClientSession) -> None:
    """250 flows come back in 3 pages of at most 100; the '=' in tokens survives and filters are resent."""
    handle, server = await start_sim(make_world(sandboxes=("prod",), flows_per_sandbox=250))
    try:
        rig = build_rig(handle, session)
        pages = await collect(rig, "prod", "/flows", [("property", "state==enabled")])
        assert [len(p) for p in pages] == [100, 100, 50]
        ids = [item["id"] for page in pages for item in page]  # type: ignore[index]
        assert len(set(ids)) == 250
        queries = [r["query"] for r in handle.simulator.request_log if r["endpoint"] == "flows"]
        assert len(queries) == 3
        assert all("property=state%3D%3Denabled" in q for q in queries)  # own filter resent with every token
        assert all("continuationToken=" in q for q in queries[1:])
        tokens = [q.split("continuationToken=")[1].split("&")[0] for q in queries[1:]]
        assert all(t.endswith(("%3D", "=")) for t in tokens)  # padding '=' kept as part of the value
    finally:
        await server.close()


async def test_429_with_retry_after_waits_that_long_then_succeeds(rig: Rig) -> None:
    """A 429 carrying Retry-After is retried after exactly that many seconds."""
    rig.sim.simulator.fail_next("flows", 429, times=2, retry_after="7")
    pages = await collect(rig, "prod", "/flows", [])
    assert len(pages[0]) == 6
    assert rig.sleeps == [7.0, 7.0]
    assert rig.metric("aep_exporter_api_retries_total", endpoint="flows", reason="throttled") == 2
    assert rig.metric("aep_exporter_api_requests_total", sandbox="prod", endpoint="flows", code="429") == 2
    assert rig.metric("aep_exporter_api_requests_total", sandbox="prod", endpoint="flows", code="200") == 1


async def test_429_without_retry_after_backs_off_exponentially_with_full_jitter(rig: Rig) -> None:
    """Without Retry-After, the n-th wait is drawn from [0, base * 2**n], capped."""
    rig.sim.simulator.fail_next("flows", 429, times=3)
    await collect(rig, "prod", "/flows", [])
    assert len(rig.sleeps) == 3
    for attempt, slept in enumerate(rig.sleeps):
        assert 0.0 <= slept <= min(8.0, 0.5 * 2**attempt)


async def test_persistent_429_gives_up_after_bounded_attempts(rig: Rig) -> None:
    """A 429 that never ends raises ThrottledError after retries + 1 attempts."""
    rig.sim.simulator.fail_next("flows", 429, times=10)
    with pytest.raises(ThrottledError):
        await collect(rig, "prod", "/flows", [])
    assert rig.sim.simulator.requests["flows"] == 4


async def test_server_error_then_success_is_retried(rig: Rig) -> None:
    """A 503 followed by success returns the data, counting one server_error retry."""
    rig.sim.simulator.fail_next("runs", 503)
    pages = await collect(rig, "prod", "/runs", [])
    assert pages and pages[0]
    assert rig.metric("aep_exporter_api_retries_total", endpoint="runs", reason="server_error") == 1


async def test_persistent_5xx_raises_server_error(rig: Rig) -> None:
    """5xx on every attempt raises ServerError with the status."""
    rig.sim.simulator.fail_next("runs", 500, times=4)
    with pytest.raises(ServerError) as info:
        await collect(rig, "prod", "/runs", [])
    assert info.value.status == 500


async def test_timeout_is_retried_then_succeeds(sim: Sim, session: aiohttp.ClientSession) -> None:
    """An answer slower than the timeout is retried (reason timeout), and the retry's answer is used."""
    rig = build_rig(sim, session, timeout=0.3)
    sim.simulator.fail_next("flows", 200, delay_s=1.0)
    pages = await collect(rig, "prod", "/flows", [])
    assert len(pages[0]) == 6
    assert rig.metric("aep_exporter_api_retries_total", endpoint="flows", reason="timeout") == 1
    assert rig.metric("aep_exporter_api_requests_total", sandbox="prod", endpoint="flows", code="error") == 1


async def test_timeouts_on_every_attempt_raise_transport_error(sim: Sim, session: aiohttp.ClientSession) -> None:
    """Timeouts on every attempt raise TransportError, never an aiohttp or asyncio exception."""
    rig = build_rig(sim, session, timeout=0.2, retries=1)
    sim.simulator.fail_next("flows", 200, times=2, delay_s=0.6)
    with pytest.raises(TransportError) as info:
        await collect(rig, "prod", "/flows", [])
    assert info.value.reason == "timeout"


async def test_connection_refused_raises_transport_error(session: aiohttp.ClientSession) -> None:
    """A closed port gives TransportError(connection) after the retries."""
    handle, server = await start_sim(make_world())
    rig = build_rig(handle, session, retries=1)
    await rig.auth.token()
    await server.close()
    with pytest.raises(TransportError) as info:
        await collect(rig, "prod", "/flows", [])
    assert info.value.reason == "connection"


async def test_401_renews_the_token_once_and_retries(rig: Rig) -> None:
    """A revoked token gives 401; the client renews it once and the request then succeeds."""
    await collect(rig, "prod", "/flows", [])
    rig.sim.simulator.revoke_tokens()
    pages = await collect(rig, "prod", "/flows", [])
    assert len(pages[0]) == 6
    assert rig.sim.simulator.requests["token"] == 2
    assert rig.metric("aep_exporter_api_retries_total", endpoint="flows", reason="unauthorized") == 1


async def test_second_401_in_a_row_is_an_error_not_a_loop(rig: Rig) -> None:
    """If the renewed token is refused too, the request fails with ApiError 401 after one renewal."""
    rig.sim.simulator.fail_next("flows", 401, times=2)
    with pytest.raises(ApiError) as info:
        await collect(rig, "prod", "/flows", [])
    assert info.value.status == 401
    assert rig.sim.simulator.requests["token"] == 2


async def test_other_4xx_are_not_retried(rig: Rig) -> None:
    """A 404 raises NotFoundError at once (a sandbox that does not exist too: Adobe's 2100-404); a 403 (a sandbox
    the credential may not use) raises ApiError; no retry in any case."""
    with pytest.raises(NotFoundError):
        await rig.client.get("prod", "flow", "/flows/does-not-exist", [])
    with pytest.raises(NotFoundError, match="Sandbox 'nosuchsandbox' does not exist"):
        await rig.client.get("nosuchsandbox", "flows", "/flows", [])
    rig.sim.simulator.faults.forbidden_sandboxes = ["dev"]
    with pytest.raises(ApiError) as info:
        await rig.client.get("dev", "flows", "/flows", [])
    assert info.value.status == 403 and "View Sources" in str(info.value)
    assert rig.sleeps == []


async def test_malformed_json_raises_payload_error(rig: Rig) -> None:
    """A 200 whose body is not JSON raises PayloadError."""
    rig.sim.simulator.faults.malformed_rate = 1.0
    with pytest.raises(PayloadError):
        await collect(rig, "prod", "/flows", [])


async def test_token_is_renewed_before_it_expires(rig: Rig) -> None:
    """The token is reused until 90% of its lifetime has passed, then renewed without any 401."""
    rig.sim.simulator.token_lifetime_s = 1000
    first = await rig.auth.token()
    rig.clock[0] += 899
    assert await rig.auth.token() == first
    rig.clock[0] += 2  # 901 s: past 90 % of 1000
    second = await rig.auth.token()
    assert second != first
    assert rig.sim.simulator.requests["token"] == 2
    assert rig.metric("aep_exporter_token_requests_total") == 2
    assert rig.metric("aep_exporter_token_expiry_timestamp_seconds") == pytest.approx(rig.clock[0] + 1000)


async def test_concurrent_callers_share_one_renewal(rig: Rig) -> None:
    """Twenty concurrent requests with no token yet cause exactly one token request."""
    results = await asyncio.gather(*(rig.client.get("prod", "flows", "/flows", []) for _ in range(20)))
    assert len(results) == 20
    assert rig.sim.simulator.requests["token"] == 1
    rig.sim.simulator.revoke_tokens()
    await asyncio.gather(*(rig.client.get("prod", "flows", "/flows", []) for _ in range(20)))
    assert rig.sim.simulator.requests["token"] == 2  # twenty 401s, one shared renewal


async def test_bad_secret_fails_with_auth_error_that_never_shows_the_secret(
    sim: Sim, session: aiohttp.ClientSession
) -> None:
    """Refused credentials raise AuthError; neither the message nor any log line contains the secret."""
    secret = "THE-WRONG-SECRET-1234"
    rig = build_rig(sim, session, secret=secret)
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        await rig.client.get("prod", "flows", "/flows", [])
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert secret not in repr(logs)
    assert "invalid_client" in str(info.value)
    assert rig.metric("aep_exporter_token_request_failures_total") == 1


async def test_ims_outage_is_retried_then_reported(sim: Sim, session: aiohttp.ClientSession) -> None:
    """IMS answering 503 is retried a bounded number of times, then AuthError."""
    rig = build_rig(sim, session)
    sim.simulator.faults.ims_down = True
    with pytest.raises(AuthError):
        await rig.auth.token()
    assert sim.simulator.requests["token"] == 3


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After is read as seconds or as an HTTP date; garbage is ignored; huge values are capped."""
    now = time.time()
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("99999") == 300.0
