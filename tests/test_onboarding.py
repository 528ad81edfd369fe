"""From a new Adobe credential to a running install, as a user meets it: `check-config --online`, errors that say
how to fix them (with their exit statuses), the flags and defaults Prometheus users expect. Real subprocesses
against the simulator on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from exporter.simulator import Credentials
from tests.helpers import free_port, parse_samples, pick, sim_config_yaml, wait_http

PY = [sys.executable, "-m", "exporter"]
ENV = {**os.environ, "SIM_SECRET": Credentials().client_secret}
UNKNOWN_FLOW = "0a1b2c3d-0000-4000-8000-00000000dead"


def config_file(path: Path, sim_url: str, *, sandboxes: str | None = None, rest: str = "") -> Path:
    sandboxes = sandboxes or "  - name: prod\n    discover: {enabled: true}"
    rest = rest or "poll: {interval: 2s, jitter: 0%, retries: 0}\nstate: {path: null}\nlog: {level: info}"
    path.write_text(sim_config_yaml(sim_url, sandboxes=sandboxes, rest=rest, secret="${SIM_SECRET}"))
    return path


def run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PY, *args], capture_output=True, text=True, timeout=120, env=env or ENV, cwd=cwd, check=False
    )


def test_check_config_online_lists_what_the_credential_can_see(simulator_process: str, tmp_path: Path) -> None:
    """--online gets a token and prints, per sandbox, its flows by kind and what discovery tracks; a configured id
    the API does not know, and a sandbox that does not exist (Adobe's 2100-404, with what to check), make it
    exit 1."""
    sandboxes = (
        f"  - name: prod\n    discover: {{enabled: true}}\n    flows: [{UNKNOWN_FLOW}]\n"
        "  - name: dev\n    discover: {enabled: true}\n"
        "  - name: marketing\n    discover: {enabled: true}"
    )
    proc = run(
        [
            "check-config",
            "--config",
            str(config_file(tmp_path / "c.yaml", simulator_process, sandboxes=sandboxes)),
            "--online",
        ]
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["config OK: 3 sandboxes, 1 configured flow", "token OK", ""]
    table = lines[3 : lines.index("", 3)]
    assert table[0].split() == ["sandbox", "flows", "source", "destination", "tracked", "status"]
    rows = {line.split()[0]: line.split(maxsplit=5) for line in table[1:]}
    assert rows["dev"][1:] == ["4", "4", "0", "4", "ok"]  # 4 flows, all source; discovery takes all 4
    assert rows["prod"][5] == "1 configured flow not found"
    assert rows["marketing"][1:] == ["-", "-", "-", "-", "sandbox not found"]
    assert max(len(line) for line in table) <= 80  # a narrow table; the whole reasons are listed under it
    problems = lines[lines.index("problems:") + 1 :]
    assert problems == [
        f"  prod: configured flow {UNKNOWN_FLOW} not found in the sandbox: a wrong or deleted id, or a flow hidden "
        "by an access label the credential's role lacks (Adobe answers alike for all three: a labelled flow is not "
        "listed, and GET /flows/{id} answers 404 FLOW-1439-404)",
        "  marketing: flows: HTTP 404 (FLOW-2100-404): The sandbox with the name 'marketing' could not be found. "
        "Sandbox 'marketing' does not exist in "
        "this organization: check sandboxes[].name (lowercase, as Experience Platform's Sandboxes page shows it) "
        "and that adobe.org_id is the organization it is in",
    ]
    assert "Error" not in proc.stdout  # no Python class names
    assert "View Sources" not in proc.stdout  # a missing sandbox is not a permissions problem
    assert Credentials().client_secret not in proc.stdout + proc.stderr


def test_check_config_online_shows_adobes_reason_and_a_hint_for_a_wrong_secret(
    simulator_process: str, tmp_path: Path
) -> None:
    """A wrong client secret: exit 1, IMS's error and error_description, what to check; never the secret."""
    env = {**ENV, "SIM_SECRET": "a-wrong-secret-123"}
    proc = run(
        ["check-config", "--config", str(config_file(tmp_path / "c.yaml", simulator_process)), "--online"], env=env
    )
    assert proc.returncode == 1
    assert (
        "cannot get a token: IMS refused the token request: HTTP 401 (invalid_client): invalid client_secret"
        in proc.stderr
    )
    assert "Developer Console" in proc.stderr
    assert "a-wrong-secret-123" not in proc.stdout + proc.stderr


def test_check_config_rejects_a_flow_id_that_is_not_a_uuid(tmp_path: Path) -> None:
    """A flow id typo (not a UUID) is a config error with its path and what a flow id looks like: exit 2."""
    sandboxes = "  - name: prod\n    flows: [c9cef9cb-c934-4467-8ef9-cbc93454674]"
    proc = run(
        ["check-config", "--config", str(config_file(tmp_path / "c.yaml", "http://127.0.0.1:9", sandboxes=sandboxes))]
    )
    assert proc.returncode == 2
    assert "sandboxes[0].flows[0]: 'c9cef9cb-c934-4467-8ef9-cbc93454674' is not a flow id" in proc.stderr


def test_once_exits_1_when_no_flow_can_be_read(simulator_process: str, tmp_path: Path) -> None:
    """Every configured flow unknown to the API: `once` still prints the exposition, says none could be read and
    exits 1."""
    sandboxes = f"  - name: prod\n    flows: [{UNKNOWN_FLOW}, 0a1b2c3d-0000-4000-8000-00000000beef]"
    proc = run(["once", "--config", str(config_file(tmp_path / "c.yaml", simulator_process, sandboxes=sandboxes))])
    assert proc.returncode == 1
    assert "none of the 2 flows could be read" in proc.stderr
    assert "aep_exporter_flow_up" in proc.stdout


def test_a_busy_port_exits_1_with_one_line_before_any_poll(simulator_process: str, tmp_path: Path) -> None:
    """The port is bound before the first poll: when it is taken, `run` exits 1 with one line naming it, and
    nothing was asked of Adobe (no token requested)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rest = f'server: {{listen: "127.0.0.1:{port}"}}\nstate: {{path: null}}'
        proc = run(["run", "--config", str(config_file(tmp_path / "c.yaml", simulator_process, rest=rest))])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"aep-flow-exporter: cannot listen on 127.0.0.1:{port}: Address already in use (another process has the "
        "port? change server.listen or --web.listen-address)"
    ]


def test_prometheus_style_flags_and_the_config_from_the_environment(simulator_process: str, tmp_path: Path) -> None:
    """No --config: AEP_FLOW_EXPORTER_CONFIG names the file; --web.listen-address, --log.level and --log.format
    override the file; process_* and python_* metrics are served; a relative state.path is under the config's
    folder, not the working directory."""
    port = free_port()
    folder = tmp_path / "etc"
    folder.mkdir()
    rest = 'server: {listen: "127.0.0.1:1"}\nstate: {path: state/exporter.db}\nlog: {level: debug, format: json}'
    config = config_file(folder / "c.yaml", simulator_process, rest=rest)
    env = {**ENV, "AEP_FLOW_EXPORTER_CONFIG": str(config)}
    proc = subprocess.Popen(
        [*PY, "run", "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warning", "--log.format", "console"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        cwd=tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        names = {name for name, _labels in parse_samples(wait_http(f"http://127.0.0.1:{port}/metrics"))}
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert {
        "process_start_time_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_info",
        "python_gc_objects_collected_total",
    } <= names
    assert "token_renewed" not in err and '"event"' not in err  # warning level, console format
    assert (folder / "state" / "exporter.db").exists() and not (tmp_path / "state").exists()


def test_without_any_config_the_error_says_where_one_is_looked_for(tmp_path: Path) -> None:
    """No --config, no environment variable, no ./config.yaml: exit 2 naming all three places and the demo."""
    env = {k: v for k, v in ENV.items() if k != "AEP_FLOW_EXPORTER_CONFIG"}
    started = time.monotonic()
    proc = run(["check-config"], env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no config file: give --config PATH, set AEP_FLOW_EXPORTER_CONFIG, or create ./config.yaml" in proc.stderr
    assert "aep-flow-exporter demo" in proc.stderr
    assert time.monotonic() - started < 60


def test_a_forbidden_sandbox_says_which_permission_to_ask_for(simulator_process: str, tmp_path: Path) -> None:
    """`once` against a sandbox the credential may not use (Adobe's 2120-403): exit 1, and the log names the
    sandbox, the permissions its role needs and who can give them."""
    body = json.dumps({"forbidden_sandboxes": ["dev"]}).encode()
    request = urllib.request.Request(  # noqa: S310 -- loopback
        f"{simulator_process}/_sim/faults",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5):  # noqa: S310 -- the simulator on loopback
        pass
    sandboxes = "  - name: dev\n    discover: {enabled: true}"
    proc = run(["once", "--config", str(config_file(tmp_path / "c.yaml", simulator_process, sandboxes=sandboxes))])
    assert proc.returncode == 1
    assert "could not poll sandbox dev" in proc.stderr
    assert "sandbox 'dev'" in proc.stderr and "View Sources and View Destinations" in proc.stderr
    assert "Default production all access, covers the Production sandbox only" in proc.stderr
    assert "only a system administrator can add an API credential to a role" in proc.stderr
    assert "system administrator" in proc.stderr
    assert not pick(parse_samples(proc.stdout), "aep_flow_info")
