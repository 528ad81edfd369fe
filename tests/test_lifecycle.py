"""The exporter's lifecycle: nothing is opened before start(), close() ends every task it started, and a reload
keeps the IMS token unless the credentials changed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.app import Exporter, Tuning
from exporter.configfile import load_config
from tests.helpers import sim_config_yaml
from tests.simulation import Sim, make_config, make_exporter


def test_constructing_an_exporter_touches_nothing(sim: Sim, tmp_path: Path) -> None:
    """The constructor does no I/O: the state file (and its folder) appear only when the exporter starts."""
    folder = tmp_path / "not-yet"
    make_exporter(make_config(sim.url, state_path=str(folder / "state.db")))
    assert not folder.exists()


async def test_close_ends_every_task_the_exporter_started(sim: Sim, tmp_path: Path) -> None:
    """After start(poll=True) (events journal on) and a SIGHUP-style reload under way, close() leaves no polling,
    journal or reload task."""
    path = tmp_path / "config.yaml"
    path.write_text(
        sim_config_yaml(
            sim.url,
            sandboxes="  - {name: prod, discover: {enabled: true}}",
            rest=f"poll: {{interval: 1h}}\nevents: {{journal_url: {sim.url}/events/journal}}",
        )
    )
    exporter = Exporter(load_config(path), registry=CollectorRegistry(), tuning=Tuning(), config_path=path)
    await exporter.start(poll=True)
    exporter.reload_soon()
    names = {t.get_name() for t in asyncio.all_tasks() if not t.get_name().startswith("simulator-")}
    assert {"reload", "events-journal"} <= names and any(n.startswith("poll-") for n in names)
    await exporter.close()
    left = {t.get_name() for t in asyncio.all_tasks() if not t.done()} & (names - {asyncio.current_task().get_name()})
    assert not left, left


async def test_reload_keeps_the_token_unless_the_credentials_change(sim: Sim, tmp_path: Path) -> None:
    """A reload with the same credentials asks IMS for nothing; one with a new secret drops the old token, so the
    next poll asks IMS again (here refused: the secret is wrong)."""
    path = tmp_path / "config.yaml"
    body = sim_config_yaml(
        sim.url,
        sandboxes="  - {name: prod, discover: {enabled: true}}",
        rest="poll: {requests_per_second: 500, jitter: 0%}",
    )
    path.write_text(body)
    exporter = Exporter(
        load_config(path), registry=CollectorRegistry(), tuning=Tuning(backoff_base=0.01), config_path=path
    )
    await exporter.start()
    try:
        assert await exporter.poll_once()
        asked = sim.simulator.requests["token"]
        assert await exporter.reload()
        assert await exporter.poll_once()
        assert sim.simulator.requests["token"] == asked
        path.write_text(body.replace("client_secret: sim-client-secret", "client_secret: rotated-secret"))
        assert await exporter.reload()
        assert not await exporter.poll_once()
        assert sim.simulator.requests["token"] > asked
    finally:
        await exporter.close()
