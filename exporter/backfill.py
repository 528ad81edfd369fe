"""``aep-flow-exporter backfill``: the history Adobe still holds (at most 90 days) written as OpenMetrics with
timestamps (a file per day), for ``promtool tsdb create-blocks-from openmetrics``, and the state the live exporter
continues from.

A backfill is the exporter's first poll with ``poll.initial_lookback`` set to ``--since``: the same listing,
runs queries (verified, at ``poll.requests_per_second``) and counting rule, into the state file. Each flow's
counted runs are then replayed in the order they ended (history.py), and the flow's state is saved with the
replay's counts: the exporter started afterwards serves the very values the history ends with (no reset at the
seam) and has every counted run's id (nothing is counted twice). So it must come first: a state file that already
holds flows is refused. Every backfilled series carries the ``job`` and ``instance`` labels Prometheus will give
the live one (``--job``, ``--instance``): with other labels they would be other series, and the seam a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from exporter.app import Exporter
from exporter.config import Config
from exporter.counting import Update
from exporter.errors import ConfigError, StateError
from exporter.history import OpenMetricsDir, flow_history
from exporter.pages import plural
from exporter.values import ADOBE_RUN_RETENTION_DAYS

DEFAULT_JOB = "aep-flow-exporter"
MAX_SINCE_S = ADOBE_RUN_RETENTION_DAYS * 86_400
"""Adobe keeps runs 90 days (Adobe's dataflow monitoring pages): there is nothing older to read."""


@dataclass(kw_only=True)
class Progress:
    """What the backfill has done so far (printed as it goes, and at the end)."""

    flows: int = 0
    runs: int = 0
    samples: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"backfill: {plural(self.flows, 'flow')} read, {self.runs:,} runs counted, {elapsed:.0f} s"


@dataclass(frozen=True, kw_only=True)
class Result:
    flows: int
    unreadable: int
    runs: int
    samples: int
    output_bytes: int
    files: tuple[Path, ...]
    api_calls: int
    seconds: float
    sandboxes_failed: tuple[str, ...]


def check(config: Config, since_s: float, step_s: float) -> None:
    """Refuse what cannot give a correct history, every problem at once."""
    problems = []
    if config.state.path is None:
        problems.append(
            "state.path: a backfill needs a state file (the exporter started after it continues from it; "
            "without one it would count every run again)"
        )
    if not 0 < since_s <= MAX_SINCE_S:
        days = ADOBE_RUN_RETENTION_DAYS
        problems.append(f"--since: between 1s and {days}d (Adobe keeps runs {days} days: there is nothing older)")
    if not 60 <= step_s <= 86_400:
        problems.append("--step: between 1m and 1d")
    if problems:
        raise ConfigError(problems)


class _Writer:
    """What the pollers hand each flow's update to: its history goes to the output, its state gets the replay's
    counts (the values the history ends with)."""

    def __init__(
        self, out: OpenMetricsDir, config: Config, step_s: float, target: Mapping[str, str], clock: Callable[[], float]
    ) -> None:
        self.out, self.config, self.step_s, self.target, self.clock = out, config, step_s, target, clock
        self.done = Progress()
        self.written: set[tuple[str, str]] = set()

    def __call__(self, update: Update) -> Update:
        if update.state.key in self.written:
            return update  # a sandbox read again after a failure mid-way: each flow's history is written once
        self.written.add(update.state.key)
        history = flow_history(
            update.state,
            update.counted,
            self.config.metrics,
            end_ms=int(self.clock() * 1000),
            step_s=self.step_s,
            target=self.target,
        )
        self.out.add(history)
        self.done.flows += 1
        self.done.runs += len(update.counted)
        self.done.samples += history.samples
        return dataclasses.replace(update, state=history.state)


async def backfill(
    config: Config,
    *,
    since_s: float,
    output: Path,
    step_s: float = 3600.0,
    target: Mapping[str, str] | None = None,
    progress: TextIO | None = None,
    every_s: float = 5.0,
    clock: Callable[[], float] = time.time,
) -> Result:
    """Read every tracked flow's runs of the last ``since_s`` once, write their history to ``output``, and save
    the states the exporter continues from. Raises ConfigError or StateError before anything is written."""
    check(config, since_s, step_s)
    labels = dict(target) if target is not None else default_target(config)
    config = dataclasses.replace(config, poll=dataclasses.replace(config.poll, initial_lookback=since_s))
    exporter = Exporter(config, clock=clock)
    out: OpenMetricsDir | None = None
    try:
        await exporter.start()
        _refuse_counted(exporter)
        out = OpenMetricsDir(output)
        writer = _Writer(out, config, step_s, labels, clock)
        for poller in exporter.pollers:
            poller.on_update = writer
            poller.flows_at_once = config.poll.max_concurrency  # as many flows as requests in flight
        reporter = asyncio.get_running_loop().create_task(_report(writer.done, progress, every_s))
        try:
            await _read_every_sandbox(exporter)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        files, size = out.finish()
        out = None
        return _result(exporter, writer.done, files, size)
    finally:
        if out is not None:
            out.discard()
        await exporter.close()


SANDBOX_ATTEMPTS = 4
"""A sandbox whose flows could not be listed is tried again, this many times in all: a backfill is run once, and
a second one would be refused (its state file holds the flows already read)."""


RETRY_PAUSE_S = 5.0
"""Seconds before the second attempt at a sandbox, twice that before the third, and so on."""


async def _read_every_sandbox(exporter: Exporter) -> None:
    """One cycle of every sandbox; the ones that could not be listed again, after a pause (their flows were not
    read, so nothing is read twice)."""
    pending = exporter.pollers
    for attempt in range(SANDBOX_ATTEMPTS):
        if attempt:
            await asyncio.sleep(RETRY_PAUSE_S * attempt)
        results = await asyncio.gather(*(poller.cycle() for poller in pending))
        snapshot = exporter.snapshot()
        failed = {s.name for s in snapshot.sandboxes if s.last_ok is False}
        pending = [p for p, ok in zip(pending, results, strict=True) if not ok and p.name in failed]
        if not pending:
            return


def _refuse_counted(exporter: Exporter) -> None:
    held = exporter.snapshot().flows
    if held:
        raise StateError(
            f"{exporter.config.state.path} already holds {plural(len(held), 'flow')}: a backfill comes before the "
            "exporter's first start (over a state that has counted, it would count runs twice or leave a reset "
            "at the seam); point state.path at a new file, or backfill before the first start"
        )


def _result(exporter: Exporter, done: Progress, files: list[Path], size: int) -> Result:
    snapshot = exporter.snapshot()
    calls = sum(
        s.value for m in exporter.metrics.api_requests.collect() for s in m.samples if s.name.endswith("_total")
    )
    return Result(
        flows=done.flows,
        unreadable=sum(1 for f in snapshot.flows if not f.up),
        runs=done.runs,
        samples=done.samples,
        output_bytes=size,
        files=tuple(files),
        api_calls=int(calls),
        seconds=time.monotonic() - done.started,
        sandboxes_failed=tuple(s.name for s in snapshot.sandboxes if s.last_ok is False),
    )


def default_target(config: Config) -> dict[str, str]:
    """The labels Prometheus gives the live series, as the shipped scrape config would: job ``aep-flow-exporter``
    (the alert rules expect it) and instance ``localhost:<server port>``; ``--job`` and ``--instance`` say otherwise."""
    return {"job": DEFAULT_JOB, "instance": f"localhost:{config.server.port}"}


async def _report(done: Progress, stream: TextIO | None, every_s: float) -> None:
    if stream is None:
        return
    while True:
        await asyncio.sleep(every_s)
        print(done.line(), file=stream, flush=True)


def summary(result: Result, output: Path) -> str:
    """What was written, and what to do next."""
    lines = [
        f"wrote {plural(len(result.files), 'day file')} to {output} ({result.output_bytes / 1e6:,.1f} MB): "
        f"{plural(result.flows, 'flow')}, {result.runs:,} runs, {result.samples:,} samples, "
        f"{result.api_calls:,} API calls, {result.seconds:.0f} s",
        f'next: for f in {output}/*.om; do promtool tsdb create-blocks-from openmetrics "$f" blocks; done, then move '
        "blocks/* into Prometheus's data directory (its retention at least --since) and start the exporter "
        '(README, "Backfill")',
    ]
    if result.unreadable or result.sandboxes_failed:
        failed = (
            f" (sandbox {', '.join(result.sandboxes_failed)} could not be listed)" if result.sandboxes_failed else ""
        )
        lines.append(
            f"warning: {plural(result.unreadable, 'flow')} could not be read{failed}: see the log; they have no "
            "history, and the exporter counts them from its own start"
        )
    return "\n".join(lines)
