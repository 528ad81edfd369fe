"""The HTTP session to Adobe, and what to say when a request fails below HTTP.

One ``aiohttp.ClientSession`` serves IMS and the Flow Service. It honours ``HTTPS_PROXY``, ``HTTP_PROXY`` and
``NO_PROXY`` (``trust_env``), or ``adobe.proxy`` when set, and trusts the system CAs plus ``adobe.ca_file``
(a TLS-intercepting proxy's CA). It never decompresses (bodies.py does, with a cap).

:func:`describe_failure` turns a transport exception into one line that names the host and the reason, and
says what to check; it never quotes a request (its headers carry the token) or a proxy's credentials.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp


def host_port(url: str) -> str:
    """host:port of a URL (a proxy's, an Adobe host's), for logs and errors (never a user or password in it)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def client_session(
    *, headers: dict[str, str], proxy: str | None, ca_file: Path | None, limit: int = 100
) -> aiohttp.ClientSession:
    """A session to Adobe (see the module docstring), of at most ``limit`` connections."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=limit),
        auto_decompress=False,
        headers=headers,
        trust_env=True,
        proxy=proxy,
    )


def proxy_for(url: str, proxy: str | None) -> str | None:
    """The proxy a request to ``url`` goes through: ``adobe.proxy``, else the environment's (NO_PROXY applied)."""
    if proxy:
        return proxy
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def describe_failure(exc: BaseException, url: str, *, timeout: float | None = None, proxy: str | None = None) -> str:
    """Why a request to ``url`` failed, naming the host (and the proxy, when one was in the way)."""
    return _why(exc, host_port(url), proxy_for(url, proxy), timeout)


def _why(exc: BaseException, host: str, proxy: str | None, timeout: float | None) -> str:
    via = f" through proxy {host_port(proxy)}" if proxy else ""  # host_port never shows a proxy's credentials
    if isinstance(exc, asyncio.TimeoutError):
        within = f" within {timeout:g} s" if timeout else ""
        return f"{host} did not answer{within}{via} (poll.timeout; check the network path to it)"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        where = host_port(proxy) if proxy else "the proxy"
        hint = " (the proxy wants credentials: put them in the proxy URL)" if exc.status == 407 else ""
        return f"{where} refused to connect to {host}: HTTP {exc.status}{hint}"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        where = host_port(proxy) if proxy else "the proxy"
        return f"cannot connect to proxy {where}: {_os_reason(exc)} (check HTTPS_PROXY or adobe.proxy)"
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return (
            f"TLS to {host}{via} failed: {_ssl_reason(exc)} (behind a proxy that intercepts TLS? trust its CA "
            "with adobe.ca_file)"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return f"cannot resolve {exc.host}: {exc.os_error.strerror} (DNS; behind a proxy? set HTTPS_PROXY)"
        return f"cannot connect to {host}{via}: {_os_reason(exc)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{host} closed the connection before answering{via}"
    return f"request to {host}{via} failed: {type(exc).__name__}"


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)  # "Connection refused", not asyncio's "Connect call failed (...)"
    return (error.strerror if isinstance(error, OSError) else None) or type(error).__name__


def _ssl_reason(exc: aiohttp.ClientError) -> str:
    certificate_error = getattr(exc, "certificate_error", None)
    if isinstance(certificate_error, ssl.SSLCertVerificationError):
        return str(certificate_error.verify_message or "certificate not trusted")
    return type(exc).__name__
