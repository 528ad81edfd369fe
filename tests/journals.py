"""A journal reader wired to a real exporter's client, router and state, for reading a journal step by step
(``read_once``), and a scripted journal server on 127.0.0.1 for the answers the simulator never gives."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from exporter.app import Exporter
from exporter.config import EventsConfig
from exporter.journal import JournalReader
from tests.simulation import Sim, make_config, make_exporter


@dataclass
class Answer:
    """One scripted answer: status, header fields (a name may repeat), body."""

    status: int = 204
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class ScriptedJournal:
    """Answers journal requests (``/journal`` and below) from a queue, then with the last answer again; records
    every request's path, query and headers."""

    def __init__(self) -> None:
        self.queue: deque[Answer] = deque()
        self.last = Answer()
        self.requests: list[dict[str, Any]] = []
        self.server: TestServer | None = None

    def add(self, *answers: Answer) -> None:
        self.queue.extend(answers)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "authorization": request.headers.get("Authorization", ""),
            }
        )
        if self.queue:
            self.last = self.queue.popleft()
        answer = self.last
        return web.Response(status=answer.status, body=answer.body or None, headers=CIMultiDict(answer.headers))

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/journal"))

    @property
    def origin(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")


@asynccontextmanager
async def scripted_journal() -> AsyncIterator[ScriptedJournal]:
    journal = ScriptedJournal()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", journal._handle)
    journal.server = TestServer(app, host="127.0.0.1")
    await journal.server.start_server()
    try:
        yield journal
    finally:
        await journal.server.close()


@asynccontextmanager
async def reader_for(
    sim: Sim, journal_url: str, *, state: str | None = None, **options: Any
) -> AsyncIterator[tuple[JournalReader, Exporter, list[str]]]:
    """A started exporter (its state file, client and router) with a journal reader on ``journal_url`` that the
    test drives by ``read_once``; the list collects every ``on_gap`` call."""
    config = make_config(sim.url, state_path=state, interval=600.0)
    config = dataclasses.replace(config, events=EventsConfig(journal_url=journal_url, journal_wait=0.5))
    exporter = make_exporter(config, world=sim.world)
    gaps: list[str] = []
    try:
        await exporter.start()
        exporter.metrics.start_events(("journal",))
        assert exporter._client is not None
        reader = JournalReader(
            client=exporter._client,
            url=journal_url,
            org_id=config.adobe.org_id,
            router=exporter.router,
            tracker=exporter.tracker,
            metrics=exporter.metrics,
            wait=0.5,
            clock=exporter.clock,
            on_gap=lambda: gaps.append("gap"),
            **options,
        )
        yield reader, exporter, gaps
    finally:
        await exporter.close()
