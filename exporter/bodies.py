"""Bounded reading and decoding of Adobe's answers.

An answer is read in chunks up to a size cap (``poll.max_response_bytes``, 32 MiB by default, far above a real
page of 100 runs), then decompressed by this module (the session does not decompress: aiohttp would inflate a
whole chunk at once) with the same cap on the inflated size, so a gzip or deflate bomb fails with a clear error
and memory stays bounded. Large bodies are inflated and parsed in a worker thread: the event loop, which
serves scrapes, never blocks on them. JSON nested deeper than Python can parse is a payload error, not a crash.
"""

from __future__ import annotations

import asyncio
import json
import zlib

import aiohttp

from exporter.errors import DuplicateKeyError, PayloadError, TooLargeError

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
CHUNK = 64 * 1024
INLINE_BYTES = 64 * 1024
"""Bodies smaller than this (and not compressed) are parsed on the loop: a thread hop would cost more."""
ACCEPT_ENCODING = "gzip, deflate"
"""What the client advertises: exactly what ``inflate`` can decode."""


async def read_capped(
    resp: aiohttp.ClientResponse, limit: int, what: str, *, cap: str = "poll.max_response_bytes"
) -> bytes:
    """The raw body, or TooLargeError once it passes ``limit`` bytes (checked against Content-Length first);
    ``cap`` names the limit in the message."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise TooLargeError(f"{what}: answer of {declared} bytes is over the {limit}-byte cap ({cap})")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK):
        buf += chunk
        if len(buf) > limit:
            raise TooLargeError(f"{what}: answer is over the {limit}-byte cap ({cap})")
    return bytes(buf)


def inflate(raw: bytes, encoding: str, limit: int, what: str) -> bytes:
    """``raw`` decoded from its Content-Encoding, never inflating past ``limit`` bytes."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        if len(raw) > limit:
            raise TooLargeError(f"{what}: answer is over the {limit}-byte cap")
        return raw
    if enc in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS if raw[:1] == b"\x78" else -zlib.MAX_WBITS  # zlib-wrapped, or raw as some send
    else:
        raise PayloadError(f"{what}: answer has an unsupported Content-Encoding")
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    data = raw
    try:
        while data and not inflater.eof:
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise TooLargeError(f"{what}: answer inflates past the {limit}-byte cap (poll.max_response_bytes)")
            data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise PayloadError(f"{what}: answer is not valid {enc} data") from exc
    return bytes(out)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, val in pairs:
        if key in out:
            raise DuplicateKeyError(f"key {key[:40].encode('ascii', 'backslashreplace').decode()!r} appears twice")
        out[key] = val
    return out


def parse_json(body: bytes, what: str, *, strict: bool = False) -> object:
    """JSON, or PayloadError (malformed, or nested too deeply to parse); with ``strict``, DuplicateKeyError when an
    object names a key twice (a signed body must mean one thing)."""
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates if strict else None)
    except RecursionError:
        raise PayloadError(f"{what}: answer is JSON nested too deeply to read") from None
    except DuplicateKeyError:
        raise
    except (ValueError, UnicodeDecodeError):
        raise PayloadError(f"{what}: answer is not valid JSON ({len(body)} bytes)") from None


def _decode(raw: bytes, encoding: str, limit: int, what: str) -> object:
    return parse_json(inflate(raw, encoding, limit, what), what)


async def decode(raw: bytes, encoding: str, limit: int, what: str) -> object:
    """Inflate and parse a body, never past ``limit`` bytes once inflated: small plain ones here, the rest in a
    worker thread."""
    if len(raw) < min(INLINE_BYTES, limit + 1) and encoding.strip().lower() in ("", "identity"):
        return parse_json(raw, what)
    return await asyncio.to_thread(_decode, raw, encoding, limit, what)


async def decode_text(raw: bytes, encoding: str, limit: int, what: str) -> bytes:
    """The inflated bytes of a body (an error answer's), without parsing them."""
    if encoding.strip().lower() in ("", "identity"):
        return raw
    return await asyncio.to_thread(inflate, raw, encoding, limit, what)
