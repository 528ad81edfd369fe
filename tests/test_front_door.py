"""The front door: README's two commands, exactly as README writes them, on a clean copy of the repository (no
.venv, no state), with and without arguments; and every shell script passes shellcheck."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [ROOT / ".ci" / "run", *sorted((ROOT / "scripts").iterdir())]


def readme_commands() -> list[str]:
    """The commands of README's first code block, one per line, without their comments."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```\w*\n(.*?)^```", text, re.S | re.M)
    assert block is not None, "README has no code block"
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [line.removeprefix("$ ") for line in lines if line]


def readme_metrics_url() -> str:
    """The first /metrics address README shows (where the first command serves)."""
    match = re.search(r"http://127\.0\.0\.1:\d+/metrics", (ROOT / "README.md").read_text())
    assert match is not None
    return match.group(0)


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as a fresh clone has it: its files (committed, or changed and not ignored), nothing built."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    copy = tmp_path_factory.mktemp("clone")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def started(clean_copy: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts in the clean copy; each is stopped (its whole process group) afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def serve_demo(command: str, cwd: Path, url: str, procs: list[subprocess.Popen[bytes]], log: Path) -> str:
    """Run ``command`` as a user types it (bash, in ``cwd``) and wait, bounded, until ``url`` serves flow series;
    the body."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "AEP_FLOW_EXPORTER_CONFIG")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    procs.append(proc)
    deadline = time.monotonic() + 240  # a fresh .venv: pip installs the runtime dependencies first
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{command!r} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 -- loopback
                body = resp.read().decode()
            if "\naep_flow_info{" in body:
                return body
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"{command!r} did not serve {url} within 240 s: {log.read_text()[-2000:]}")


def test_readmes_first_command_serves_the_demo_with_no_argument(
    clean_copy: Path, started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """README's first command, as written and with no argument, installs what it needs on a clean copy and serves
    the demo's flows at the address README shows."""
    first = readme_commands()[0]
    assert first == "scripts/demo"
    url = readme_metrics_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    if not (port_free(port) and port_free(port + 1)):
        pytest.fail(f"ports {port} and {port + 1} (README's demo) are in use on this machine: free them")
    body = serve_demo(first, clean_copy, url, started, tmp_path / "demo.log")
    assert 'sandbox="prod"' in body and 'sandbox="dev"' in body
    assert (clean_copy / ".venv" / "bin" / "aep-flow-exporter").exists()


def test_readmes_first_command_takes_the_demos_options(
    clean_copy: Path, started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """README's first command given options (other ports, one sandbox) passes them to the demo."""
    exporter_port, sim_port = free_port(), free_port()
    command = f"{readme_commands()[0]} --listen 127.0.0.1:{exporter_port} --port {sim_port} --sandboxes qa"
    body = serve_demo(command, clean_copy, f"http://127.0.0.1:{exporter_port}/metrics", started, tmp_path / "demo.log")
    assert 'sandbox="qa"' in body and 'sandbox="prod"' not in body
    with urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/", timeout=5) as resp:
        assert b"simulator" in resp.read()


def test_ci_runs_exactly_readmes_test_command() -> None:
    """README's second command is the test command, and .ci/run executes exactly it."""
    second = readme_commands()[1]
    assert second == "scripts/test"
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == f"exec bash {second}"


def test_every_shell_script_passes_shellcheck() -> None:
    """shellcheck (Debian's package, which the test command installs) finds nothing in the project's scripts."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not found: run the suite with `scripts/test`, which installs Debian's shellcheck")
    proc = subprocess.run([shellcheck, "--shell=bash", *map(str, SCRIPTS)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_readmes_build_command_as_written_makes_a_wheel_and_an_sdist(clean_copy: Path) -> None:
    """README's build block, run as written in a clean copy (it installs build into its own venv), leaves a
    wheel and an sdist in dist/."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```sh build\n(.*?)^```", text, re.S | re.M)
    assert block is not None, "README has no build block"
    (command,) = [line for line in block.group(1).splitlines() if line.strip()]
    proc = subprocess.run(
        ["bash", "-c", command], cwd=clean_copy, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(list((clean_copy / "dist").glob("aep_flow_exporter-*.whl"))) == 1
    assert len(list((clean_copy / "dist").glob("aep_flow_exporter-*.tar.gz"))) == 1
