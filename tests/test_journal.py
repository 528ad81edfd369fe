"""The events journal read exactly as Adobe's "Journaling API" page documents it: next links followed from every
answer (200 and 204 alike, several Link fields or one, relative or absolute), latest=true on a first start
only, the position kept after a 204 too, retry-after honoured, 410 Gone starting over from the oldest event with
every sandbox polled at once; and a journal whose answers could wedge the reader or make it spin."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from exporter.journal import MAX_WAIT, POSITION_KEY, link_targets
from tests.journals import Answer, reader_for, scripted_journal
from tests.simulation import Sim
from tests.test_events import exact, outcomes, reading_journal, render, until, with_events

NEXT = '</journal?since={}>; rel="next"'
VALIDATE = '</journal/validate?since={}>; rel="validate"'


def batch(*positions: str, flow: str = "c9cef9cb-c934-4467-8ef9-cbc934546741") -> bytes:
    """A 200 body of one alert-shaped event per position."""
    events = [{"position": p, "event": {"flowId": flow, "status": "FIRING", "n": p}} for p in positions]
    return json.dumps({"events": events, "_page": {"last": positions[-1], "count": len(events)}}).encode()


async def test_the_first_read_jumps_to_the_end_and_every_later_one_follows_the_next_link(sim: Sim) -> None:
    """latest=true is asked once; its 204's next link (Adobe's 10 s retry-after honoured) is followed, and the
    position it carries is stored before any event came; later reads follow each answer's next link."""
    sim.simulator.events.faults.retry_after = "10"
    async with reader_for(sim, f"{sim.url}/events/journal") as (reader, exporter, _gaps):
        assert await reader.read_once() == 10.0
        end = (
            sim.simulator.events._origin
            if not sim.simulator.events.refresh()
            else sim.simulator.events.refresh()[-1].position
        )
        assert exporter.tracker.meta(POSITION_KEY) == end
        sim.world.clock.advance(3600)
        delays = [await reader.read_once() for _ in range(12)]
    queries = [r["query"] for r in sim.simulator.request_log if r["endpoint"] == "journal"]
    assert queries[0] == "latest=true&limit=100"
    assert all("latest" not in q and q.startswith("since=") for q in queries[1:])
    assert queries[1] == f"since={end}&limit=100"
    assert 0.0 in delays and delays[-1] == 10.0  # batches read back to back, then the end of the journal again
    assert exporter.tracker.meta(POSITION_KEY) == sim.simulator.events.refresh()[-1].position


@pytest.mark.parametrize(
    ("links", "absolute", "entry", "shape"),
    [
        ("fields", False, "delivery", "adobe"),
        ("joined", True, "inner", "adobe"),
        ("fields", True, "delivery", "envelope"),
        ("joined", False, "inner", "envelope"),
    ],
)
async def test_every_documented_shape_reaches_ground_truth_through_the_journal(
    sim: Sim, links: str, absolute: bool, entry: str, shape: str
) -> None:
    """Whatever the Link style (separate fields or one comma-joined, relative or absolute) and whatever a journal
    entry carries (the whole delivery or the inner event; Adobe's success envelope and failure message batch, or
    every outcome in the envelope), the journal alone brings every counter to ground truth, runs announced before
    /runs shows them ended included; data ingestion notifications are counted as not_a_flow."""
    faults = sim.simulator.events.faults
    faults.links, faults.absolute_links, faults.journal_event, faults.shape = links, absolute, entry, shape
    faults.early_s, faults.ingestion_share = 30.0, 0.3
    async with reading_journal(sim) as exporter:
        sim.world.clock.advance(2 * 3600)
        await until(exact(exporter, sim), 20)
        samples = await render(exporter)
    seen = outcomes(samples, "journal")
    assert seen["applied"] >= 1 and seen["not_a_flow"] >= 1 and seen["invalid"] == 0


async def test_retry_after_is_honoured_in_either_case_as_seconds_or_a_date_and_capped(sim: Sim) -> None:
    """A 204's retry-after is waited out, whatever its case, in seconds or as an HTTP date, capped; without one the
    configured wait applies; the validate link is never followed."""
    async with scripted_journal() as journal, reader_for(sim, journal.url) as (reader, _exporter, _gaps):
        links = [("Link", NEXT.format("p1")), ("Link", VALIDATE.format("p1"))]
        soon = email.utils.formatdate(time.time() + 7, usegmt=True)
        journal.add(
            Answer(204, [("Retry-After", "3"), *links]),
            Answer(204, [("retry-after", soon), *links]),
            Answer(204, links),
            Answer(204, [("retry-after", "3600"), *links]),
        )
        delays = [await reader.read_once() for _ in range(4)]
    assert delays[0] == 3.0 and 4.0 < delays[1] <= 7.0 and delays[2] == 0.5 and delays[3] == MAX_WAIT
    assert [r["query"] for r in journal.requests] == [{"latest": "true", "limit": "100"}] + [
        {"since": "p1", "limit": "100"}
    ] * 3
    assert all(r["path"] == "/journal" for r in journal.requests)


async def test_an_expired_position_starts_over_from_the_oldest_event_and_polls_every_sandbox(
    sim: Sim, tmp_path: Path
) -> None:
    """410 Gone for the stored position (Adobe's text body) is logged once; the next read asks for the oldest
    event kept (no since, no latest), the stored position is cleared, and every sandbox is polled at once."""
    state = str(tmp_path / "s.db")
    async with scripted_journal() as journal:
        async with reader_for(sim, journal.url, state=state) as (_r, exporter, _g):
            await exporter.tracker.set_meta(POSITION_KEY, "moose:old")
        async with reader_for(sim, journal.url, state=state) as (reader, exporter, gaps):
            journal.add(
                Answer(410, body=b"Events at position moose:old have expired."),
                Answer(200, [("Link", NEXT.format("p9"))], batch("p8", "p9")),
            )
            with capture_logs() as logs:
                await reader.read_once()
                await reader.read_once()
            stored = exporter.tracker.meta(POSITION_KEY)
    assert [r["query"] for r in journal.requests] == [{"since": "moose:old", "limit": "100"}, {"limit": "100"}]
    assert gaps == ["gap"] and stored == "p9"
    assert [e["event"] for e in logs].count("journal_position_expired") == 1


async def test_a_gap_in_the_journal_polls_every_sandbox_at_once(sim: Sim, tmp_path: Path) -> None:
    """With polling every 10 minutes, a position that expired while the exporter was down makes every sandbox
    poll again right after the first cycle, not 10 minutes later; and every counter reaches ground truth."""
    state = str(tmp_path / "s.db")
    first = with_events(sim, state=state)
    try:
        await first.start()
        await first.tracker.set_meta(POSITION_KEY, sim.simulator.events.refresh()[0].position)
    finally:
        await first.close()
    sim.simulator.events.faults.retention_ms = 60_000  # the stored position's events are gone
    exporter = with_events(sim, state=state)
    try:
        await exporter.start(poll=True)
        await until(
            lambda: all(
                (exporter.registry.get_sample_value("aep_exporter_polls_total", {"sandbox": s}) or 0) >= 2
                for s in ("prod", "dev")
            ),
            10,
        )
        await until(exact(exporter, sim))
    finally:
        await exporter.close()


async def test_a_journal_with_no_events_answers_204_and_that_is_normal(sim: Sim) -> None:
    """A journal that never had an event answers 204 (no retry-after) to a read from its oldest event: the
    configured wait applies, the next link is followed, nothing is logged as failing."""
    async with scripted_journal() as journal, reader_for(sim, journal.url) as (reader, _exporter, _gaps):
        reader._from_oldest = True
        journal.add(Answer(204, [("Link", NEXT.format("origin")), ("Link", VALIDATE.format("origin"))]))
        with capture_logs() as logs:
            assert await reader.read_once() == 0.5
            assert await reader.read_once() == 0.5
    assert [r["query"] for r in journal.requests] == [{"limit": "100"}, {"since": "origin", "limit": "100"}]
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


def test_link_headers_are_read_in_every_form_rfc_8288_allows() -> None:
    """Several fields or comma-joined values, rel quoted or not, several relations in one rel, other relations
    ignored, in order."""
    fields = [
        '</a?since=1>; rel="next", </a/validate?since=1>; rel="validate"',
        "<https://h/a?since=2>; rel=next",
        '</b>; rel="prev next"; title="x"',
        '<>; rel="next"',
    ]
    assert link_targets(fields, "next") == ["/a?since=1", "https://h/a?since=2", "/b", ""]
    assert link_targets(fields, "validate") == ["/a/validate?since=1"]


async def test_a_dead_next_link_is_abandoned_for_the_stored_position(sim: Sim) -> None:
    """A next link that keeps failing is retried with backoff, then abandoned: reading resumes from the stored
    position on the journal's own URL."""
    async with scripted_journal() as journal, reader_for(sim, journal.url) as (reader, _exporter, _gaps):
        journal.add(
            Answer(200, [("Link", '</journal/dead?since=p2>; rel="next"')], batch("p1", "p2")),
            *[Answer(404, body=b"no such path")] * 3,
            Answer(204, [("Link", NEXT.format("p2"))]),
        )
        await reader.read_once()
        delays = []
        for _ in range(3):
            with pytest.raises(Exception, match="404"):
                await reader.read_once()
            delays.append(reader._failed(RuntimeError("404")))
        await reader.read_once()
    paths = [(r["path"], r["query"].get("since")) for r in journal.requests]
    assert paths[1:4] == [("/journal/dead", "p2")] * 3
    assert paths[4] == ("/journal", "p2")
    assert all(d > 0 for d in delays)


async def test_unusable_links_and_positions_back_off_instead_of_spinning(sim: Sim) -> None:
    """An empty next link, a link off the journal's path prefix or origin, or an unchanged link after events, with
    no usable position in the batch: the reader backs off, longer each time, and the token never leaves the
    journal's own path."""
    async with scripted_journal() as journal, reader_for(sim, journal.url) as (reader, _exporter, _gaps):
        bad_page = json.dumps(
            {"events": [{"position": "p 1", "event": {"flowId": "x"}}], "_page": {"last": "not a position!"}}
        ).encode()
        journal.add(
            Answer(200, [("Link", "<>; rel=next")], bad_page),
            Answer(200, [("Link", '</elsewhere?since=p1>; rel="next"')], bad_page),
            Answer(200, [("Link", '<http://198.51.100.7/journal?since=p1>; rel="next"')], bad_page),
        )
        delays = [await reader.read_once() for _ in range(3)]
    assert delays[0] > 0 and delays[1] > delays[0] and delays[2] > delays[1]
    assert {r["path"] for r in journal.requests} == {"/journal"}


async def test_a_batch_over_the_cap_asks_for_fewer_events_and_every_entry_is_counted(sim: Sim) -> None:
    """A batch whose inflated body is over the cap halves the limit the next read asks for; entries that are not
    event objects are counted as invalid, not dropped."""
    async with scripted_journal() as journal, reader_for(sim, journal.url, max_bytes=4096) as (reader, exp, _g):
        big = batch(*[f"p{i}" for i in range(100)])
        mixed = json.dumps(
            {"events": [7, {"position": "p1"}, {"position": "p2", "event": {"flowId": "x"}}], "_page": {"last": "p2"}}
        ).encode()
        journal.add(Answer(200, [("Link", NEXT.format("p99"))], big), Answer(200, [("Link", NEXT.format("p2"))], mixed))
        assert await reader.read_once() == 0.0
        await reader.read_once()
        samples = await render(exp)
    assert [r["query"]["limit"] for r in journal.requests] == ["100", "50"]
    assert outcomes(samples, "journal")["invalid"] == 2


async def test_a_large_batch_never_holds_the_event_loop_for_its_whole_length(sim: Sim) -> None:
    """Twenty thousand entries are parsed off the loop and handed on in slices: another task runs many times
    while the one batch is read."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with scripted_journal() as journal, reader_for(sim, journal.url) as (reader, _exp, _g):
        journal.add(Answer(200, [("Link", NEXT.format("q19999"))], batch(*[f"q{i}" for i in range(20000)])))
        task = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        start = ticks
        await reader.read_once()
        task.cancel()
    assert ticks - start >= 100
