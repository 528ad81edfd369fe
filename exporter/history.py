"""The history a backfill writes: each flow's counters and duration histogram over time, as OpenMetrics with
timestamps, for ``promtool tsdb create-blocks-from openmetrics``. Pure but for the output file.

Each run is counted at its own end (counting.replay: the counting rule, one run at a time). Per series, a sample
of 0 at the flow's counting start, one at every run end that changed it, one at every ``step`` (aligned to the
epoch, so a whole-hour or whole-day ``increase()`` has samples at both ends of its window) and one at the end of
the backfill, the value the live exporter continues from. The lines are prometheus-client's own OpenMetrics
rendering (exposition.generate), one family after the other as the format wants, in one file per day (see
``OpenMetricsDir``) while flows are written one at a time (memory holds one flow's history).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import Metric

from exporter.config import MetricsConfig
from exporter.counting import replay, zero_counts
from exporter.exposition import OPENMETRICS_EOF, generate, split_families
from exporter.metrics import counter_families
from exporter.model import Run
from exporter.values import FlowState

SeriesKey = tuple[str, str, str, str, tuple[tuple[str, str], ...]]  # family, help, type, sample name, labels


def _values(state: FlowState, metrics: MetricsConfig) -> dict[SeriesKey, float]:
    out: dict[SeriesKey, float] = {}
    for family in counter_families(state, metrics):
        for sample in family.samples:
            key = (family.name, family.documentation, family.type, sample.name, tuple(sorted(sample.labels.items())))
            out[key] = sample.value
    return out


@dataclass(frozen=True)
class FlowHistory:
    """One flow's history: the state the live exporter continues from, and its timestamped families."""

    state: FlowState
    families: list[Metric]
    samples: int


def flow_history(
    final: FlowState,
    runs: Sequence[Run],
    metrics: MetricsConfig,
    *,
    end_ms: int,
    step_s: float,
    target: Mapping[str, str],
) -> FlowHistory:
    """The flow's counters from its counting start to ``end_ms``, the counted ``runs`` replayed at their ends;
    ``target`` is the labels Prometheus attaches to the live series (``job``, ``instance``), on every sample."""
    start = final.counting_start_ms
    steps = list(replay(final, runs, metrics))
    last = steps[-1][1] if steps else zero_counts(final)
    current = dict.fromkeys(_values(last, metrics), 0.0)
    points: dict[SeriesKey, list[tuple[int, float]]] = {key: [] for key in current}

    def emit(key: SeriesKey, at_ms: int, value: float) -> None:
        series = points.setdefault(key, [])
        if series and series[-1][0] >= at_ms:
            series[-1] = (series[-1][0], value)  # two changes at one millisecond: the later value
        else:
            series.append((at_ms, value))

    for key in current:
        emit(key, start, 0.0)
    step_ms = int(step_s * 1000)
    grid = (start // step_ms + 1) * step_ms
    for ended, state in steps:
        at = min(max(ended, start), end_ms)
        while grid < at and grid < end_ms:
            for key, value in current.items():
                emit(key, grid, value)
            grid += step_ms
        for key, value in _values(state, metrics).items():
            if current.get(key) != value:
                current[key] = value
                emit(key, at, value)
    while grid < end_ms:
        for key, value in current.items():
            emit(key, grid, value)
        grid += step_ms
    for key, value in current.items():
        emit(key, end_ms, value)
    continued = steps[-1][1] if steps else final
    return FlowHistory(
        state=continued, families=_families(points, target), samples=sum(len(p) for p in points.values())
    )


def _families(points: dict[SeriesKey, list[tuple[int, float]]], target: Mapping[str, str]) -> list[Metric]:
    families: dict[str, Metric] = {}
    for (name, documentation, typ, sample, labels), series in points.items():
        family = families.get(name)
        if family is None:
            family = families[name] = Metric(name, documentation, typ)
        for at_ms, value in series:
            family.add_sample(sample, {**target, **dict(labels)}, value, timestamp=at_ms / 1000)
    return list(families.values())


DAY_MS = 86_400_000
FLUSH_BYTES = 256 * 1024


class OpenMetricsDir:
    """The backfill's output: one OpenMetrics file per UTC day (``YYYY-MM-DD.om``), for promtool to turn into
    blocks one at a time. promtool (2.x) reads its input once per 2-hour block it makes, so one file for 90 days
    would be read a thousand times; a day's file is read 12 times. Flows are added one at a time; each day's
    families are gathered in temporary files (buffered, appended), assembled family by family with ``# EOF`` by
    ``finish``, and moved into place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=".partial-", dir=path))
        self._headers: dict[int, bytes] = {}
        self._buffers: dict[tuple[int, int], list[bytes]] = {}
        self._sizes: dict[tuple[int, int], int] = {}
        self._written: set[tuple[int, int]] = set()

    def add(self, families: Iterable[Metric]) -> None:
        by_day: dict[int, list[Metric]] = {}
        for family in families:
            for sample in family.samples:
                day = int(float(sample.timestamp or 0) * 1000) // DAY_MS
                todays = by_day.setdefault(day, [])
                if not todays or todays[-1].name != family.name:
                    todays.append(Metric(family.name, family.documentation, family.type))
                todays[-1].samples.append(sample)
        for day, day_families in by_day.items():
            for index, (header, lines) in split_families(generate(day_families, openmetrics=True)).items():
                self._headers.setdefault(index, header)
                key = (day, index)
                self._buffers.setdefault(key, []).append(lines)
                self._sizes[key] = self._sizes.get(key, 0) + len(lines)
                if self._sizes[key] >= FLUSH_BYTES:
                    self._flush(key)

    def _flush(self, key: tuple[int, int]) -> None:
        with (self._dir / f"{key[0]}-{key[1]:04d}").open("ab") as part:
            part.writelines(self._buffers.pop(key, []))
        self._sizes[key] = 0
        self._written.add(key)

    def finish(self) -> tuple[list[Path], int]:
        """Write the day files; them, and their size in bytes."""
        for key in list(self._buffers):
            self._flush(key)
        days = sorted({day for day, _index in self._written})
        files, size = [], 0
        for day in days:
            name = time.strftime("%Y-%m-%d", time.gmtime(day * DAY_MS / 1000)) + ".om"
            partial = self._dir / name
            with partial.open("wb") as out:
                for index in sorted(i for d, i in self._written if d == day):
                    out.write(self._headers[index])
                    with (self._dir / f"{day}-{index:04d}").open("rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
                out.write(OPENMETRICS_EOF)
            final = self.path / name
            os.replace(partial, final)
            files.append(final)
            size += final.stat().st_size
        self.discard()
        return files, size

    def discard(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
