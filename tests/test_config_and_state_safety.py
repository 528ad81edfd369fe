"""Config and state cannot be turned against the exporter: a bad secret file is a config error naming the key
(at start and on reload), config errors never echo an environment variable's value, the state file is locked
against a second exporter, and a read-only state directory is reported as a permission problem."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.app import Exporter, Tuning
from exporter.configfile import load_config
from exporter.errors import StateError
from exporter.store import SqliteStore
from tests.helpers import parse_samples, scrape, serve, sim_config_yaml, value
from tests.simulation import Sim, make_config, make_exporter

PY = [sys.executable, "-m", "exporter"]


def secret_file_config(tmp_path: Path, secret_path: str) -> Path:
    body = sim_config_yaml("http://127.0.0.1:9", sandboxes="  - {name: prod, discover: {enabled: true}}")
    body = body.replace("  client_secret: sim-client-secret\n", f"  client_secret_file: {secret_path}\n")
    path = tmp_path / "config.yaml"
    path.write_text(body)
    return path


def check_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PY, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **env},
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "secret.fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["invalid UTF-8", "missing", "a directory", "/dev/zero", "a FIFO", "empty"])
def test_a_bad_client_secret_file_is_a_config_error_naming_the_key(kind: str, tmp_path: Path, fifo: Path) -> None:
    """Invalid UTF-8, unreadable, not a regular file (/dev/zero, a FIFO: no hang) or empty: exit 2 naming
    adobe.client_secret_file, without its content."""
    target = {
        "invalid UTF-8": tmp_path / "bad.txt",
        "missing": tmp_path / "absent.txt",
        "a directory": tmp_path,
        "/dev/zero": Path("/dev/zero"),
        "a FIFO": fifo,
        "empty": tmp_path / "empty.txt",
    }[kind]
    if kind == "invalid UTF-8":
        target.write_bytes(b"\xff\xfe s3cr3t \xc3")
    if kind == "empty":
        target.write_text("\n")
    proc = check_config(secret_file_config(tmp_path, str(target)))
    assert proc.returncode == 2, proc.stderr
    assert "adobe.client_secret_file:" in proc.stderr
    assert "s3cr3t" not in proc.stderr


async def test_a_secret_file_broken_before_a_reload_fails_the_reload_and_keeps_the_old_config(
    sim: Sim, tmp_path: Path
) -> None:
    """On reload, an unreadable secret file is a failed reload: the gauge says 0 and polling goes on as before."""
    secret = tmp_path / "secret.txt"
    secret.write_text("sim-client-secret\n")
    body = sim_config_yaml(
        sim.url,
        sandboxes="  - {name: prod, discover: {enabled: true}}",
        rest="poll: {requests_per_second: 500, jitter: 0%}",
    )
    path = tmp_path / "config.yaml"
    path.write_text(body.replace("  client_secret: sim-client-secret\n", f"  client_secret_file: {secret}\n"))
    exporter = Exporter(
        load_config(path), registry=CollectorRegistry(), tuning=Tuning(self_metrics_ttl=0.0), config_path=path
    )
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        secret.write_bytes(b"\xff\xfe\xfd")
        assert not await exporter.reload()
        assert await exporter.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    samples = parse_samples(text)
    assert value(samples, "aep_exporter_config_last_reload_successful") == 0
    assert value(samples, "aep_exporter_last_poll_success_timestamp_seconds", sandbox="prod") is not None


def test_config_errors_never_print_an_environment_variables_value(tmp_path: Path) -> None:
    """A bad value that came from ${VAR} is reported by the variable's name, never by its expanded value."""
    body = sim_config_yaml(
        "http://127.0.0.1:9",
        sandboxes="  - {name: prod, discover: {enabled: true}}",
        rest="poll: {interval: '${POLL_EVERY}'}\nserver: {listen: '${LISTEN_AT}'}",
    )
    path = tmp_path / "config.yaml"
    path.write_text(body)
    proc = check_config(path, POLL_EVERY="hunter2-private", LISTEN_AT="tops3cret:notaport")
    assert proc.returncode == 2
    assert "poll.interval:" in proc.stderr and "server.listen:" in proc.stderr
    assert "hunter2" not in proc.stderr and "tops3cret" not in proc.stderr
    assert "${POLL_EVERY}" in proc.stderr


async def test_a_second_exporter_on_the_same_state_file_refuses_and_changes_nothing(sim: Sim, tmp_path: Path) -> None:
    """While one exporter holds state.path, another refuses to start with a clear message; the first's rows
    are intact, and once the first stops the file can be opened again."""
    state = tmp_path / "state.db"
    first = make_exporter(make_config(sim.url, state_path=str(state)), world=sim.world)
    await first.start()
    assert await first.poll_once()
    rows = sqlite3.connect(state).execute("SELECT count(*) FROM flows").fetchone()[0]
    proc = subprocess.run(
        [*PY, "once", "--config", str(_file_config(tmp_path, sim.url, state))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert f"state file {state} is in use by another aep-flow-exporter (pid {os.getpid()})" in proc.stderr
    assert sqlite3.connect(state).execute("SELECT count(*) FROM flows").fetchone()[0] == rows > 0
    await first.close()
    SqliteStore(state).close()  # released: a restart can open it


def _file_config(tmp_path: Path, sim_url: str, state: Path) -> Path:
    path = tmp_path / "other.yaml"
    path.write_text(
        sim_config_yaml(
            sim_url, sandboxes="  - {name: prod, discover: {enabled: true}}", rest=f"state: {{path: {state}}}"
        )
    )
    return path


def test_a_read_only_state_directory_is_reported_as_a_permission_problem(tmp_path: Path) -> None:
    """An immutable (read-only even for root) state directory gives "cannot write the state file ... needs write
    access", not "not a SQLite database"."""
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["chattr", "+i", str(folder)], check=True, timeout=10)
    try:
        with pytest.raises(StateError, match="needs write access to"):
            SqliteStore(folder / "state.db")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True, timeout=10)


async def test_serving_exporter_reports_sandbox_status_with_a_state_file(sim: Sim, tmp_path: Path) -> None:
    """With the lock in place the ordinary path still works: poll, serve, stop, start again on the same file."""
    state = str(tmp_path / "s.db")
    for _ in range(2):
        exporter = make_exporter(make_config(sim.url, state_path=state), world=sim.world)
        server = await serve(exporter)
        try:
            assert await exporter.poll_once()
            status, _text, _h = await scrape(server)
        finally:
            await server.close()
        assert status == 200
