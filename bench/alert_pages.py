"""Pages and tickets: the shipped alert rules and Alertmanager routes against the demo, for some minutes, counted
at a webhook receiver; with ``--before REV``, the rules and routes of that git revision side by side in the same
run (each with its own demo, Prometheus and Alertmanager, all on 127.0.0.1).

Everything is real and as shipped: ``aep-flow-exporter demo`` (the simulator at 60x, two sandboxes of 8 flows:
``prod`` labelled tier production, ``dev`` tier development), Prometheus with the rules file and the scrape and
evaluation intervals of deploy/prometheus/prometheus.yml, Alertmanager with deploy/alertmanager/alertmanager.yml
(its timings kept, only the receivers' URLs pointed at the local receiver). Prints, per setup: notifications per
receiver (a page is a notification to ``pager``), the distinct alerts behind them, and the sandboxes they came
from.

    python bench/alert_pages.py [--minutes 10] [--before REV]

Nothing here asserts a number; every wait is bounded and every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import free_port
from tests.servers import process

ROOT = Path(__file__).resolve().parent.parent
RULES = Path("deploy/prometheus/rules/aep-flows.rules.yml")
ROUTES = Path("deploy/alertmanager/alertmanager.yml")
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
READY_WITHIN = 60.0
"""Seconds a process has to answer its readiness check (the demo starts slowly on a busy machine)."""


class Receiver:
    """Every Alertmanager notification, by receiver name (the last path segment)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, dict[str, Any]]] = []  # (setup, receiver, payload)
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.got.append((request.match_info["setup"], request.match_info["receiver"], await request.json()))
        return web.Response(text="ok")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{setup}/{receiver}", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def files_at(rev: str | None, into: Path) -> tuple[Path, Path]:
    """The rules file and the Alertmanager config of ``rev`` (None: the working tree)."""
    if rev is None:
        return ROOT / RULES, ROOT / ROUTES
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for path in (RULES, ROUTES):
        text = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout
        (into / path.name).write_text(text)
        out.append(into / path.name)
    return out[0], out[1]


@contextlib.asynccontextmanager
async def alerting(
    name: str, rules: Path, routes: Path, receiver: Receiver, *, exporter_port: int, tmp: Path
) -> AsyncIterator[None]:
    """Alertmanager with ``routes`` (its timings kept, each receiver delivering to ``receiver`` under ``name``) and
    Prometheus with ``rules`` and the shipped global intervals, scraping the exporter on ``exporter_port``."""
    am_port, prom_port = free_port(), free_port()
    am_config = yaml.safe_load(routes.read_text())
    am_config["receivers"] = [  # each receiver as shipped, but delivering to the local webhook receiver
        {"name": r["name"], "webhook_configs": [{"url": f"http://127.0.0.1:{receiver.port}/{name}/{r['name']}"}]}
        for r in am_config["receivers"]
    ]
    am_config["templates"] = [str(routes.parent / t) for t in am_config.get("templates", [])]
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    shipped = yaml.safe_load(PROMETHEUS.read_text())
    prom_config = {
        "global": shipped["global"],
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [
            {"job_name": "aep-flow-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    am = [
        shutil.which("prometheus-alertmanager") or "prometheus-alertmanager",
        f"--config.file={tmp / 'alertmanager.yml'}",
        f"--storage.path={tmp / 'am'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    prom = [
        shutil.which("prometheus") or "prometheus",
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    async with (
        process(am, f"http://127.0.0.1:{am_port}/-/ready", tmp / "alertmanager.log", READY_WITHIN),
        process(prom, f"http://127.0.0.1:{prom_port}/-/ready", tmp / "prometheus.log", READY_WITHIN),
    ):
        yield


async def setup(name: str, rules: Path, routes: Path, receiver: Receiver, tmp: Path) -> AsyncIterator[None]:
    tmp.mkdir(parents=True, exist_ok=True)
    sim_port, exp_port = free_port(), free_port()
    demo = [sys.executable, "-m", "exporter", "demo", "--port", str(sim_port), "--listen", f"127.0.0.1:{exp_port}"]
    async with (
        process(demo, f"http://127.0.0.1:{exp_port}/healthz", tmp / "demo.log", READY_WITHIN),
        alerting(name, rules, routes, receiver, exporter_port=exp_port, tmp=tmp),
    ):
        yield


def report(name: str, got: list[tuple[str, str, dict[str, Any]]], minutes: float) -> None:
    notes = collections.Counter(receiver for setup_name, receiver, _ in got if setup_name == name)
    alerts: dict[str, set[tuple[str, str, str]]] = collections.defaultdict(set)
    sandboxes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for setup_name, receiver, payload in got:
        if setup_name != name:
            continue
        for alert in payload["alerts"]:
            if alert["status"] != "firing":
                continue
            labels = alert["labels"]
            key = (labels.get("alertname", ""), labels.get("sandbox", "-"), labels.get("flow_id", "-"))
            if key not in alerts[receiver]:
                sandboxes[receiver][key[1]] += 1
            alerts[receiver].add(key)
    print(f"\n{name}: {minutes:g} minutes")
    print(f"  {'receiver':8} {'notifications':>13} {'distinct alerts':>15}  by sandbox (distinct alerts)")
    for receiver in sorted(set(notes) | set(alerts)):
        by = ", ".join(f"{s} {n}" for s, n in sorted(sandboxes[receiver].items())) or "-"
        print(f"  {receiver:8} {notes[receiver]:>13} {len(alerts[receiver]):>15}  {by}")
    names = collections.Counter(a for receiver in alerts for a, _s, _f in alerts[receiver])
    print("  alerts: " + (", ".join(f"{a} {n}" for a, n in sorted(names.items())) or "none"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--before", help="a git revision whose rules and routes run side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alert-pages-") as tmpdir:
        tmp = Path(tmpdir)
        setups = {"now": files_at(None, tmp / "now")}
        if args.before:
            setups["before"] = files_at(args.before, tmp / "before")
        async with Receiver() as receiver, contextlib.AsyncExitStack() as stack:
            for i, (name, (rules, routes)) in enumerate(setups.items()):
                await stack.enter_async_context(
                    contextlib.asynccontextmanager(setup)(name, rules, routes, receiver, tmp / f"run{i}")
                )
            before = f" (before: {args.before})" if args.before else ""
            print(f"running {', '.join(setups)}{before} for {args.minutes:g} minutes", flush=True)
            await asyncio.sleep(args.minutes * 60)
        for name in setups:
            report(name, receiver.got, args.minutes)


if __name__ == "__main__":
    asyncio.run(main())
