"""``simulate`` and ``demo``: the bundled Flow Service simulator alone, or with an exporter polling it.

Imported by cli.py only when one of these two commands is asked for, so ``run`` never loads the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import structlog
from aiohttp import web

from exporter.app import Exporter, tune_interpreter
from exporter.config import (
    AdobeConfig,
    Config,
    DiscoverConfig,
    EventsConfig,
    LogConfig,
    PollConfig,
    SandboxConfig,
    ServerConfig,
    StateConfig,
)
from exporter.errors import ConfigError
from exporter.listeners import ListenerLimits, serve_until_signal, start_listener
from exporter.logs import configure_logging
from exporter.simulator import Credentials, Faults, SimClock, Simulator, World
from exporter.simulator.events import ADOBE_RETRY_AFTER, JOURNAL_PATH
from exporter.simulator.server import (
    API_PREFIX,
    DEFAULT_ORDERS,
    IMS_PATH,
    MISSING_CREATED_AT_PLACES,
    RUNS_FILTER_MODES,
)
from exporter.syntax import parse_duration, parse_listen
from exporter.values import Secret

log = structlog.get_logger("exporter")

SIMULATOR_PORT = 9848
DEMO_LIMITS = ListenerLimits(header_timeout=30.0, max_connections=256)


def add_arguments(simulate: argparse.ArgumentParser, demo: argparse.ArgumentParser) -> None:
    """The options of ``simulate`` and ``demo`` (the simulator's, and demo's own)."""
    for p in (simulate, demo):
        _simulator_args(p)
    demo.add_argument("--listen", default="127.0.0.1:9847", help="host:port of the exporter (default %(default)s)")
    demo.add_argument("--interval", default="15s", help="poll interval (default %(default)s)")


def _simulator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="simulator address (default %(default)s)")
    p.add_argument("--port", type=int, default=SIMULATOR_PORT, help="simulator port (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="makes flows and runs reproducible (default %(default)s)")
    p.add_argument("--sandboxes", default="prod,dev", help="comma-separated sandbox names (default %(default)s)")
    p.add_argument("--flows", type=int, default=8, help="flows per sandbox (default %(default)s)")
    p.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated seconds per real second (default %(default)s: a 15-minute schedule runs every 15 s)",
    )
    p.add_argument("--history", default="6h", help="runs already made at start (default %(default)s)")
    p.add_argument("--min-interval", default=None, help="put every scheduled flow on this interval, e.g. 15m")
    p.add_argument("--max-duration", default="2h", help="longest run duration (default %(default)s)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every API answer")
    p.add_argument("--error-rate", type=float, default=0.0, help="probability of a 5xx answer")
    p.add_argument("--throttle-rate", type=float, default=0.0, help="probability of a 429 answer")
    p.add_argument("--retry-after", default=None, help="Retry-After header of 429 answers (seconds)")
    p.add_argument("--slow-rate", type=float, default=0.0, help="probability of a slow answer")
    p.add_argument("--slow-seconds", type=float, default=0.0, help="how slow a slow answer is")
    p.add_argument("--token-lifetime", type=float, default=86399.0, help="seconds an issued token is valid")
    p.add_argument(
        "--runs-filters",
        default="honour",
        choices=RUNS_FILTER_MODES,
        help="how /runs treats time filters and order: honour them, refuse the createdAt ones (400), "
        "refuse every time filter, or ignore them and list runs unordered (default %(default)s)",
    )
    p.add_argument(
        "--refuse-shape",
        default="platform",
        choices=("platform", "gateway"),
        help="error body of a refused filter: RFC-7807 platform error or gateway error_code",
    )
    p.add_argument(
        "--omit-created-at",
        type=float,
        default=0.0,
        help="share of runs whose payload has no createdAt (half of them no updatedAt either)",
    )
    p.add_argument(
        "--missing-created-at",
        default="interleaved",
        choices=MISSING_CREATED_AT_PLACES,
        help="where /runs lists runs without createdAt (default %(default)s)",
    )
    p.add_argument(
        "--default-order",
        default="newest_first",
        choices=DEFAULT_ORDERS,
        help="order of /runs without orderby (default %(default)s)",
    )
    p.add_argument(
        "--journal-retry-after",
        default=ADOBE_RETRY_AFTER,
        help="retry-after of the events journal's 204 answers, in seconds (default %(default)s, Adobe's)",
    )
    p.add_argument("--log-format", default="console", choices=("json", "console"))


def _build_simulator(args: argparse.Namespace) -> Simulator:
    min_interval = int(parse_duration(args.min_interval)) if args.min_interval else None
    world = World(
        seed=args.seed,
        sandboxes=tuple(s.strip() for s in args.sandboxes.split(",") if s.strip()),
        flows_per_sandbox=args.flows,
        history_s=parse_duration(args.history),
        clock=SimClock(speed=args.speed),
        min_interval_s=min_interval,
        max_duration_s=parse_duration(args.max_duration),
    )
    faults = Faults(
        latency_s=args.latency,
        error_rate=args.error_rate,
        throttle_rate=args.throttle_rate,
        retry_after=args.retry_after,
        slow_rate=args.slow_rate,
        slow_s=args.slow_seconds,
        runs_filters=args.runs_filters,
        refuse_shape=args.refuse_shape,
        omit_created_at=args.omit_created_at,
        missing_created_at=args.missing_created_at,
        default_order=args.default_order,
    )
    sim = Simulator(world, faults=faults, token_lifetime_s=args.token_lifetime, seed=args.seed)
    sim.events.faults.retry_after = args.journal_retry_after
    return sim


def demo_tier(sandbox: str) -> str:
    """The demo's tier label: ``production`` for a sandbox named prod or production (its alerts page), else
    ``development`` (tickets only)."""
    return "production" if sandbox.lower() in ("prod", "production") else "development"


def demo_config(*, sim_url: str, sandboxes: Sequence[str], listen: tuple[str, int], interval: float) -> Config:
    """The exporter config ``demo`` runs with: discover every flow of the simulator's sandboxes."""
    creds = Credentials()
    return Config(
        adobe=AdobeConfig(
            client_id=creds.client_id,
            client_secret=Secret(creds.client_secret),
            org_id=creds.org_id,
            ims_token_url=f"{sim_url}{IMS_PATH}",
            flow_service_url=f"{sim_url}{API_PREFIX}",
        ),
        sandboxes=tuple(
            SandboxConfig(
                name=name,
                labels={"env": "demo", "tier": demo_tier(name)},
                discover=DiscoverConfig(enabled=True),
                interval=interval,
                jitter=0.1,
            )
            for name in sandboxes
        ),
        poll=PollConfig(interval=interval),
        state=StateConfig(path=None),
        server=ServerConfig(host=listen[0], port=listen[1]),
        log=LogConfig(level="info", format="console"),
        events=EventsConfig(journal_url=f"{sim_url}{JOURNAL_PATH}"),  # runs refresh the moment they end
    )


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner, _site = await start_listener(app, name="demo", limits=DEMO_LIMITS, host=host, port=port)
    return runner


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve the fake Adobe IMS and Flow Service until a signal."""
    configure_logging("info", args.log_format)
    sim = _build_simulator(args)

    async def serve() -> None:
        runner = await _start(sim.app(), args.host, args.port)
        url = f"http://{args.host}:{args.port}"
        log.info(
            "simulator_started",
            url=url,
            sandboxes=list(sim.world.flows),
            client_id=sim.credentials.client_id,
            org_id=sim.credentials.org_id,
            ims_token_url=f"{url}{IMS_PATH}",
            flow_service_url=f"{url}{API_PREFIX}",
        )
        await serve_until_signal([runner])

    asyncio.run(serve())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The simulator and an exporter discovering its flows, in one process, until a signal."""
    configure_logging("info", args.log_format)
    tune_interpreter()
    sim = _build_simulator(args)
    sim_url = f"http://{args.host}:{args.port}"
    try:
        listen, interval = parse_listen(args.listen), parse_duration(args.interval)
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"--listen/--interval: {exc}"]) from exc
    config = demo_config(sim_url=sim_url, sandboxes=list(sim.world.flows), listen=listen, interval=interval)
    # One clock: the exporter reads the simulator's (which runs at --speed), so Adobe's times are never "ahead"
    # of it, and the landing page says the clock is simulated.
    exporter = Exporter(
        config,
        clock=lambda: sim.world.now_ms() / 1000.0,
        clock_note=f"The demo's clock: simulated time, at {args.speed:g}x real time.",
    )

    async def serve() -> None:
        sim_runner = await _start(sim.app(), args.host, args.port)
        exp_runner = await _start(exporter.web_app(), config.server.host, config.server.port)
        url = f"http://{config.server.host}:{config.server.port}"
        print(
            f"""
aep-flow-exporter demo is running (Ctrl-C to stop)
  exporter landing page : {url}/
  metrics               : {url}/metrics
  simulator (fake Adobe): {sim_url}/   ground truth: {sim_url}/_sim/truth
""",
            file=sys.stderr,
            flush=True,
        )
        await serve_until_signal([sim_runner, exp_runner])

    asyncio.run(serve())
    return 0
