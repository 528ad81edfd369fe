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
from prometheus_client.utils import floatToGoString

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
    """One flow's history: the state the live exporter continues from, and each series' (time, value) points."""

    state: FlowState
    series: dict[SeriesKey, list[tuple[int, float]]]
    target: Mapping[str, str]

    @property
    def samples(self) -> int:
        return sum(len(points) for points in self.series.values())


class _Points:
    """Each series' points as they are written: a later change at the same millisecond replaces the earlier."""

    def __init__(self, keys: Iterable[SeriesKey]) -> None:
        self.current = dict.fromkeys(keys, 0.0)
        self.series: dict[SeriesKey, list[tuple[int, float]]] = {key: [] for key in self.current}

    def emit(self, key: SeriesKey, at_ms: int, value: float) -> None:
        points = self.series.setdefault(key, [])
        if points and points[-1][0] >= at_ms:
            points[-1] = (points[-1][0], value)
        else:
            points.append((at_ms, value))

    def emit_all(self, at_ms: int) -> None:
        for key, value in self.current.items():
            self.emit(key, at_ms, value)

    def change(self, values: Mapping[SeriesKey, float], at_ms: int) -> None:
        """The run just counted: each group with a changed series gets a point (a histogram's buckets, count and
        sum move together, one OpenMetrics point)."""
        changed = {_group(key) for key, value in values.items() if self.current.get(key) != value}
        for key, value in values.items():
            if _group(key) in changed:
                self.current[key] = value
                self.emit(key, at_ms, value)


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
    points = _Points(_values(steps[-1][1] if steps else zero_counts(final), metrics))
    points.emit_all(start)
    step_ms = int(step_s * 1000)
    grid = (start // step_ms + 1) * step_ms
    for ended, state in steps:
        at = min(max(ended, start), end_ms)
        while grid < min(at, end_ms):
            points.emit_all(grid)
            grid += step_ms
        points.change(_values(state, metrics), at)
    while grid < end_ms:
        points.emit_all(grid)
        grid += step_ms
    points.emit_all(end_ms)
    return FlowHistory(state=steps[-1][1] if steps else final, series=points.series, target=target)


def _group(key: SeriesKey) -> tuple[object, ...]:
    """The series that make one OpenMetrics point together: a histogram's buckets, count and sum; else itself."""
    name, _documentation, typ, _sample, labels = key
    if typ == "histogram":
        return (name, tuple(label for label in labels if label[0] != "le"))
    return key


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

    def add(self, history: FlowHistory) -> None:
        """One flow's history. Each series' name and labels are rendered once by prometheus-client (a sample of
        its own); its points follow as prometheus-client writes them (``floatToGoString`` value, the timestamp in
        seconds), the same lines at a fraction of the cost. A histogram's series are written point by point (at
        each time its buckets, count and sum), as OpenMetrics orders them."""
        groups: dict[tuple[object, ...], list[tuple[int, bytes, list[tuple[int, float]]]]] = {}
        for key, points in history.series.items():
            name, documentation, typ, sample, labels = key
            family = Metric(name, documentation, typ)
            family.add_sample(sample, {**history.target, **dict(labels)}, 0.0)
            ((index, (header, line)),) = split_families(generate([family], openmetrics=True)).items()
            self._headers.setdefault(index, header)
            groups.setdefault(_group(key), []).append((index, line[: line.rindex(b" ")] + b" ", points))
        for members in groups.values():
            for i in range(len(members[0][2])):
                for index, prefix, points in members:
                    at_ms, value = points[i]
                    self._put((at_ms // DAY_MS, index), prefix, at_ms, value)

    def _put(self, key: tuple[int, int], prefix: bytes, at_ms: int, value: float) -> None:
        text = prefix + f"{floatToGoString(value)} {at_ms / 1000}\n".encode()  # type: ignore[no-untyped-call]
        self._buffers.setdefault(key, []).append(text)
        self._sizes[key] = self._sizes.get(key, 0) + len(text)
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
