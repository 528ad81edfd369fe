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
            for secret, faults, revoke in (
                (SECRET, Faults(), False),
                (WRONG, Faults(), False),
                (SECRET, Faults(ims_down=True), True),
                (SECRET, Faults(), True),
                (SECRET, Faults(error_rate=1.0), False),
            ):
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
    path.write_text(
        f"adobe: {{client_id: a, client_secret: {SECRET}, org_id: o, colour: {SECRET}}}\n"
        "sandboxes: [{name: PROD}]\npoll: {interval: never}\n"
    )
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


SPECIAL = "Sp3c!al/Secret+Value with=space&x"


async def ims_answering(description: str) -> tuple[Any, str]:
    """A loopback IMS that refuses every token request with ``description``; its server and token URL."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"error": "invalid_client", "error_description": description}, status=401)

    app = web.Application()
    app.router.add_post("/ims/token/v3", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, str(server.make_url("/ims/token/v3"))


def every_form(secret: str, client_id: str) -> list[str]:
    import base64
    from urllib.parse import quote, quote_plus

    encoded = quote_plus(secret)
    return [
        secret,
        encoded,
        encoded.lower(),
        quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode(),
        base64.b64encode(f"{client_id}:{secret}".encode()).decode(),
    ]


async def test_upstream_text_quoting_the_secret_in_any_encoding_or_cut_shows_none_of_it() -> None:
    """An IMS answer that quotes the form it received (the secret percent-encoded, + for spaces, in either case),
    the secret as a Basic credential or base64, and the secret straddling the point where the text is cut: the
    error shows <redacted>, and no ten characters of the secret in any form."""
    import aiohttp
    from prometheus_client import CollectorRegistry

    from exporter.auth import TokenProvider
    from exporter.errors import AuthError
    from exporter.selfmetrics import SelfMetrics
    from exporter.values import Secret

    forms = every_form(SPECIAL, "client-1")
    description = (
        "x" * 290
        + SPECIAL
        + " received: "
        + " | ".join(
            [f"grant_type=client_credentials&client_id=client-1&client_secret={forms[1]}&scope=openid", *forms[2:]]
        )
    )
    server, url = await ims_answering(description)
    try:
        async with aiohttp.ClientSession() as session:
            provider = TokenProvider(
                session=session,
                url=url,
                client_id="client-1",
                client_secret=Secret(SPECIAL),
                scopes="openid",
                metrics=SelfMetrics(CollectorRegistry()),
                retries=0,
            )
            try:
                await provider.token()
                message = ""
            except AuthError as exc:
                message = str(exc)
    finally:
        await server.close()
    assert "IMS refused the token request: HTTP 401 (invalid_client)" in message
    assert "<redact" in message  # the cut may fall inside the placeholder, never inside the secret
    for form in forms:
        for i in range(len(form) - 9):
            assert form[i : i + 10] not in message, (form, form[i : i + 10])


def test_a_newline_in_upstream_text_cannot_forge_a_line_of_output(tmp_path: Path) -> None:
    """IMS text with a newline and "token OK" in it: check-config --online prints it on one line, escaped; no
    output line says "token OK"."""
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        holder["server"], holder["url"] = await ims_answering("bad client\ntoken OK\r\nconfig OK")
        ready.set()
        await asyncio.sleep(60)

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    path = tmp_path / "c.yaml"
    path.write_text(
        f"adobe: {{client_id: a, client_secret: {SECRET}, org_id: o, ims_token_url: '{holder['url']}'}}\n"
        "sandboxes: [{name: prod, discover: {enabled: true}}]\nstate: {path: null}\n"
        "poll: {retries: 0}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["check-config", "--config", str(path), "--online"]) == 1
    lines = (out.getvalue() + err.getvalue()).splitlines()
    assert "token OK" not in lines and "config OK" not in lines
    assert any("bad client\\ntoken OK\\r\\nconfig OK" in line for line in lines), lines


def test_an_error_through_a_proxy_names_the_proxy_never_its_credentials() -> None:
    """A timeout, a refused connection, a TLS failure or a dropped connection through a proxy names the proxy
    (host and port) and never the user and password in its URL."""

    import aiohttp

    from exporter.transport import describe_failure

    proxy = "http://alice:Pr0xyPassw0rd@proxy.corp.example:3128"
    failures = [TimeoutError(), aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("x")]
    for exc in failures:
        text = describe_failure(exc, "https://platform.adobe.io/data", timeout=5, proxy=proxy)
        assert "through proxy proxy.corp.example:3128" in text, text
        assert "alice" not in text and "Pr0xyPassw0rd" not in text
