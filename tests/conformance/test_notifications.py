"""Adobe's I/O Events payloads, delivered exactly as Adobe's pages show them, through the journal and through the
signed webhook: each reaches the counts it announces (an event that comes before /runs shows its run ended
included), a payload that names no flow is counted and acknowledged, and the webhook handshake answers as
documented."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from exporter.app import Exporter
from tests.conformance.examples import load, replay
from tests.conformance.test_flow_service import serve_flow, tutorial_flow
from tests.helpers import pick, value
from tests.simulation import Sim
from tests.test_events import HOOK, outcomes, render, until, with_events

SOURCES = ("journal", "webhook")


@pytest.fixture
async def listening(sim: Sim) -> AsyncIterator[Exporter]:
    """An exporter with the journal and the webhook on, polling only when told (every 10 minutes), its event
    retries spaced so a test can end a run between two of them."""
    exporter = with_events(sim, journal=True, webhook=True)
    exporter.router._retry_delays = (0.3, 1.0, 3.0)
    await exporter.start()
    assert await exporter.poll_once()
    await exporter.start_events()
    await until(lambda: sim.simulator.requests["journal"] >= 1)
    yield exporter
    await exporter.close()


async def deliver(sim: Sim, exporter: Exporter, source: str, payload: Any) -> tuple[int, str]:
    """Publish ``payload`` to the journal, or post it to the webhook signed and addressed as Adobe does; the
    webhook's answer (status, text), or (0, "") for the journal."""
    events = sim.simulator.events
    if source == "journal":
        events.publish(payload)
        return 0, ""
    body = json.dumps(events.addressed(payload)).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{exporter.webhook_port}{HOOK}", data=body, headers=events.signed(body)) as resp,
    ):
        return resp.status, await resp.text()


def ended_later(run: dict[str, Any]) -> dict[str, Any]:
    """The run as /runs shows it a moment before it ended: in progress, no end, no counts yet."""
    early = {
        **run,
        "metrics": {
            "statusSummary": {"status": "inProgress"},
            "durationSummary": {k: v for k, v in run["metrics"]["durationSummary"].items() if k == "startedAtUTC"},
        },
    }
    return {**early, "activities": []}


async def announce_before_the_run_ends(
    sim: Sim, exporter: Exporter, source: str, payload: Any, *, run: dict[str, Any], flow_id: str
) -> dict[Any, float]:
    """Serve the flow with its run still in progress, deliver the event, end the run in /runs between two event
    retries, and return the exposition once the event's refresh is done."""
    serve_flow(sim, tutorial_flow(sim, flow_id, run), [ended_later(run)])
    assert await exporter.poll_once()
    await deliver(sim, exporter, source, payload)
    await until(lambda: ("prod", flow_id) in exporter.router._wanted)
    await asyncio.sleep(0.1)
    sim.simulator.fixture_runs[flow_id] = [run]
    await until(lambda: ("prod", flow_id) not in exporter.router._wanted, 10)
    return await render(exporter)


@pytest.mark.parametrize("source", SOURCES)
async def test_the_success_notification_counts_its_run(sim: Sim, listening: Exporter, source: str) -> None:
    """ "Flow run notifications", success example (durationSummary in seconds): announced before /runs shows the
    run ended, the event's retries count it once it has: 100 input and 70 output records, 2,048 and 1,024 bytes,
    10 files each way; the lag histogram has it."""
    flow_id = "0000f20a-0000-4000-8000-000000000001"
    payload = replay(load("notification_success"), sim.world.now_ms())
    samples = await announce_before_the_run_ends(sim, listening, source, payload, run=payload["event"], flow_id=flow_id)
    flow = {"sandbox": "prod", "flow_id": flow_id}
    assert value(samples, "aep_flow_runs_total", status="success", **flow) == 1
    assert [value(samples, f"aep_flow_{k}_records_total", **flow) for k in ("input", "output")] == [100, 70]
    assert [value(samples, f"aep_flow_{k}_bytes_total", **flow) for k in ("input", "output")] == [2048, 1024]
    assert [value(samples, f"aep_flow_{k}_files_total", **flow) for k in ("input", "output")] == [10, 10]
    assert outcomes(samples, source)["applied"] == 1
    assert value(samples, "aep_exporter_event_lag_seconds_count", source=source) >= 1


@pytest.mark.parametrize("source", SOURCES)
async def test_the_failure_notification_counts_its_failed_run(sim: Sim, listening: Exporter, source: str) -> None:
    """ "Flow run notifications", failure example: a message batch with no event id, whose run has no end of its
    own; it is applied (never refused), and the run is counted failed with both error codes, its -1 bytes and
    files unknown (no sample), its end taken from its last activity."""
    flow_id = "0000f21a-0000-4000-8000-000000000001"
    payload = replay(load("notification_failure"), sim.world.now_ms())
    run = payload[0]["messages"][0]["value"]
    samples = await announce_before_the_run_ends(sim, listening, source, payload, run=run, flow_id=flow_id)
    flow = {"sandbox": "prod", "flow_id": flow_id}
    assert value(samples, "aep_flow_runs_total", status="failed", **flow) == 1
    codes = {dict(k)["code"]: v for k, v in pick(samples, "aep_flow_run_errors_total", **flow).items()}
    assert codes == {"CONNECTOR-2001-500": 1, "133": 1}
    assert value(samples, "aep_flow_input_bytes_total", **flow) is None
    assert value(samples, "aep_flow_input_files_total", **flow) is None
    assert outcomes(samples, source)["applied"] == 1 and outcomes(samples, source)["invalid"] == 0


@pytest.mark.parametrize("source", SOURCES)
async def test_payloads_that_name_no_tracked_run_are_counted_and_acknowledged(
    sim: Sim, listening: Exporter, source: str
) -> None:
    """ "Data ingestion notifications" (names a dataset, no flow) and the webhook page's delivered event are
    counted as not_a_flow; an Identity Service flow run ("Standard alert rules") is untracked; the webhook answers
    200 to each."""
    now = sim.world.now_ms()
    answers = [
        await deliver(sim, listening, source, replay(load("ingestion_failure"), now)),
        await deliver(sim, listening, source, load("webhook_intro_event")["event"]),
        await deliver(sim, listening, source, replay(load("alert_identity_flow_run_success"), now)),
    ]
    await until(lambda: sum(outcomes_now(listening, source).get(k, 0) for k in ("not_a_flow", "untracked")) == 3)
    if source == "webhook":
        assert answers == [(200, "not_a_flow"), (200, "not_a_flow"), (200, "untracked")]


def outcomes_now(exporter: Exporter, source: str) -> dict[str, float]:
    return {
        o: exporter.registry.get_sample_value("aep_exporter_events_total", {"source": source, "outcome": o}) or 0
        for o in ("applied", "already_counted", "not_a_flow", "untracked", "invalid")
    }


@pytest.mark.parametrize("source", SOURCES)
async def test_the_alert_rules_payloads_each_refresh_their_flow(sim: Sim, listening: Exporter, source: str) -> None:
    """ "Standard alert rules": Sources Flow Run Start (a run in progress), Flow Run Delay (a flowRunId) and
    Ingestion Error Rate (a flow only) each refresh the flow they name; Success and Failure announce runs the poll
    already counted, so they read nothing."""
    now = sim.world.now_ms()
    names = (
        "alert_source_flow_run_start",
        "alert_source_flow_run_success",
        "alert_source_flow_run_failure",
        "alert_source_flow_run_delay",
        "alert_sources_ingestion_error_rate",
    )
    for name in names:
        example = replay(load(name), now)
        example["sandboxName"] = "prod"
        run = (
            example
            if "metrics" in example
            else {"id": f"run-of-{name}", "metrics": {"statusSummary": {"status": "inProgress"}}}
        )
        serve_flow(sim, tutorial_flow(sim, example["flowId"], run), [run] if "metrics" in example else [])
    assert await listening.poll_once()
    before = sim.simulator.requests["runs"]
    for name in names:
        example = replay(load(name), now)
        example["sandboxName"] = "prod"
        await deliver(sim, listening, source, example)
    await until(lambda: outcomes_now(listening, source)["applied"] == 3)
    await listening.router.idle()
    assert outcomes_now(listening, source)["already_counted"] == 2
    assert sim.simulator.requests["runs"] - before >= 3


async def test_the_webhook_handshake_answers_as_documented(sim: Sim, listening: Exporter) -> None:
    """ "Introduction to Adobe I/O Events Webhooks": GET ?challenge=<value> answers the value as text, or as
    {"challenge": value} to a JSON client; the asynchronous validation POST, signed, is acknowledged."""
    example = load("webhook_intro_event")
    url = f"http://127.0.0.1:{listening.webhook_port}{HOOK}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"challenge": example["challenge"]}) as resp:
            text = (resp.status, resp.content_type, await resp.text())
        async with session.get(
            url, params={"challenge": example["challenge"]}, headers={"Accept": "application/json"}
        ) as resp:
            as_json = (resp.status, resp.content_type, await resp.json())
    status, _answer = await deliver(sim, listening, "webhook", example["validation"])
    assert text == (200, "text/plain", example["challenge"])
    assert as_json == (200, "application/json", {"challenge": example["challenge"]})
    assert status == 200
