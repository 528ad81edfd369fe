"""A backfill measured: 1,000 flows x 90 days of hourly runs from the simulator at Adobe-like latency, through
``aep-flow-exporter backfill`` at the default rate limit, then ``promtool tsdb create-blocks-from openmetrics``.

The simulator runs as its own process (``aep-flow-exporter simulate``: 10 sandboxes of 100 flows, every scheduled
flow on a 1-hour schedule, 90 days of history, its clock standing still, ``--latency`` added to every answer),
on 127.0.0.1; the backfill runs as the command a user types, in a process of its own, so its peak memory is its
own (``wait4``'s rusage). Prints the API calls, the wall time, the peak RSS, the output's size and samples, and
promtool's time and the blocks' size.

    python bench/backfill.py [--flows 1000] [--days 90] [--latency 0.25] [--rate 10]

Nothing here asserts a number; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import free_port, sim_config_yaml, wait_http


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds per API answer (default %(default)s)")
    parser.add_argument("--rate", type=float, default=10.0, help="poll.requests_per_second (default: its default)")
    args = parser.parse_args()
    promtool = shutil.which("promtool")
    if promtool is None:
        raise SystemExit("promtool not found: install Debian's prometheus package (scripts/test does)")
    sandboxes = [f"prod{i}" for i in range(10)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmpdir:
        tmp = Path(tmpdir)
        sim = subprocess.Popen(
            [sys.executable, "-m", "exporter", "simulate", "--port", str(port), "--speed", "0",
             "--sandboxes", ",".join(sandboxes), "--flows", str(max(1, args.flows // len(sandboxes))),
             "--history", f"{args.days}d", "--min-interval", "1h", "--max-duration", "20m",
             "--latency", str(args.latency), "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_http(f"{url}/", timeout=120)
            listed = "\n".join(f"  - name: {s}\n    discover: {{enabled: true}}" for s in sandboxes)
            config = tmp / "config.yaml"
            config.write_text(
                sim_config_yaml(
                    url,
                    sandboxes=listed,
                    rest=f"poll:\n  requests_per_second: {args.rate}\nstate:\n  path: {tmp / 'state.db'}\n"
                    "log:\n  level: error\n",
                )
            )
            output = tmp / "history"
            started = time.monotonic()
            with (tmp / "progress.log").open("w") as progress:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "exporter", "backfill", "--config", str(config),
                     "--since", f"{args.days}d", "--output", str(output)],
                    stdout=subprocess.PIPE, stderr=progress, text=True,
                )  # fmt: skip
                assert proc.stdout is not None
                summary = proc.stdout.read()
                _pid, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - started
            print(summary.strip())
            if os.waitstatus_to_exitcode(status) != 0:
                print((tmp / "progress.log").read_text()[-3000:])
        finally:
            sim.terminate()
            sim.wait(timeout=60)
        found = re.search(r"([\d,]+) runs, ([\d,]+) samples, ([\d,]+) API calls", summary)
        runs, samples, calls = (int(g.replace(",", "")) for g in found.groups()) if found else (0, 0, 0)
        days = sorted(output.glob("*.om"))
        size = sum(d.stat().st_size for d in days)
        started = time.monotonic()
        for day in days:  # as README says: one promtool run per day file
            made = subprocess.run(
                [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(day), str(tmp / "blocks")],
                capture_output=True, text=True, timeout=3600, check=False,
            )  # fmt: skip
            if made.returncode != 0:
                print(made.stderr[-2000:])
                break
        blocks_s = time.monotonic() - started
        blocks = _size(tmp / "blocks") if (tmp / "blocks").exists() else 0
    print(f"\nbackfill of {args.flows} flows x {args.days} days of hourly runs, {args.latency:g} s per answer")
    rows = [
        ("runs counted", f"{runs:,}"),
        ("API calls", f"{calls:,}"),
        (f"wall time at {args.rate:g} requests/s", f"{wall:,.0f} s"),
        ("peak RSS of the backfill", f"{usage.ru_maxrss / 1024:,.0f} MiB"),
        ("OpenMetrics output", f"{size / 1e9:,.2f} GB in {len(days)} day files, {samples:,} samples"),
        ("promtool create-blocks-from openmetrics", f"{blocks_s:,.0f} s"),
        ("blocks", f"{blocks / 1e9:,.2f} GB"),
    ]
    for name, shown in rows:
        print(f"  {name:42} {shown}")


if __name__ == "__main__":
    main()
