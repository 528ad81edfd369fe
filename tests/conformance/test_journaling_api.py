"""Adobe's "Journaling API" page, replayed answer by answer (positions replaced): the journal reader sends exactly
the requests the page's next links lead to, waits what its 204s say, and keeps the position they carry; and
"OAuth Server-to-Server credential API Reference": the token answer it shows is used as documented."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from exporter.auth import TokenProvider
from exporter.journal import POSITION_KEY
from exporter.selfmetrics import SelfMetrics
from exporter.values import Secret
from tests.conformance.examples import load
from tests.journals import Answer, ScriptedJournal, reader_for, scripted_journal
from tests.simulation import Sim
from tests.test_events import outcomes, render

TRANSCRIPTS = load("journaling_api_transcripts")
POS = TRANSCRIPTS["positions"]


def answer(name: str) -> Answer:
    exchange = TRANSCRIPTS["exchanges"][name]
    body = exchange["body"]
    raw = b"" if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return Answer(exchange["status"], [tuple(h) for h in exchange["headers"]], raw)  # type: ignore[misc]


def asked(journal: ScriptedJournal) -> list[dict[str, str]]:
    """The query of each request, without the limit the reader always adds."""
    assert all(r["path"] == TRANSCRIPTS["path"] for r in journal.requests)
    return [{k: v for k, v in r["query"].items() if k != "limit"} for r in journal.requests]


async def replay_reads(
    sim: Sim, journal: ScriptedJournal, names: list[str], *, from_oldest: bool = False, stored: str | None = None
) -> tuple[list[float], dict[str, Any]]:
    """Serve the named answers in order to a reader (optionally starting from the oldest event, or from a stored
    position); its delays, and what it ended with (position stored, gaps, outcomes)."""
    journal.add(*(answer(n) for n in names))
    async with reader_for(sim, journal.origin + TRANSCRIPTS["path"]) as (reader, exporter, gaps):
        if stored:
            await exporter.tracker.set_meta(POSITION_KEY, stored)
            reader._loaded = False
        reader._from_oldest = from_oldest
        delays = [await reader.read_once() for _ in names]
        samples = await render(exporter)
        return delays, {
            "position": exporter.tracker.meta(POSITION_KEY),
            "gaps": len(gaps),
            "outcomes": outcomes(samples, "journal"),
        }


async def test_reading_from_the_oldest_event_to_the_end_and_on(sim: Sim) -> None:
    """The page's first batch, the next batch by its link, the end of the journal (204, retry-after 10), then a
    newer event at the same link: the reader asks for exactly those, waits 10 s at the end, and keeps the last
    position; the page's events (AEM assets) name no flow."""
    async with scripted_journal() as journal:
        delays, end = await replay_reads(
            sim, journal, ["first_batch", "next_batch", "end", "newer_at_end", "after_latest"], from_oldest=True
        )
    assert asked(journal) == [
        {},
        {"since": POS["moose"]},
        {"since": POS["rabbit"]},
        {"since": POS["rabbit"]},
        {"since": POS["penguin"]},
    ]
    assert delays == [0.0, 0.0, 10.0, 0.0, 10.0]
    assert end["position"] == POS["penguin"] and end["outcomes"]["not_a_flow"] == 4


async def test_a_first_start_jumps_to_the_end_once_and_follows_the_link_from_there(sim: Sim) -> None:
    """ "Consuming the most recent events": latest=true on the first call only; its 204's next link is followed
    (never latest=true again), and its position is kept before any event came."""
    async with scripted_journal() as journal:
        delays, end = await replay_reads(sim, journal, ["latest", "after_latest", "after_latest"])
    assert asked(journal) == [{"latest": "true"}, {"since": POS["penguin"]}, {"since": POS["penguin"]}]
    assert delays == [10.0, 10.0, 10.0] and end["position"] == POS["penguin"]


async def test_an_expired_position_is_answered_410_and_reading_starts_over_from_the_oldest(sim: Sim) -> None:
    """ "Fetching expired events": 410 Gone with a text body for the stored position; then "Oldest available
    events" (no parameters) and on from its link; every sandbox is asked to poll at once."""
    async with scripted_journal() as journal:
        _delays, end = await replay_reads(
            sim, journal, ["expired", "oldest_after_expiry", "after_latest"], stored=POS["moose"]
        )
    assert asked(journal) == [{"since": POS["moose"]}, {}, {"since": POS["penguin"]}]
    assert end["gaps"] == 1 and end["position"] == POS["penguin"]


async def test_a_journal_with_no_events_answers_204_without_retry_after(sim: Sim) -> None:
    """ "No Events in Journal": a 204 with next and validate links and no retry-after; the configured wait
    applies and the next link is followed."""
    async with scripted_journal() as journal:
        delays, _end = await replay_reads(sim, journal, ["no_events", "after_latest"], from_oldest=True)
    assert asked(journal) == [{}, {"since": POS["penguin"]}]
    assert delays == [0.5, 10.0]


async def test_a_limited_batch_is_followed_by_its_link(sim: Sim) -> None:
    """ "Limiting the size of the batch": answers to limit=1 and limit=3 (two events, fewer than asked) carry next
    links with the limit kept; the reader follows their positions, asking its own limit."""
    async with scripted_journal() as journal:
        await replay_reads(sim, journal, ["limit_1", "next_batch"], from_oldest=True)
    assert asked(journal) == [{}, {"since": POS["camel"]}]
    async with scripted_journal() as journal:
        await replay_reads(sim, journal, ["limit_3", "next_batch"], from_oldest=True)
    assert asked(journal) == [{}, {"since": POS["moose"]}]
    assert all(r["query"]["limit"] == "100" for r in journal.requests)


async def test_the_documented_token_answer_is_used_as_documented() -> None:
    """The token request is the documented form (client_credentials, client id and secret, comma-separated scope,
    form-encoded in the body); the documented answer's token is sent as a Bearer token and its expires_in is
    read as seconds."""
    token_answer = {**load("ims_token_response"), "access_token": "token-from-the-example"}
    seen: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        seen.append({**(await request.post()), "content_type": request.content_type})  # type: ignore[dict-item]
        return web.json_response(token_answer)

    app = web.Application()
    app.router.add_post("/ims/token/v3", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    registry = CollectorRegistry()
    try:
        async with aiohttp.ClientSession() as session:
            provider = TokenProvider(
                session=session,
                url=str(server.make_url("/ims/token/v3")),
                client_id="id-1",
                client_secret=Secret("secret-1"),
                scopes="openid,AdobeID,read_organizations",
                metrics=SelfMetrics(registry),
                clock=lambda: 1000.0,
            )
            assert await provider.token() == "token-from-the-example"
    finally:
        await server.close()
    assert seen == [
        {
            "grant_type": "client_credentials",
            "client_id": "id-1",
            "client_secret": "secret-1",
            "scope": "openid,AdobeID,read_organizations",
            "content_type": "application/x-www-form-urlencoded",
        }
    ]
    assert registry.get_sample_value("aep_exporter_token_expiry_timestamp_seconds") == 1000.0 + 86399
