"""Shared fixtures (the helpers they use live in tests/simulation.py, tests/helpers.py and tests/servers.py).

Where each module's behaviour is pinned (tests/test_structure.py checks every product module is listed here and
every file named exists):

    app            test_lifecycle, test_reload, test_crash, test_config_and_state_safety
    auth           test_client, test_secrets, test_adobe_calls
    backfill       test_backfill
    backoff        test_client, test_faults
    bodies         test_adobe_calls, test_web
    checks         test_boundary, test_hostile, test_store
    cli            test_cli, test_onboarding, test_healthcheck, test_front_door
    client         test_client, test_adobe_calls, conformance/test_flow_service
    config         test_config, test_hostile
    configfile     test_config, test_hostile, test_reload
    counting       test_counting, test_count_floor, test_boundary, test_hostile
    demo           test_cli, test_front_door
    errors         test_structure
    events         test_events, test_event_shapes, conformance/test_notifications
    eventsources   test_events, test_journal, test_webhook_limits
    exemplars      test_exemplars
    exposition     test_exposition, test_web
    flowlist       test_poller, test_onboarding
    flowpage       test_flow_page
    hints          test_onboarding, test_adobe_calls
    history        test_backfill
    journal        test_journal, conformance/test_journaling_api
    listeners      test_webhook_limits, test_onboarding
    logs           test_logs
    metrics        test_model, test_structure, test_dashboards, test_exemplars
    model          test_model, test_boundary, test_hostile, conformance/test_flow_service
    pages          test_web, test_alerting
    poller         test_poller, test_adobe_calls, test_faults
    redaction      test_secrets
    rules          test_alerting, rules/aep-flows.test.yml
    runsquery      test_query_modes, test_count_floor
    slorules       test_slo, rules/aep-slo.test.yml, rules/aep-flows-day.test.yml
    schedules      test_schedules
    selfmetrics    test_client, test_poller, test_web
    statuses       test_model
    syntax         test_config, test_hostile
    statecodec     test_store, test_count_floor, test_flow_page
    store          test_store, test_crash, test_config_and_state_safety
    tracker        test_store, test_lifecycle
    transport      test_network
    values         test_secrets, test_count_floor
    web            test_web, test_web_security
    webconfig      test_webconfig, test_web_security, test_webhook_limits
    webhook        test_events, test_webhook_limits
    yamlfile       test_config, test_webconfig
    simulator/     test_simulator, conformance/
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import hypothesis  # noqa: F401 -- imported at collection, not by its plugin after the run (see below)
import pytest
from aiohttp.test_utils import TestServer

from exporter.app import Exporter
from exporter.config import Config
from exporter.simulator import World
from tests.helpers import free_port, serve, wait_http
from tests.simulation import Sim, make_config, make_exporter, make_world, start_sim

# Why hypothesis is imported here: when no collected test uses it, hypothesis's pytest plugin imports it while
# printing the summary, and CPython 3.11's AST compiler (sources are compiled on import: no .pyc is written
# here) can fail with "AST constructor recursion depth mismatch" if a thread left by a test compiles at the
# same moment. Importing it up front keeps that compile out of the race.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the long soak and crash-loop versions")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long version of a check; runs with --run-slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long soak and crash loop run only with --run-slow (their short versions always run)."""
    if config.getoption("--run-slow"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
async def sim(world: World) -> AsyncIterator[Sim]:
    handle, server = await start_sim(world)
    yield handle
    await server.close()


@pytest.fixture
async def served(sim: Sim) -> AsyncIterator[tuple[Exporter, TestServer]]:
    """A served exporter over the simulator: both sandboxes discovered, on the world's clock, polled by the test
    (``await exporter.poll_once()``), its web app on 127.0.0.1."""
    exporter = make_exporter(make_config(sim.url), world=sim.world)
    server = await serve(exporter)
    yield exporter, server
    await server.close()


@pytest.fixture
def exporter_factory() -> Callable[[Config], Exporter]:
    return make_exporter


@pytest.fixture
def simulator_process() -> Iterator[str]:
    """``aep-flow-exporter simulate`` in a subprocess, standing still in time."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "simulate",
            "--port",
            str(port),
            "--speed",
            "0",
            "--flows",
            "4",
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def promtool() -> str:
    """promtool from Debian's prometheus package; the test command installs it, so absence is a failure."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run the suite with `scripts/test`, which installs Debian's prometheus")
    return path
