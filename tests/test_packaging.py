"""Install without a checkout: the wheel and sdist build cleanly and pass `twine check`, the installed wheel
runs the demo, and the image's `healthcheck` command follows the configured port and TLS."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from tests.helpers import free_port, parse_samples, pick, wait_http

ROOT = Path(__file__).parent.parent
PY = [sys.executable, "-m", "exporter"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist, built as a release would be (without fetching anything: the test venv has the
    backend)."""
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "warning" in line.lower()]
    assert warnings == []
    return out


def test_wheel_and_sdist_build_without_warnings_and_pass_twine_check(dist: Path) -> None:
    """Both artifacts exist, `twine check` passes them, the wheel holds the package (simulator included), its
    type marker and the license, and no tests; the sdist holds the docs, example config and deploy recipes."""
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.count("PASSED") == 2, proc.stdout + proc.stderr
    names = zipfile.ZipFile(wheel).namelist()
    assert {"exporter/cli.py", "exporter/simulator/world.py", "exporter/py.typed"} <= set(names)
    assert any(n.endswith("licenses/LICENSE") for n in names) and not any(n.startswith("tests/") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Dist: aiohttp" in metadata
    listing = subprocess.run(["tar", "tzf", str(sdist)], capture_output=True, text=True, check=True).stdout
    for member in ("LICENSE", "CHANGELOG.md", "config.example.yaml", "docs/adobe-setup.md", "deploy/docker/Dockerfile"):
        assert f"/{member}" in listing, member


def test_the_installed_wheel_runs_the_demo(dist: Path, tmp_path: Path) -> None:
    """In a fresh virtualenv holding only the wheel (its dependencies taken from this environment), the console
    script is the wheel's, and `aep-flow-exporter demo` serves the simulator's flows."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (wheel,) = dist.glob("*.whl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "deps-from-the-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import exporter; print(exporter.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv))
    sim_port, port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "aep-flow-exporter"),
            "demo",
            "--port",
            str(sim_port),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "1s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        samples = parse_samples(wait_http(f"http://127.0.0.1:{port}/metrics"))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(pick(samples, "aep_flow_info")) == 16
    assert proc.returncode == 0


@pytest.mark.parametrize("tls", [False, True])
async def test_healthcheck_follows_the_configured_port_and_tls(tls: bool, tmp_path: Path) -> None:
    """`healthcheck` asks /healthz on the config's server.listen port, over TLS when the web config sets it: 0
    while it answers, 1 once nothing listens there."""
    port = free_port()
    web_config = ""
    context = None
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n")
        web_config = "  web_config_file: web.yml\n"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
    config = tmp_path / "c.yaml"
    config.write_text(
        "adobe: {client_id: x, client_secret: y, org_id: z}\nsandboxes: [{name: prod, discover: "
        f"{{enabled: true}}}}]\nserver:\n  listen: 127.0.0.1:{port}\n{web_config}"
    )
    app = web.Application()

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    check = [*PY, "healthcheck", "--config", str(config)]
    try:
        up = await asyncio.to_thread(subprocess.run, check, capture_output=True, text=True, timeout=60, check=False)
    finally:
        await runner.cleanup()
    down = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert up.returncode == 0, up.stderr
    assert down.returncode == 1 and f"127.0.0.1:{port}/healthz" in down.stderr
    assert ("https://" in down.stderr) is tls
