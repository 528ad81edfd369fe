"""Soak (short version in the suite; the long one with --run-slow and in bench/soak.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).parent.parent / "bench" / "soak.py"


def run_soak(flows: int, seconds: int) -> dict[str, object]:
    proc = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--flows",
            str(flows),
            "--sim-hours",
            "1",
            "--seconds",
            str(seconds),
            "--every",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def check_flat(result: dict[str, object]) -> None:
    warm, end = result["after_warmup"], result["end"]
    assert isinstance(warm, dict) and isinstance(end, dict)
    print(f"soak: after warm-up {warm}, end {end}")
    # No leaked sockets or files: the floor of the last samples stays within the range seen after warm-up (a pooled
    # connection to the simulator can be open or not at any one sample; a leak raises the floor).
    samples = result["samples"]
    assert isinstance(samples, list)
    third = len(samples) // 3
    assert min(s["fds"] for s in samples[-3:]) <= max(s["fds"] for s in samples[third : 2 * third + 1]) + 2
    assert end["state_kb"] <= warm["state_kb"] * 1.5 + 64  # counted-run ids are pruned: the file stays bounded


def test_short_soak_keeps_files_and_state_flat() -> None:
    """An hour of simulated runs of 200 flows in 24 s: open files and state size stay flat after warm-up."""
    check_flat(run_soak(200, 24))


@pytest.mark.slow
def test_long_soak() -> None:
    """The long version: 1,000 flows, an hour of simulated time in four minutes."""
    check_flat(run_soak(1000, 240))
