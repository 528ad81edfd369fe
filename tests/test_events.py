"""Adobe I/O Events end to end against the simulator: the journal and the signed webhook refresh flows at once,
counters stay equal to ground truth whatever the events do (lost, duplicated, reordered, early), and every
forged, foreign, wrong-key-host or replayed delivery is refused and counted."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from exporter.app import Exporter
from exporter.config import EventsConfig, WebhookConfig
from exporter.errors import PayloadError
from exporter.events import POSITION_KEY
from exporter.model import parse_event
from exporter.simulator.events import JOURNAL_PATH
from tests.helpers import assert_matches_truth, parse_samples, pick, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter

HOOK = "/adobe-events"


def with_events(sim: Sim, *, journal: bool = True, webhook: bool = False, state: str | None = None) -> Exporter:
    config = make_config(sim.url, state_path=state, interval=600.0)
    events = EventsConfig(journal_url=f"{sim.url}{JOURNAL_PATH}" if journal else None, journal_wait=0.05,
                          webhook=WebhookConfig(host="127.0.0.1", port=0, path=HOOK, public_key_base_url=sim.url)
                          if webhook else None)
    return make_exporter(dataclasses.replace(config, events=events), world=sim.world)


async def until(check: Callable[[], bool | Awaitable[bool]], seconds: float = 15.0) -> None:
    """Wait (bounded) until ``check`` holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def render(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_samples((await exporter.renderer.render(openmetrics=False, gzip=False)).decode())


async def counters(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    server = await serve(exporter)
    try:
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    return parse_samples(text)


def exact(exporter: Exporter, sim: Sim) -> Callable[[], Awaitable[bool]]:
    """True once every counter on /metrics equals ground truth."""
    async def check() -> bool:
        try:
            assert_matches_truth(await render(exporter), sim.world.truth())
        except AssertionError:
            return False
        return True
    return check


def caught_up(exporter: Exporter, sim: Sim) -> Callable[[], Awaitable[bool]]:
    """True once the exporter's stored journal position is the simulator's newest event."""
    async def check() -> bool:
        newest = len(sim.simulator.events.refresh()) - 1
        return await exporter.tracker.get_meta(POSITION_KEY) == str(newest)
    return check


async def test_journal_events_alone_bring_counters_to_ground_truth(sim: Sim) -> None:
    """After a first poll, runs end for two simulated hours and no poll runs (the interval is 10 minutes and
    none is called): the journal's events refresh each flow, and every counter equals ground truth."""
    exporter = with_events(sim)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        await exporter.start_events()
        await until(lambda: sim.simulator.requests["journal"] >= 1)
        before = sim.simulator.requests["runs"]
        sim.world.clock.advance(2 * 3600)
        await until(exact(exporter, sim))
        samples = await render(exporter)
    finally:
        await exporter.close()
    assert sim.simulator.requests["runs"] > before  # the events, not a poll, read the runs
    assert value(samples, "aep_exporter_events_total", source="journal", outcome="applied") >= 1
    assert value(samples, "aep_exporter_event_lag_seconds_count", source="journal") >= 1
    assert value(samples, "aep_exporter_journal_last_read_success_timestamp_seconds") is not None


async def test_counters_stay_exact_when_events_are_lost_duplicated_reordered_or_early(sim: Sim) -> None:
    """With a fifth of the events lost, a third duplicated, batches reordered and events published a minute
    before their run ends in /runs, events and polls together still count every run exactly once."""
    sim.simulator.events.faults = dataclasses.replace(sim.simulator.events.faults, drop=0.2, duplicate=0.3,
                                                      reorder=True, early_s=60.0)
    exporter = with_events(sim)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        await exporter.start_events()
        for _ in range(6):
            sim.world.clock.advance(1800)
            await until(caught_up(exporter, sim))  # every event published so far was read, then applied
            await exporter.router.idle()
        assert await exporter.poll_once()
        await exporter.router.idle()
        samples = await counters(exporter)
    finally:
        await exporter.close()
    assert_matches_truth(samples, sim.world.truth())
    assert value(samples, "aep_exporter_events_total", source="journal", outcome="duplicate") >= 1


async def test_a_restart_resumes_the_journal_where_it_stopped_and_an_expired_position_starts_over(
        sim: Sim, tmp_path: Path) -> None:
    """The position is kept in the state file: the next process asks for events after it. A position older than
    the journal keeps (410) is dropped, logged, and reading starts from the oldest event."""
    state = str(tmp_path / "s.db")
    first = with_events(sim, state=state)
    try:
        await first.start()
        await first.start_events()
        sim.world.clock.advance(3600)
        await until(lambda: bool(first.tracker._store.get_meta(POSITION_KEY)))
        position = await first.tracker.get_meta(POSITION_KEY)
    finally:
        await first.close()
    sim.simulator.request_log.clear()
    second = with_events(sim, state=state)
    try:
        await second.start()
        await second.start_events()
        await until(lambda: any(r["endpoint"] == "journal" for r in sim.simulator.request_log))
    finally:
        await second.close()
    first_query = next(r["query"] for r in sim.simulator.request_log if r["endpoint"] == "journal")
    assert first_query == f"since={position}"
    sim.simulator.request_log.clear()
    sim.world.clock.advance(2 * 3600)  # two hours of new events, of which the journal keeps the last 30 minutes:
    sim.simulator.events.faults.retention_ms = 30 * 60 * 1000  # the events after the stored position are gone
    third = with_events(sim, state=state)
    try:
        await third.start()
        await third.start_events()
        await until(lambda: len([r for r in sim.simulator.request_log if r["endpoint"] == "journal"]) >= 2)
    finally:
        await third.close()
    queries = [r["query"] for r in sim.simulator.request_log if r["endpoint"] == "journal"]
    assert queries[0].startswith("since=") and "since=" not in queries[1]


def test_events_of_every_known_shape_are_read_and_a_nameless_one_is_refused() -> None:
    """The flow (and run, sandbox) is found in body.data, in data, or in the run object; without an event id or
    a flow the event is invalid."""
    flow, run = "c9cef9cb-c934-4467-8ef9-cbc934546741", "9830305a-985f-47d0-b030-5a985fd7d004"
    shapes = [
        {"event_id": "e1", "event": {"body": {"data": {"flowId": flow, "flowRunId": run, "sandboxName": "prod"}}}},
        {"event_id": "e2", "data": {"flowId": flow, "runId": run}},
        {"event": {"body": {"eventId": "e3", "data": {"flow_id": flow}}}},
    ]
    events = [parse_event(shape) for shape in shapes]
    assert [e.id for e in events] == ["e1", "e2", "e3"]
    assert {e.flow_id for e in events} == {flow}
    assert (events[0].run_id, events[0].sandbox, events[1].run_id) == (run, "prod", run)
    for bad in ({"event": {"body": {"data": {"flowId": flow}}}}, {"event_id": "e4"}, [], {"event_id": "../x",
                                                                                         "flowId": flow}):
        with pytest.raises(PayloadError):
            parse_event(bad)


async def test_signed_webhook_deliveries_refresh_flows_and_counters_equal_ground_truth(sim: Sim) -> None:
    """The simulator delivers every event to the webhook, signed with its keys, some twice (retries): counters
    reach ground truth without a poll, and each retry is a duplicate."""
    sim.simulator.events.faults = dataclasses.replace(sim.simulator.events.faults, webhook_retry=0.5)
    exporter = with_events(sim, journal=False, webhook=True)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        await exporter.start_events()
        sim.simulator.events.webhook_url = f"http://127.0.0.1:{exporter.webhook_port}{HOOK}"
        sim.world.clock.advance(2 * 3600)
        await until(exact(exporter, sim))
        await until(lambda: sim.simulator.events._delivered == len(sim.simulator.events.refresh()))
        samples = await render(exporter)
    finally:
        await exporter.close()
    retries = sim.simulator.events.deliveries.get("retry", 0)
    assert retries >= 1
    assert value(samples, "aep_exporter_events_total", source="webhook", outcome="duplicate") == retries
    assert value(samples, "aep_exporter_event_lag_seconds_count", source="webhook") >= 1


async def test_forged_foreign_wrong_key_host_and_replayed_deliveries_are_refused_and_counted(sim: Sim) -> None:
    """A signature of another key, a body for another client id, a key path off the configured key host, an
    unsigned body and an oversized one are refused (401/413) and counted, never applied; a replay of a valid
    delivery is a duplicate; the handshake answers the challenge; the webhook listener serves nothing else."""
    exporter = with_events(sim, journal=False, webhook=True)
    events = sim.simulator.events
    try:
        await exporter.start()
        assert await exporter.poll_once()
        await exporter.start_events()
        url = f"http://127.0.0.1:{exporter.webhook_port}{HOOK}"
        flow = sim.world.flows["prod"][next(iter(sim.world.flows["prod"]))]
        payload = events.payload(flow.runs[-1])
        body = json.dumps(payload).encode()
        foreign = json.dumps({**payload, "recipient_client_id": "another-client"}).encode()
        off_host = {**events.signed(body), "x-adobe-public-key1-path": "//evil.example/key.pem",
                    "x-adobe-public-key2-path": "/../../etc/key.pem"}
        async with aiohttp.ClientSession() as session:
            async def post(data: bytes, headers: dict[str, str]) -> int:
                async with session.post(url, data=data, headers=headers) as resp:
                    return resp.status
            statuses = {
                "forged": await post(body, events.signed(body, forged=True)),
                "foreign": await post(foreign, events.signed(foreign)),
                "off_host": await post(body, off_host),
                "unsigned": await post(body, {"Content-Type": "application/json"}),
                "huge": await post(b"x" * (2 * 1024 * 1024), events.signed(b"x")),
                "valid": await post(body, events.signed(body)),
                "replay": await post(body, {**events.signed(body), "x-adobe-retry-count": "1"}),
            }
            async with session.get(url, params={"challenge": "abc123"}) as resp:
                challenge = (resp.status, await resp.text())
            async with session.get(url, params={"challenge": "abc123"}, headers={"Accept": "application/json"}) as r:
                challenge_json = await r.json()
            async with session.get(url.replace(HOOK, "/metrics")) as resp:
                metrics_status = resp.status
        await exporter.router.idle()
        samples = await render(exporter)
    finally:
        await exporter.close()
    assert statuses == {"forged": 401, "foreign": 401, "off_host": 401, "unsigned": 401, "huge": 413,
                        "valid": 200, "replay": 200}
    assert challenge == (200, "abc123") and challenge_json == {"challenge": "abc123"}
    assert metrics_status == 404
    outcomes = {dict(k)["outcome"]: v for k, v in pick(samples, "aep_exporter_events_total", source="webhook").items()}
    assert outcomes == {"applied": 1, "duplicate": 1, "untracked": 0, "rejected_signature": 3,
                        "rejected_recipient": 1, "invalid": 1}


async def test_an_event_for_an_untracked_flow_is_counted_and_ignored(sim: Sim) -> None:
    """A validly signed event for a flow this exporter does not track reads no runs and counts as untracked."""
    exporter = with_events(sim, journal=False, webhook=True)
    events = sim.simulator.events
    try:
        await exporter.start()
        assert await exporter.poll_once()
        await exporter.start_events()
        runs_before = sim.simulator.requests["runs"]
        flow = sim.world.flows["prod"][next(iter(sim.world.flows["prod"]))]
        payload = events.payload(flow.runs[-1])
        payload["event"]["body"]["data"]["flowId"] = "0a1b2c3d-0000-4000-8000-00000000dead"
        body = json.dumps(payload).encode()
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{exporter.webhook_port}{HOOK}", data=body, headers=events.signed(body)) as resp:
            answer = await resp.text()
        await exporter.router.idle()
    finally:
        await exporter.close()
    assert answer == "untracked" and sim.simulator.requests["runs"] == runs_before


async def test_the_webhook_listener_has_its_own_tls(sim: Sim, tmp_path: Path) -> None:
    """events.webhook.web_config_file puts the webhook listener on TLS (the metrics listener is unaffected): the
    handshake answers over HTTPS for a client that trusts the CA, and a plain-HTTP request gets nothing."""
    import ssl

    import trustme

    from exporter.webconfig import load_web_config

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "hook.pem"))
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: hook.pem\n  key_file: hook.pem\n")
    exporter = with_events(sim, journal=False, webhook=True)
    hook = dataclasses.replace(exporter.config.events.webhook, web_config_file="web.yml",
                               web=load_web_config(tmp_path / "web.yml"))
    exporter.config = dataclasses.replace(exporter.config, events=dataclasses.replace(exporter.config.events,
                                                                                       webhook=hook))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        await exporter.start()
        await exporter.start_events()
        url = f"127.0.0.1:{exporter.webhook_port}{HOOK}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://{url}", params={"challenge": "tls-ok"}, ssl=client) as resp:
                answer = (resp.status, await resp.text())
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://{url}", params={"challenge": "x"}) as resp:
                    await resp.read()
    finally:
        await exporter.close()
    assert answer == (200, "tls-ok")


async def test_a_burst_of_events_for_one_flow_costs_one_read_not_one_each(sim: Sim) -> None:
    """Twenty events for one flow, taken together (as a journal batch gives them), refresh it with at most two
    reads of its runs: the first, and one more for the events that came while it ran."""
    exporter = with_events(sim, journal=False)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        flow = sim.world.flows["prod"][next(iter(sim.world.flows["prod"]))]
        before = sim.simulator.requests["runs"]
        for i in range(20):
            payload = sim.simulator.events.payload(flow.runs[-1])
            payload["event_id"] = f"burst-{i}"
            assert exporter.router.handle(payload, "journal") == "applied"
        await exporter.router.idle()
    finally:
        await exporter.close()
    assert 1 <= sim.simulator.requests["runs"] - before <= 2


async def test_a_new_event_for_a_flow_ends_its_wait_for_a_run_not_yet_visible(sim: Sim) -> None:
    """An event names a run /runs does not show yet: its refresh waits to try again. Another event for the flow
    during that wait refreshes it at once, not when the wait is over; a run that ended before the flow's count
    floor is never waited for."""
    exporter = with_events(sim, journal=False)
    exporter.router._retry_delays = (30.0,)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        flow = sim.world.flows["prod"][next(iter(sim.world.flows["prod"]))]
        pending = sim.simulator.events.payload(flow.runs[-1])
        pending["event_id"], pending["event"]["body"]["data"]["flowRunId"] = "early", "not-visible-yet"
        del pending["event"]["body"]["data"]["completedAtUTC"]
        before = sim.simulator.requests["runs"]
        exporter.router.handle(pending, "webhook")
        await until(lambda: sim.simulator.requests["runs"] == before + 1, 5)
        started = time.monotonic()
        again = sim.simulator.events.payload(flow.runs[-1])
        again["event_id"] = "later"
        exporter.router.handle(again, "webhook")
        await until(lambda: sim.simulator.requests["runs"] == before + 2, 5)
        woke_after = time.monotonic() - started
        old = sim.simulator.events.payload(flow.runs[0])
        old["event_id"], old["event"]["body"]["data"]["flowRunId"] = "old", "pruned-long-ago"
        other = sim.world.flows["prod"][sorted(sim.world.flows["prod"])[1]]
        old["event"]["body"]["data"]["flowId"] = other.id
        exporter.router.handle(old, "webhook")
        await until(lambda: sim.simulator.requests["runs"] == before + 3, 5)
        await asyncio.sleep(0.3)
        assert ("prod", other.id) not in exporter.router._wanted  # ended before the floor: not waited for
    finally:
        await exporter.close()
    assert woke_after < 5
