"""Command line: ``run``, ``check-config``, ``once``, ``healthcheck``, ``rules``, ``--version``; and ``simulate``
and ``demo``, whose options and code are in demo.py, loaded only for them.

Exit status: 0 fine, 1 runtime failure (state file refused, a poll failed in ``once``), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import structlog

from exporter import __version__
from exporter.app import Exporter, tune_interpreter
from exporter.config import AlertsConfig, Config, SloConfig, StateConfig, config_warnings
from exporter.configfile import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATHS,
    Overrides,
    find_config,
    load_config,
)
from exporter.errors import ConfigError, ExporterError, StateError
from exporter.listeners import (
    ListenerLimits,
    connection_budget_problem,
    raise_file_limit,
    serve_until_signal,
    start_listener,
)
from exporter.logs import configure_logging
from exporter.pages import plural
from exporter.poller import NOT_LISTED
from exporter.rules import render as render_rules
from exporter.syntax import parse_duration
from exporter.transport import host_port

log = structlog.get_logger("exporter")

SIMULATOR_COMMANDS = ("simulate", "demo")


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; the options of ``simulate`` and ``demo`` are added only when one of them is the
    ``command`` (they come from demo.py, which loads the simulator)."""
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

    rules = sub.add_parser(
        "rules", help="print the Prometheus alert and recording rules for the config's alerts: section"
    )
    rules.add_argument(
        "--config",
        help="path of the YAML config (default: as run finds one; with none found, the defaults, which "
        "deploy/prometheus/rules/aep-flows.rules.yml holds)",
    )

    _backfill_parser(sub)

    sim = sub.add_parser("simulate", help="serve the fake Adobe IMS and Flow Service")
    demo = sub.add_parser("demo", help="simulator and exporter together: no Adobe account needed")
    if command in SIMULATOR_COMMANDS:
        from exporter import demo as demo_module  # noqa: PLC0415 -- only these commands load the simulator

        demo_module.add_arguments(sim, demo)
    return parser


def _backfill_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    back = sub.add_parser(
        "backfill",
        help="before the first start: write the runs Adobe still holds as OpenMetrics history for promtool",
    )
    _config_arg(back)
    back.add_argument("--since", default="90d", help="how far back, at most 90d (default %(default)s)")
    back.add_argument(
        "--output",
        default="aep-flows-backfill",
        help="the directory of the OpenMetrics files to write, one per day (default %(default)s)",
    )
    back.add_argument("--step", default="1h", help="a sample of every series at least this often (default %(default)s)")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help=f"path of the YAML config (default: ${CONFIG_ENV}, else ./config.yaml, else {DEFAULT_CONFIG_PATHS[1]})",
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
        await serve_until_signal([runner])

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


def _cmd_rules(args: argparse.Namespace) -> int:
    try:
        path = find_config(args.config)
    except ConfigError:
        if args.config is not None:
            raise
        alerts, slo = AlertsConfig(), SloConfig()  # no config anywhere: the defaults, as shipped
    else:
        config = load_config(path)
        alerts, slo = config.alerts, config.slo
    sys.stdout.write(render_rules(alerts, slo))
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    from exporter import backfill  # noqa: PLC0415 -- only this command needs it

    config = load_config(find_config(args.config))
    configure_logging(config.log.level, config.log.format)
    problems, spans = [], {}
    for option in ("since", "step"):
        try:
            spans[option] = parse_duration(getattr(args, option))
        except ValueError as exc:
            problems.append(f"--{option}: {exc}")
    if problems:
        raise ConfigError(problems)
    output = Path(args.output)
    result = asyncio.run(
        backfill.backfill(config, since_s=spans["since"], output=output, step_s=spans["step"], progress=sys.stderr)
    )
    print(backfill.summary(result, output))
    return 1 if result.unreadable or result.sandboxes_failed else 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(find_config(args.config))
    flows = sum(len(s.flows) for s in config.sandboxes)
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"config OK: {plural(len(config.sandboxes), 'sandbox', 'sandboxes')}, {plural(flows, 'configured flow')}")
    if not args.online:
        return 0
    configure_logging("error", "console")
    return asyncio.run(_online(config))


async def _online(config: Config) -> int:
    """check-config --online: a token, then a narrow table of what the credential can see in each sandbox, and
    each problem in full under it (Adobe's code and what to do)."""
    exporter = Exporter(dataclasses.replace(config, state=StateConfig(path=None)))
    try:
        surveys = await exporter.survey()
    except ExporterError as exc:
        print(f"cannot get a token: {exc}", file=sys.stderr)
        return 1
    finally:
        await exporter.close()
    print("token OK\n")
    rows = [("sandbox", "flows", "source", "destination", "tracked", "status")]
    problems = []
    for s in surveys:
        if s.error:
            rows.append((s.sandbox, "-", "-", "-", "-", s.problem))
            problems.append(f"{s.sandbox}: {s.error}")
            continue
        status = f"{plural(len(s.missing), 'configured flow')} not found" if s.missing else "ok"
        rows.append(
            (
                s.sandbox,
                str(sum(s.kinds.values())),
                str(s.kinds.get("source", 0)),
                str(s.kinds.get("destination", 0)),
                str(s.discovered),
                status,
            )
        )
        problems.extend(f"{s.sandbox}: configured flow {flow_id} {NOT_LISTED}" for flow_id in s.missing)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:5], widths[1:], strict=True))]
        print("  ".join([*cells, row[5]]))
    if problems:
        print("\nproblems:")
        for problem in problems:
            print(f"  {problem}")
    return 1 if problems else 0


def _cmd_simulator(args: argparse.Namespace) -> int:
    from exporter import demo  # noqa: PLC0415 -- loaded for simulate and demo alone

    return demo.cmd_simulate(args) if args.command == "simulate" else demo.cmd_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(next((a for a in arguments if not a.startswith("-")), None))
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        handler = {
            "run": _cmd_run,
            "once": _cmd_once,
            "check-config": _cmd_check_config,
            "healthcheck": _cmd_healthcheck,
            "rules": _cmd_rules,
            "backfill": _cmd_backfill,
            "simulate": _cmd_simulator,
            "demo": _cmd_simulator,
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
