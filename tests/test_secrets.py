"""Secrets: the client secret and the tokens never appear in logs, metrics, errors or the landing page."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from exporter.cli import main
from exporter.simulator import Credentials, Faults
from tests.helpers import scrape, serve
from tests.simulation import make_config, make_exporter, make_world, start_sim

SECRET = "S3cr3t-Value-7f1d0c9e"
WRONG = "Wr0ng-Secret-44aa"


async def test_no_failure_path_leaks_the_secret_or_a_token(tmp_path: Path) -> None:
    """Bad secret, IMS down, revoked tokens, 401s and API errors: no log line, metric, error or page shows them."""
    world = make_world(sandboxes=("prod",))
    handle, sim_server = await start_sim(world, credentials=Credentials(client_secret=SECRET))
    seen: list[str] = []
    tokens: set[str] = set()
    try:
        with capture_logs() as logs:
            for secret, faults, revoke in ((SECRET, Faults(), False), (WRONG, Faults(), False),
                                           (SECRET, Faults(ims_down=True), True), (SECRET, Faults(), True),
                                           (SECRET, Faults(error_rate=1.0), False)):
                handle.simulator.faults = faults
                if revoke:
                    handle.simulator.revoke_tokens()
                exporter = make_exporter(make_config(handle.url, sandboxes=("prod",), secret=secret, retries=1))
                server = await serve(exporter)
                try:
                    handle.simulator.fail_next("flows", 401, times=2)
                    try:
                        await exporter.poll_once()
                        await exporter.poll_once()
                    except Exception as exc:  # noqa: BLE001 -- any escaping error is inspected, not hidden
                        seen.append(repr(exc) + str(exc))
                    tokens |= set(handle.simulator.tokens)
                    for path in ("/metrics", "/", "/readyz"):
                        seen.append((await scrape(server, path))[1])
                finally:
                    await server.close()
                    await exporter.close()
        seen.append(repr(logs))
    finally:
        await sim_server.close()
    assert tokens, "the scenario must have issued tokens for the check to mean anything"
    everything = "\n".join(seen)
    assert "poll_failed" in everything and "token_request_failed" in everything
    for needle in (SECRET, WRONG, *tokens):
        assert needle not in everything


def test_config_errors_do_not_echo_the_secret(tmp_path: Path) -> None:
    """check-config on a broken file that holds the secret lists the problems without the secret."""
    path = tmp_path / "c.yaml"
    path.write_text(f"adobe: {{client_id: a, client_secret: {SECRET}, org_id: o, colour: {SECRET}}}\n"
                    "sandboxes: [{name: PROD}]\npoll: {interval: never}\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["check-config", "--config", str(path)]) == 2
    text = out.getvalue() + err.getvalue()
    assert "adobe.colour: unknown key" in text and "poll.interval" in text
    assert SECRET not in text


def test_secret_object_never_prints_itself() -> None:
    """The config's Secret has no repr, str or format that shows the value."""
    from exporter.values import Secret

    secret = Secret(SECRET)
    rendered: list[Any] = [repr(secret), str(secret), f"{secret}", f"{secret!r}", [secret], {"s": secret}]
    assert all(SECRET not in str(r) for r in rendered)
