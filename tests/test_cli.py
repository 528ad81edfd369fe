"""The command line as users run it: real subprocesses on 127.0.0.1, signals, exit statuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from exporter import __version__
from exporter.simulator import Credentials
from tests.helpers import free_port, parse_samples, pick, sim_config_yaml, wait_http

PY = [sys.executable, "-m", "exporter"]


def write_config(path: Path, sim_url: str, *, listen: str = "127.0.0.1:0", state: str = "null") -> Path:
    sandboxes = (
        "  - name: prod\n    discover: {enabled: true}\n"
        "  - name: dev\n    labels: {team: data}\n    discover: {enabled: true}"
    )
    rest = (
        f"poll: {{interval: 2s, jitter: 0%, requests_per_second: 200}}\nstate: {{path: {state}}}\n"
        f'server: {{listen: "{listen}"}}\nlog: {{level: info, format: json}}'
    )
    path.write_text(sim_config_yaml(sim_url, sandboxes=sandboxes, rest=rest, secret="${SIM_SECRET}"))
    return path


ENV = {**os.environ, "SIM_SECRET": Credentials().client_secret}


def test_version_prints_the_package_version() -> None:
    """--version prints the version and exits 0."""
    proc = subprocess.run([*PY, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_once_prints_a_full_exposition(simulator_process: str, tmp_path: Path) -> None:
    """`once` polls every sandbox once against the simulator and prints the exposition; exit status 0."""
    config = write_config(tmp_path / "c.yaml", simulator_process)
    proc = subprocess.run(
        [*PY, "once", "--config", str(config)], capture_output=True, text=True, timeout=120, env=ENV, check=False
    )
    assert proc.returncode == 0, proc.stderr
    samples = parse_samples(proc.stdout)
    assert len(pick(samples, "aep_flow_info")) == 8
    assert len(pick(samples, "aep_flow_info", sandbox="dev", team="data")) == 4
    assert Credentials().client_secret not in proc.stdout + proc.stderr


def test_once_exits_1_when_a_sandbox_cannot_be_polled(simulator_process: str, tmp_path: Path) -> None:
    """A wrong secret makes `once` exit 1 with a logged poll failure that does not contain the secret."""
    config = write_config(tmp_path / "c.yaml", simulator_process)
    env = {**ENV, "SIM_SECRET": "definitely-wrong-secret"}
    proc = subprocess.run(
        [*PY, "once", "--config", str(config)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert proc.returncode == 1
    assert "poll_failed" in proc.stderr
    assert "definitely-wrong-secret" not in proc.stdout + proc.stderr


def test_run_serves_metrics_and_stops_cleanly_on_sigterm(simulator_process: str, tmp_path: Path) -> None:
    """`run` becomes ready, serves /metrics, and exits 0 on SIGTERM, closing the state file."""
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml", simulator_process, listen=f"127.0.0.1:{port}", state=str(tmp_path / "state.db")
    )
    proc = subprocess.Popen(
        [*PY, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        body = wait_http(f"http://127.0.0.1:{port}/metrics")
        assert len(pick(parse_samples(body), "aep_flow_info")) == 8
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert '"event": "stopped"' in err
    assert (tmp_path / "state.db").exists()


def test_demo_runs_simulator_and_exporter_together(tmp_path: Path) -> None:
    """`demo` needs no credentials: it serves the exporter's metrics for the simulator's flows; SIGINT stops it."""
    sim_port, port = free_port(), free_port()
    proc = subprocess.Popen(
        [*PY, "demo", "--port", str(sim_port), "--listen", f"127.0.0.1:{port}", "--interval", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        samples = parse_samples(wait_http(f"http://127.0.0.1:{port}/metrics"))
        assert len(pick(samples, "aep_flow_info")) == 16
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/metrics" in err


def test_run_refuses_a_foreign_state_file_with_status_1(simulator_process: str, tmp_path: Path) -> None:
    """A state.path that is not ours makes `run` exit 1 with a clear message, leaving the file alone."""
    foreign = tmp_path / "foreign.db"
    foreign.write_text("not a database")
    config = write_config(tmp_path / "c.yaml", simulator_process, state=str(foreign))
    proc = subprocess.run(
        [*PY, "run", "--config", str(config)], capture_output=True, text=True, timeout=60, env=ENV, check=False
    )
    assert proc.returncode == 1
    assert str(foreign) in proc.stderr
    assert foreign.read_text() == "not a database"
