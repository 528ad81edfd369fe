"""Adobe I/O Events end to end against the simulator: the journal and the signed webhook refresh flows at once,
counters stay equal to ground truth whatever the events do (lost, duplicated, reordered, early), and every
forged, foreign, wrong-key-host or replayed delivery is refused and counted. The simulator's events take the
shapes of Adobe's "Flow run notifications" examples."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest

from exporter.app import Exporter
from exporter.config import EventsConfig, WebhookConfig
from exporter.journal import POSITION_KEY
from exporter.simulator.events import JOURNAL_PATH
from tests.helpers import assert_matches_truth, parse_samples, pick, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter

HOOK = "/adobe-events"
UNTRACKED = "0a1b2c3d-0000-4000-8000-00000000dead"


def with_events(
    sim: Sim, *, journal: bool = True, webhook: bool = False, state: str | None = None, interval: float = 600.0
) -> Exporter:
    """An exporter reading the simulator's journal (and/or its webhook); the journal's 204s ask for 50 ms."""
    sim.simulator.events.faults.retry_after = "0.05"
    config = make_config(sim.url, state_path=state, interval=interval)
    events = EventsConfig(
        journal_url=f"{sim.url}{JOURNAL_PATH}" if journal else None,
        journal_wait=0.05,
        webhook=WebhookConfig(host="127.0.0.1", port=0, path=HOOK, public_key_base_url=sim.url) if webhook else None,
    )
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


@contextlib.asynccontextmanager
async def reading_journal(sim: Sim) -> AsyncIterator[Exporter]:
    """An exporter polled once that has read the simulator's journal once; closed on the way out."""
    exporter = with_events(sim)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        await exporter.start_events()
        await until(lambda: sim.simulator.requests["journal"] >= 1)
        yield exporter
    finally:
        await exporter.close()


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
        log = sim.simulator.events.refresh()
        return bool(log) and await exporter.tracker.get_meta(POSITION_KEY) == log[-1].position

    return check


def outcomes(samples: dict[Any, float], source: str) -> dict[str, float]:
    return {dict(k)["outcome"]: v for k, v in pick(samples, "aep_exporter_events_total", source=source).items()}


async def test_journal_events_alone_bring_counters_to_ground_truth(sim: Sim) -> None:
    """After a first poll, runs end for two simulated hours and no poll runs (the interval is 10 minutes and
    none is called): the journal's events refresh each flow, and every counter equals ground truth."""
    async with reading_journal(sim) as exporter:
        before = sim.simulator.requests["runs"]
        sim.world.clock.advance(2 * 3600)
        await until(exact(exporter, sim))
        samples = await render(exporter)
    assert sim.simulator.requests["runs"] > before  # the events, not a poll, read the runs
    assert value(samples, "aep_exporter_events_total", source="journal", outcome="applied") >= 1
    assert value(samples, "aep_exporter_event_lag_seconds_count", source="journal") >= 1
    assert value(samples, "aep_exporter_journal_last_read_success_timestamp_seconds") is not None


async def test_an_event_moves_the_newest_run_status_before_the_next_poll(sim: Sim) -> None:
    """A run announced by the journal becomes the flow's newest run at once (its status one-hot and end), though
    the flow as last listed names an older run in lastRunDetails: the page for a failed run needs no poll."""
    async with reading_journal(sim) as exporter:
        flow = next(f for sb in sim.world.flows.values() for f in sb.values() if f.kind == "source" and f.schedule_s)
        sim.world.force_status(flow.id, "failed")
        run = flow.trigger_run(sim.world.now_ms(), 1.0)
        polls = sim.simulator.requests["flows"]

        async def newest_failed() -> bool:
            samples = await render(exporter)
            ids = {"sandbox": flow.sandbox, "flow_id": flow.id}
            return value(samples, "aep_flow_last_run_status", status="failed", **ids) == 1 and value(
                samples, "aep_flow_last_run_start_timestamp_seconds", **ids
            ) in (None, run.started_ms / 1000)

        await until(newest_failed)
    assert sim.simulator.requests["flows"] == polls  # no listing of the flows: the event did it


async def test_counters_stay_exact_when_events_are_lost_duplicated_reordered_or_early(sim: Sim) -> None:
    """With a fifth of the events lost, a third duplicated, batches reordered and events published a minute
    before their run ends in /runs, events and polls together still count every run exactly once."""
    sim.simulator.events.faults = dataclasses.replace(
        sim.simulator.events.faults, drop=0.2, duplicate=0.3, reorder=True, early_s=60.0
    )
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
    sim: Sim, tmp_path: Path
) -> None:
    """The position the journal's next link carries is kept in the state file, after a 204 too: the next process
    asks for events after it (never latest=true again). A position older than the journal keeps (410) is
    dropped, logged, and reading starts from the oldest event."""
    state = str(tmp_path / "s.db")
    first = with_events(sim, state=state)
    try:
        await first.start()
        await first.start_events()
        await until(lambda: bool(first.tracker._store.get_meta(POSITION_KEY)))  # from latest=true's 204 alone
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
    assert parse_qs(first_query) == {"since": [position], "limit": ["100"]}
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
    queries = [parse_qs(r["query"]) for r in sim.simulator.request_log if r["endpoint"] == "journal"]
    assert "since" in queries[0] and queries[1] == {"limit": ["100"]}


@pytest.mark.parametrize("shape", ["adobe", "envelope"])
async def test_signed_webhook_deliveries_refresh_flows_and_counters_equal_ground_truth(sim: Sim, shape: str) -> None:
    """The simulator delivers every event to the webhook, signed with its keys, in Adobe's documented shapes, some
    twice (retries), some before /runs shows their run ended, with data ingestion notifications among them:
    counters reach ground truth without a poll, each retry is a duplicate, and nothing is refused."""
    sim.simulator.events.faults = dataclasses.replace(
        sim.simulator.events.faults, webhook_retry=0.5, shape=shape, early_s=30.0, ingestion_share=0.2
    )
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
    seen = outcomes(samples, "webhook")
    assert seen["duplicate"] == retries and seen["not_a_flow"] >= 1
    assert seen["invalid"] == seen["rejected_signature"] == seen["rejected_recipient"] == 0
    assert value(samples, "aep_exporter_event_lag_seconds_count", source="webhook") >= 1


def ended_since(sim: Sim, after_ms: int) -> dict[str, Any]:
    """A run of the prod sandbox that ended after ``after_ms`` (so no poll has counted it), from ground truth."""
    for flow in sim.world.truth()["sandboxes"]["prod"].values():
        for run in flow["runs"]:
            if run["completed"] and run["end_ms"] > after_ms:
                return run
    raise AssertionError("no run ended in the window")


async def test_forged_foreign_wrong_key_host_and_replayed_deliveries_are_refused_and_counted(sim: Sim) -> None:
    """A signature of another key, a body for another client id, a key path off the configured key host, an
    unsigned body and an oversized one are refused (401/413) and counted, never applied; a replay of a valid
    delivery is a duplicate; a signed body with a key twice is refused (400); a signed body that is not JSON is
    acknowledged and counted invalid; the handshake answers the challenge; the listener serves nothing else."""
    exporter = with_events(sim, journal=False, webhook=True)
    events = sim.simulator.events
    try:
        await exporter.start()
        assert await exporter.poll_once()
        polled = sim.world.now_ms()
        sim.world.clock.advance(3600)
        await exporter.start_events()
        url = f"http://127.0.0.1:{exporter.webhook_port}{HOOK}"
        run = sim.world.flow(ended_since(sim, polled)["flow_id"]).runs
        payload = events.addressed(events.payload(next(r for r in run if r.end_ms > polled)))
        body = json.dumps(payload).encode()
        foreign = json.dumps(events.addressed(payload, "another-client")).encode()
        twice = b'{"recipient_client_id": "x", "recipient_client_id": "sim-client-id", "event": {}}'
        off_host = {
            **events.signed(body),
            "x-adobe-public-key1-path": "//evil.example/key.pem",
            "x-adobe-public-key2-path": "/../../etc/key.pem",
        }
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
                "twice": await post(twice, events.signed(twice)),
                "not_json": await post(b"not json", events.signed(b"not json")),
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
    assert statuses == {
        "forged": 401,
        "foreign": 401,
        "off_host": 401,
        "unsigned": 401,
        "huge": 413,
        "twice": 400,
        "not_json": 200,
        "valid": 200,
        "replay": 200,
    }
    assert challenge == (200, "abc123") and challenge_json == {"challenge": "abc123"}
    assert metrics_status == 404
    assert outcomes(samples, "webhook") == {
        "applied": 1,
        "duplicate": 1,
        "already_counted": 0,
        "untracked": 0,
        "not_a_flow": 0,
        "rejected_signature": 3,
        "rejected_recipient": 1,
        "invalid": 3,
    }


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
        payload = events.addressed(events.payload(flow.runs[-1], shape="envelope"))
        payload["event"]["flowId"] = UNTRACKED
        body = json.dumps(payload).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{exporter.webhook_port}{HOOK}", data=body, headers=events.signed(body)
            ) as resp,
        ):
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
    hook = dataclasses.replace(
        exporter.config.events.webhook, web_config_file="web.yml", web=load_web_config(tmp_path / "web.yml")
    )
    exporter.config = dataclasses.replace(
        exporter.config, events=dataclasses.replace(exporter.config.events, webhook=hook)
    )
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
    """Twenty alerts about one flow (no run named, each different), taken together as a journal batch gives them,
    refresh it with at most two reads of its runs: the first, and one more for the events that came while it
    ran."""
    exporter = with_events(sim, journal=False)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        flow = sim.world.flows["prod"][next(iter(sim.world.flows["prod"]))]
        before = sim.simulator.requests["runs"]
        for i in range(20):
            alert = {"flowId": flow.id, "status": "FIRING", "value": str(i), "sandboxName": "prod"}
            assert exporter.router.handle(alert, "journal") == ["applied"]
        await exporter.router.idle()
    finally:
        await exporter.close()
    assert 1 <= sim.simulator.requests["runs"] - before <= 2


async def test_a_new_event_for_a_flow_ends_its_wait_for_a_run_not_yet_visible(sim: Sim) -> None:
    """An event names an ended run /runs does not show yet: its refresh waits to try again. Another event for the
    flow during that wait refreshes it at once, not when the wait is over; an event for a run that ended before the
    flow's count floor reads nothing (already counted)."""
    exporter = with_events(sim, journal=False)
    exporter.router._retry_delays = (30.0,)
    try:
        await exporter.start()
        assert await exporter.poll_once()
        flow = sim.world.flows["prod"][next(iter(sim.world.flows["prod"]))]
        pending = {"flowId": flow.id, "flowRunId": "not-visible-yet", "eventCode": "sources_flow_run_success"}
        before = sim.simulator.requests["runs"]
        assert exporter.router.handle(pending, "webhook") == ["applied"]
        await until(lambda: sim.simulator.requests["runs"] == before + 1, 5)
        started = time.monotonic()
        again = {"flowId": flow.id, "flowRunId": "also-not-visible", "eventCode": "sources_flow_run_success"}
        exporter.router.handle(again, "webhook")
        await until(lambda: sim.simulator.requests["runs"] == before + 2, 5)
        woke_after = time.monotonic() - started
        other = sim.world.flows["prod"][sorted(sim.world.flows["prod"])[1]]
        counted = sim.simulator.events.payload(other.runs[0], shape="envelope")
        assert exporter.router.handle(counted, "webhook") == ["already_counted"]
        before = sim.simulator.requests["runs"]  # the refreshes above raised `flow`'s count floor past old runs
        old = sim.simulator.events.payload(flow.runs[0], shape="envelope")
        old["event"]["id"] = "pruned-long-ago"
        assert exporter.router.handle(old, "webhook") == ["already_counted"]
        await asyncio.sleep(0.3)
        assert sim.simulator.requests["runs"] == before
    finally:
        await exporter.close()
    assert woke_after < 5
