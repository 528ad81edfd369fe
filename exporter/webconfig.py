"""``server.web_config_file``: TLS, basic auth and response headers in the format of Prometheus's exporter-toolkit.

```yaml
tls_server_config:
  cert_file: server.crt          # paths relative to the web config file
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), VerifyClientCertIfGiven
  client_ca_file: ca.crt         # required when client certificates are verified
  min_version: TLS12             # TLS10, TLS11, TLS12 (default), TLS13
  max_version: TLS13
  prefer_server_cipher_suites: true
http_server_config:
  headers: {Strict-Transport-Security: max-age=31536000}
basic_auth_users:
  prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')
```

Every exporter-toolkit key is implemented or refused at start (exit 2, naming it): none is silently ignored.
Refused, with the reason in the message: ``cipher_suites`` and ``curve_preferences`` (Go names with no faithful
OpenSSL mapping here), ``client_allowed_sans``, inline ``cert``/``key``/``client_ca``, ``http2: true`` (aiohttp
serves HTTP/1.1), and ``client_auth_type`` ``RequestClientCert``/``RequireAnyClientCert`` (in Go they accept any
client certificate without verifying it; Python's ssl module can only verify against a CA, so rather than
silently verify, they are refused: use ``RequireAndVerifyClientCert`` with ``client_ca_file``).

This module only parses the file into a value (it imports neither aiohttp nor bcrypt, so the config can be
checked without them); web.py keeps it live (re-read on change) and enforces it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter.errors import ConfigError
from exporter.yamlfile import read_yaml

_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
_REFUSED_TLS_KEYS = {
    "cipher_suites": "Go cipher suite names have no faithful OpenSSL equivalent here; remove it (OpenSSL's "
    "defaults for the TLS versions allowed apply)",
    "curve_preferences": "Go curve names are not applied by Python's ssl module; remove it",
    "client_allowed_sans": "not supported; verify clients with client_ca_file instead",
    "cert": "inline certificates are not supported; use cert_file",
    "key": "inline keys are not supported; use key_file",
    "client_ca": "an inline CA is not supported; use client_ca_file",
}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")

_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    """What the web server needs: a TLS context (or None for plain HTTP), the basic-auth users, extra response
    headers, and the certificate files (to load them again when they change)."""

    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cert_files: tuple[Path, Path] | None = None


def load_web_config(path: Path, where: str = "server.web_config_file") -> WebConfig:
    """Read and check a web config file; ConfigError lists every problem with its path."""
    problems: list[str] = []
    try:
        raw = read_yaml(path) or {}
    except ConfigError as exc:
        raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{where}: {path} must be a mapping"])
    for key in raw:
        if key not in ("tls_server_config", "basic_auth_users", "http_server_config"):
            problems.append(f"{where}.{key}: unknown key")
    users = _users(raw.get("basic_auth_users"), f"{where}.basic_auth_users", problems)
    headers = _http(raw.get("http_server_config"), f"{where}.http_server_config", problems)
    context, cert_files = _tls(raw.get("tls_server_config"), path.parent, f"{where}.tls_server_config", problems)
    if problems:
        raise ConfigError(problems)
    return WebConfig(ssl_context=context, users=users, headers=headers, cert_files=cert_files)


def _http(raw: object, where: str, problems: list[str]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping")
        return {}
    headers: dict[str, str] = {}
    for key, value in raw.items():
        if key == "http2":
            if value is not False:
                problems.append(f"{where}.http2: HTTP/2 is not served (aiohttp speaks HTTP/1.1); set false or remove")
        elif key == "headers":
            if not isinstance(value, dict):
                problems.append(f"{where}.headers: expected a mapping of header names to values")
                continue
            for name, text in value.items():
                if not _HEADER_NAME.match(str(name)) or not isinstance(text, str) or "\n" in text or "\r" in text:
                    problems.append(f"{where}.headers.{name}: not a valid header name and one-line value")
                else:
                    headers[str(name)] = text
        else:
            problems.append(f"{where}.{key}: unknown key")
    return headers


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


def _tls(
    raw: object, base: Path, where: str, problems: list[str]
) -> tuple[ssl.SSLContext | None, tuple[Path, Path] | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping")
        return None, None
    before = len(problems)
    _tls_keys(raw, where, problems)
    files = _tls_files(raw, base, where, problems)
    auth = _client_auth(raw, files, where, problems)
    versions = _tls_versions(raw, where, problems)
    prefer = raw.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        problems.append(f"{where}.prefer_server_cipher_suites: expected true or false")
    if len(problems) > before:
        return None, None
    try:
        context = _context(files, auth, versions, prefer=bool(prefer))
    except (ssl.SSLError, OSError) as exc:
        problems.append(f"{where}: cannot load the certificate, key or CA: {exc}")
        return None, None
    return context, (files["cert_file"], files["key_file"])


def _tls_keys(raw: dict[str, object], where: str, problems: list[str]) -> None:
    known = {
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "prefer_server_cipher_suites",
    }
    for key in raw:
        if key in _REFUSED_TLS_KEYS:
            problems.append(f"{where}.{key}: {_REFUSED_TLS_KEYS[key]}")
        elif key not in known:
            problems.append(f"{where}.{key}: unknown key")


def _tls_files(raw: dict[str, object], base: Path, where: str, problems: list[str]) -> dict[str, Path]:
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
    return files


def _client_auth(raw: dict[str, object], files: dict[str, Path], where: str, problems: list[str]) -> str:
    auth = str(raw.get("client_auth_type", "NoClientCert"))
    if auth in _UNVERIFIED_CLIENT_AUTH:
        problems.append(
            f"{where}.client_auth_type: {auth} means 'accept any client certificate without verifying "
            "it' (as in Go), which Python's ssl cannot do; use RequireAndVerifyClientCert with "
            "client_ca_file"
        )
    elif auth not in _CLIENT_AUTH:
        problems.append(f"{where}.client_auth_type: {auth!r} is not one of {', '.join(_CLIENT_AUTH)}")
    if auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and "client_ca_file" not in files:
        problems.append(f"{where}.client_ca_file: required with client_auth_type {auth}")
    return auth


def _tls_versions(raw: dict[str, object], where: str, problems: list[str]) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    found = []
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = str(raw.get(key, default))
        if version not in _VERSIONS:
            problems.append(f"{where}.{key}: {version!r} is not one of {', '.join(_VERSIONS)}")
        found.append(_VERSIONS.get(version, ssl.TLSVersion.TLSv1_2))
    if found[0] > found[1]:
        problems.append(f"{where}.max_version: below min_version")
    return found[0], found[1]


def _context(
    files: dict[str, Path], auth: str, versions: tuple[ssl.TLSVersion, ssl.TLSVersion], *, prefer: bool
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version, context.maximum_version = versions
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(files["cert_file"], files["key_file"])
    if "client_ca_file" in files:
        context.load_verify_locations(cafile=str(files["client_ca_file"]))
    context.verify_mode = _CLIENT_AUTH[auth]
    return context
