"""Soak: hours of simulated dataflow activity compressed into minutes; RSS, open files and state size over time.

    python bench/soak.py [--flows 1000] [--sim-hours 1] [--seconds 240] [--json]

The simulator (on 127.0.0.1) runs its clock fast (every flow on a 15-minute schedule, runs up to 10
minutes), the exporter polls it every second as a real daemon with a state file. Every few seconds the
exporter's RSS, its open file descriptors and the state file's size are sampled. After warm-up (the first
third) they should stay flat: counted-run ids are pruned, sessions and files are reused. Bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = [sys.executable, "-m", "exporter"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 -- loopback only
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def sample(pid: int, state: Path) -> dict[str, float]:
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {
        "rss_mb": rss / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "state_kb": sum(p.stat().st_size for p in state.parent.glob(f"{state.name}*")) / 1024,
    }


def soak(flows: int, sim_hours: float, seconds: float, every: float) -> dict[str, Any]:
    sandboxes = 5 if flows >= 5 else 1
    speed = sim_hours * 3600 / seconds
    sim_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="aep-soak-") as tmp:
        work = Path(tmp)
        state = work / "state.db"
        names = ",".join(f"sb{i}" for i in range(sandboxes))
        sim = subprocess.Popen(
            [
                *PY,
                "simulate",
                "--port",
                str(sim_port),
                "--sandboxes",
                names,
                "--flows",
                str(flows // sandboxes),
                "--speed",
                str(speed),
                "--min-interval",
                "15m",
                "--max-duration",
                "10m",
                "--history",
                "1h",
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        exporter = None
        try:
            wait(f"http://127.0.0.1:{sim_port}/")
            config = work / "config.yaml"
            sandbox_yaml = "\n".join(f"  - {{name: sb{i}, discover: {{enabled: true}}}}" for i in range(sandboxes))
            config.write_text(f"""
adobe:
  client_id: sim-client-id
  client_secret: sim-client-secret
  org_id: SIMULATED000000000000000@AdobeOrg
  ims_token_url: http://127.0.0.1:{sim_port}/ims/token/v3
  flow_service_url: http://127.0.0.1:{sim_port}/data/foundation/flowservice
sandboxes:
{sandbox_yaml}
poll: {{interval: 1s, jitter: 0%, requests_per_second: 1000, max_concurrency: 16}}
state: {{path: {state}}}
server: {{listen: "127.0.0.1:{port}"}}
log: {{level: warning, format: json}}
""")
            exporter = subprocess.Popen(
                [*PY, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
            )
            wait(f"http://127.0.0.1:{port}/readyz")
            samples = []
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                time.sleep(every)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                    resp.read()  # scraped like Prometheus would, so the web side is soaked too
                samples.append({"t": round(time.monotonic() - started, 1), **sample(exporter.pid, state)})
        finally:
            for proc in (exporter, sim):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
    warm = samples[len(samples) // 3]
    last = samples[-1]
    return {
        "flows": flows,
        "sim_hours": sim_hours,
        "seconds": seconds,
        "samples": samples,
        "after_warmup": warm,
        "end": last,
        "growth_after_warmup": {
            k: (last[k] - warm[k]) / warm[k] if warm[k] else 0.0 for k in ("rss_mb", "fds", "state_kb")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--sim-hours", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = soak(args.flows, args.sim_hours, args.seconds, args.every)
    if args.json:
        print(json.dumps(result))
        return
    print(f"soak: {args.flows} flows, {args.sim_hours} simulated hours in {args.seconds:.0f} s (2 cores)")
    print("| t s | RSS MB | open fds | state file KB |\n|---:|---:|---:|---:|")
    for s in result["samples"]:
        print(f"| {s['t']} | {s['rss_mb']:.0f} | {s['fds']} | {s['state_kb']:.0f} |")
    growth = result["growth_after_warmup"]
    print(
        f"\ngrowth after warm-up: RSS {growth['rss_mb']:+.1%}, fds {growth['fds']:+.1%}, "
        f"state file {growth['state_kb']:+.1%}"
    )


if __name__ == "__main__":
    main()
