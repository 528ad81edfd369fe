"""Command line: ``run``, ``check-config``, ``once``, ``simulate``, ``demo``, ``--version``.

Exit status: 0 fine, 1 runtime failure (state file refused, a poll failed in ``once``), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiohttp import web

from exporter import __version__
from exporter.app import Exporter
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
    parse_duration,
    parse_listen,
)
from exporter.configfile import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATHS,
    Overrides,
    config_warnings,
    find_config,
    load_config,
)
from exporter.errors import ConfigError, ExporterError, StateError
from exporter.listeners import ListenerLimits, connection_budget_problem, raise_file_limit, start_listener
from exporter.simulator import Credentials, Faults, SimClock, Simulator, World
from exporter.simulator.events import ADOBE_RETRY_AFTER, JOURNAL_PATH
from exporter.simulator.server import (
    API_PREFIX,
    DEFAULT_ORDERS,
    IMS_PATH,
    MISSING_CREATED_AT_PLACES,
    RUNS_FILTER_MODES,
)
from exporter.transport import host_port
from exporter.values import Secret

log = structlog.get_logger("exporter")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def tune_interpreter() -> None:
    """The flow exposition renders on a worker thread; switching the GIL every 1 ms instead of 5 ms lets the
    event loop take it back sooner, keeping /healthz and scrapes responsive during a large render."""
    sys.setswitchinterval(0.001)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """structlog, once per process: JSON lines (or a console format) on stderr."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiohttp (and asyncio) report through the standard library; route them into the same JSON lines, without
    # their messages' arguments or tracebacks, which can quote request headers (Authorization included).
    root = logging.getLogger()
    root.handlers = [_StdlibToStructlog()]
    root.setLevel(logging.WARNING)


class _StdlibToStructlog(logging.Handler):
    """A standard-library record as one structlog event: logger, level, the fixed message and the exception's
    type; never the formatted arguments or the traceback (a bad header's value would be in them)."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, str] = {"logger": record.name}
        if record.exc_info and record.exc_info[0] is not None:
            fields["error_type"] = record.exc_info[0].__name__
        event = str(record.msg).split("%", 1)[0].strip() or "stdlib_log"
        structlog.get_logger("stdlib").log(record.levelno, event, **fields)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aep-flow-exporter", description="Prometheus exporter for Adobe Experience Platform dataflows."
    )
    parser.add_argument("--version", action="version", version=f"aep-flow-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the exporter daemon")
    _config_arg(run)
    run.add_argument(
        "--web.listen-address", "--listen", dest="listen", help="host:port to serve on (overrides server.listen)"
    )
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        help="exporter-toolkit web config: TLS, basic auth (overrides server.web_config_file)",
    )
    run.add_argument(
        "--log.level", dest="log_level", choices=("debug", "info", "warning", "error"), help="overrides log.level"
    )
    run.add_argument("--log.format", dest="log_format", choices=("json", "console"), help="overrides log.format")
    run.add_argument("--shard-index", type=int, help="this process's shard (overrides shard.index)")
    run.add_argument("--total-shards", type=int, help="number of shards (overrides shard.total)")

    check = sub.add_parser("check-config", help="validate a config and exit")
    _config_arg(check)
    check.add_argument(
        "--online", action="store_true", help="also get a token and list what the credential can see in each sandbox"
    )

    once = sub.add_parser("once", help="poll every sandbox once and print the exposition")
    _config_arg(once)

    health = sub.add_parser(
        "healthcheck", help="exit 0 when the exporter of this config answers /healthz (for Docker's HEALTHCHECK)"
    )
    _config_arg(health)
    health.add_argument("--timeout", type=float, default=4.0, help="seconds (default %(default)s)")

    sim = sub.add_parser("simulate", help="serve the fake Adobe IMS and Flow Service")
    _simulator_args(sim, port=9848)

    demo = sub.add_parser("demo", help="simulator and exporter together: no Adobe account needed")
    _simulator_args(demo, port=9848)
    demo.add_argument("--listen", default="127.0.0.1:9847", help="host:port of the exporter (default %(default)s)")
    demo.add_argument("--interval", default="15s", help="poll interval (default %(default)s)")
    return parser


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help=f"path of the YAML config (default: ${CONFIG_ENV}, else ./config.yaml, else {DEFAULT_CONFIG_PATHS[1]})",
    )


def _simulator_args(p: argparse.ArgumentParser, *, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="simulator address (default %(default)s)")
    p.add_argument("--port", type=int, default=port, help="simulator port (default %(default)s)")
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
                name=name, labels={"env": "demo"}, discover=DiscoverConfig(enabled=True), interval=interval, jitter=0.1
            )
            for name in sandboxes
        ),
        poll=PollConfig(interval=interval),
        state=StateConfig(path=None),
        server=ServerConfig(host=listen[0], port=listen[1]),
        log=LogConfig(level="info", format="console"),
        events=EventsConfig(journal_url=f"{sim_url}{JOURNAL_PATH}"),  # runs refresh the moment they end
    )


def _print_problems(exc: ConfigError) -> int:
    print("aep-flow-exporter: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


def _overrides(args: argparse.Namespace) -> Overrides:
    """The run flags as config values (validated with the file's, and applied again on every reload)."""
    out: dict[str, dict[str, object]] = {}
    if args.listen:
        out.setdefault("server", {})["listen"] = args.listen
    if args.web_config_file:
        out.setdefault("server", {})["web_config_file"] = str(Path(args.web_config_file).resolve())
    if args.log_level:
        out.setdefault("log", {})["level"] = args.log_level
    if args.log_format:
        out.setdefault("log", {})["format"] = args.log_format
    if args.shard_index is not None:
        out.setdefault("shard", {})["index"] = args.shard_index
    if args.total_shards is not None:
        out.setdefault("shard", {})["total"] = args.total_shards
    return out


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (so a busy port fails before the first poll)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=512)


def _cmd_run(args: argparse.Namespace) -> int:
    path = find_config(args.config)
    overrides = _overrides(args)
    config = load_config(path, overrides=overrides)
    configure_logging(config.log.level, config.log.format)
    listen = f"{config.server.host}:{config.server.port}"
    try:
        sock = bind(config.server.host, config.server.port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(
            f"aep-flow-exporter: cannot listen on {listen}: {reason} (another process has the port? "
            "change server.listen or --web.listen-address)",
            file=sys.stderr,
        )
        return 1
    limit = raise_file_limit()
    caps = {"server.max_connections": config.server.max_connections}
    if config.events.webhook is not None:
        caps["events.webhook.max_connections"] = config.events.webhook.max_connections
    problem = connection_budget_problem(caps, limit)
    if problem:
        sock.close()
        print(f"aep-flow-exporter: {problem}", file=sys.stderr)
        return 1
    tune_interpreter()
    exporter = Exporter(config, config_path=path, config_overrides=overrides)
    for warning in config_warnings(config):
        log.warning("config_warning", problem=warning)
    log.info(
        "starting",
        version=__version__,
        config=str(path),
        listen=listen,
        tls=config.server.web.ssl_context is not None,
        basic_auth=bool(config.server.web.users),
        proxy=host_port(config.adobe.proxy) if config.adobe.proxy else None,
        open_files_limit=limit,
        sandboxes=[s.name for s in config.sandboxes],
        shard=f"{config.shard.index}/{config.shard.total}",
    )
    limits = ListenerLimits(
        header_timeout=config.server.read_header_timeout, max_connections=config.server.max_connections, backlog=512
    )

    async def serve() -> None:
        runner, _site = await start_listener(
            exporter.web_app(), name="metrics", limits=limits, sock=sock, ssl_context=config.server.web.ssl_context
        )
        await _serve_until_signal([runner])

    asyncio.run(serve())
    return 0


def _cmd_once(args: argparse.Namespace) -> int:
    config = load_config(find_config(args.config))
    configure_logging(config.log.level, config.log.format)

    async def once() -> int:
        exporter = Exporter(config)
        try:
            await exporter.start()
            ok = await exporter.poll_once()
            body = await exporter.renderer.render(openmetrics=False, gzip=False)
            sys.stdout.write(body.decode())
            snapshot = exporter.snapshot()
            failed = [s.name for s in snapshot.sandboxes if s.last_ok is False]
            if failed or not ok:
                print(
                    f"aep-flow-exporter: could not poll sandbox {', '.join(failed) or '(see the log)'}", file=sys.stderr
                )
                return 1
            if snapshot.flows and not any(f.up for f in snapshot.flows):
                print(
                    f"aep-flow-exporter: none of the {len(snapshot.flows)} flows could be read (see the log)",
                    file=sys.stderr,
                )
                return 1
            return 0
        finally:
            await exporter.close()

    return asyncio.run(once())


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    """GET /healthz of the exporter the config describes: its port, over TLS when its web config has TLS (the
    certificate is not checked: it is our own process on loopback); /healthz needs no password."""
    server = load_config(find_config(args.config)).server
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)  # noqa: S104 -- the wildcard itself
    scheme = "https" if server.web.ssl_context is not None else "http"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{server.port}/healthz"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # loopback, our own process: liveness, not identity
    # Never through a proxy (HTTP_PROXY would send our own loopback request away), and --timeout bounds the whole
    # check, not each socket operation (a port that trickles bytes could otherwise hold it for ever).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    deadline = time.monotonic() + args.timeout
    done: list[int] = []

    def check() -> None:
        try:
            with opener.open(url, timeout=args.timeout) as resp:
                while resp.read(65536) and time.monotonic() < deadline:
                    pass
                done.append(0 if resp.status == 200 else 1)
        except OSError as exc:
            print(f"aep-flow-exporter: {url}: {exc}", file=sys.stderr)
            done.append(1)

    worker = threading.Thread(target=check, name="healthcheck", daemon=True)
    worker.start()
    worker.join(args.timeout)
    if not done:
        print(f"aep-flow-exporter: {url}: no answer within {args.timeout:g} s", file=sys.stderr)
        return 1
    return done[0]


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(find_config(args.config))
    flows = sum(len(s.flows) for s in config.sandboxes)
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"config OK: {len(config.sandboxes)} sandboxes, {flows} configured flows")
    if not args.online:
        return 0
    configure_logging("error", "console")
    return asyncio.run(_online(config))


async def _online(config: Config) -> int:
    """check-config --online: a token, then a table of what the credential can see in each sandbox."""
    exporter = Exporter(dataclasses.replace(config, state=StateConfig(path=None)))
    try:
        surveys = await exporter.survey()
    except ExporterError as exc:
        print(f"cannot get a token: {exc}", file=sys.stderr)
        return 1
    finally:
        await exporter.close()
    print("token OK")
    rows = [("sandbox", "flows", "source", "destination", "discovery tracks", "configured not found", "problem")]
    for s in surveys:
        if s.error:
            rows.append((s.sandbox, "-", "-", "-", "-", "-", s.error))
        else:
            rows.append(
                (
                    s.sandbox,
                    str(sum(s.kinds.values())),
                    str(s.kinds.get("source", 0)),
                    str(s.kinds.get("destination", 0)),
                    str(s.discovered),
                    ", ".join(s.missing) or "none",
                    "none" if not s.missing else "configured ids not found",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True)) + "  " + row[6])
    return 1 if any(s.error or s.missing for s in surveys) else 0


async def _serve_until_signal(runners: list[web.AppRunner]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


DEMO_LIMITS = ListenerLimits(header_timeout=30.0, max_connections=256)


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner, _site = await start_listener(app, name="demo", limits=DEMO_LIMITS, host=host, port=port)
    return runner


def _cmd_simulate(args: argparse.Namespace) -> int:
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
        await _serve_until_signal([runner])

    asyncio.run(serve())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    configure_logging("info", args.log_format)
    tune_interpreter()
    sim = _build_simulator(args)
    sim_url = f"http://{args.host}:{args.port}"
    try:
        listen, interval = parse_listen(args.listen), parse_duration(args.interval)
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"--listen/--interval: {exc}"]) from exc
    config = demo_config(sim_url=sim_url, sandboxes=list(sim.world.flows), listen=listen, interval=interval)
    exporter = Exporter(config)

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
        await _serve_until_signal([sim_runner, exp_runner])

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        handler = {
            "run": _cmd_run,
            "once": _cmd_once,
            "check-config": _cmd_check_config,
            "healthcheck": _cmd_healthcheck,
            "simulate": _cmd_simulate,
            "demo": _cmd_demo,
        }[args.command]
        return handler(args)
    except ConfigError as exc:
        return _print_problems(exc)
    except StateError as exc:
        print(f"aep-flow-exporter: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"aep-flow-exporter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
