"""``server.web_config_file``: TLS and basic auth in the format of Prometheus's exporter-toolkit.

```yaml
tls_server_config:
  cert_file: server.crt          # paths relative to the web config file
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), RequestClientCert,
                                                 # RequireAnyClientCert, VerifyClientCertIfGiven
  client_ca_file: ca.crt         # required when client certificates are verified
  min_version: TLS12             # TLS10, TLS11, TLS12 (default), TLS13
basic_auth_users:
  prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')
```

Basic auth applies to every endpoint but ``/healthz`` (liveness probes carry no credentials). Passwords are
checked with bcrypt off the event loop; a successful check is remembered (by a SHA-256 of the password) so a
scrape every 15 s does not cost a bcrypt round each time. Unknown users are checked against a dummy hash, so
timing does not tell which user names exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web

from exporter.errors import ConfigError

_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
             "TLS13": ssl.TLSVersion.TLSv1_3}
_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))
UNPROTECTED = frozenset({"/healthz"})


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    """What the web server needs: a TLS context (or None for plain HTTP) and the basic-auth users."""

    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)


def load_web_config(path: Path, where: str = "server.web_config_file") -> WebConfig:
    """Read and check a web config file; ConfigError lists every problem with its path."""
    problems: list[str] = []
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{where}: {path} is not valid YAML"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{where}: {path} must be a mapping"])
    for key in raw:
        if key not in ("tls_server_config", "basic_auth_users", "http_server_config"):
            problems.append(f"{where}.{key}: unknown key")
    users = _users(raw.get("basic_auth_users"), f"{where}.basic_auth_users", problems)
    context = _tls(raw.get("tls_server_config"), path.parent, f"{where}.tls_server_config", problems)
    if problems:
        raise ConfigError(problems)
    return WebConfig(ssl_context=context, users=users)


def _users(raw: object, where: str, problems: list[str]) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of user names to bcrypt hashes")
        return {}
    users: dict[str, bytes] = {}
    for name, hashed in raw.items():
        text = str(hashed) if hashed is not None else ""
        if not text.startswith(("$2a$", "$2b$", "$2y$")) or len(text) != 60:
            problems.append(f"{where}.{name}: not a bcrypt hash (generate one with htpasswd -nBC 10)")
            continue
        users[str(name)] = text.encode()
    return users


def _tls(raw: object, base: Path, where: str, problems: list[str]) -> ssl.SSLContext | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    known = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "cipher_suites", "curve_preferences", "prefer_server_cipher_suites"}
    for key in raw:
        if key not in known:
            problems.append(f"{where}.{key}: unknown key")
    files: dict[str, Path] = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        value = raw.get(key)
        if value:
            file = base / str(value)
            if not file.is_file():
                problems.append(f"{where}.{key}: {file} does not exist")
            files[key] = file
    for key in ("cert_file", "key_file"):
        if key not in files:
            problems.append(f"{where}.{key}: required for TLS")
    auth = str(raw.get("client_auth_type", "NoClientCert"))
    if auth not in _CLIENT_AUTH:
        problems.append(f"{where}.client_auth_type: {auth!r} is not one of {', '.join(_CLIENT_AUTH)}")
    if auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and "client_ca_file" not in files:
        problems.append(f"{where}.client_ca_file: required with client_auth_type {auth}")
    version = str(raw.get("min_version", "TLS12"))
    if version not in _VERSIONS:
        problems.append(f"{where}.min_version: {version!r} is not one of {', '.join(_VERSIONS)}")
    if problems:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[version]
    try:
        context.load_cert_chain(files["cert_file"], files["key_file"])
        if "client_ca_file" in files:
            context.load_verify_locations(cafile=str(files["client_ca_file"]))
    except (ssl.SSLError, OSError) as exc:
        problems.append(f"{where}: cannot load the certificate, key or CA: {exc}")
        return None
    context.verify_mode = _CLIENT_AUTH[auth]
    if auth in ("RequestClientCert", "RequireAnyClientCert") and "client_ca_file" not in files:
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return context


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth_middleware(users: Mapping[str, bytes], *, cache_size: int = 1024) -> Any:
    """An aiohttp middleware that asks for HTTP basic auth on every path but /healthz."""
    verified: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    def check(user: str, password: bytes) -> bool:
        hashed = users.get(user)
        ok = bcrypt.checkpw(password, hashed if hashed is not None else _DUMMY_HASH)
        return ok and hashed is not None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNPROTECTED:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if sep:
                key = (user, hashlib.sha256(password.encode()).digest())
                if key in verified:
                    verified.move_to_end(key)
                    return await handler(request)
                loop = asyncio.get_running_loop()
                if await loop.run_in_executor(None, check, user, password.encode()):
                    verified[key] = None
                    if len(verified) > cache_size:
                        verified.popitem(last=False)
                    return await handler(request)
        return web.Response(status=401, text="Unauthorized\n",
                            headers={"WWW-Authenticate": 'Basic realm="aep-flow-exporter", charset="UTF-8"'})

    return middleware

