"""The Flow Service's list query language, as the simulator understands it. Pure functions.

``property=<dotted.path><op><value>`` (ops ``==`` ``>`` ``<`` ``>=`` ``<=``; ``==a,b,c`` matches any of
several values; ``path[]`` reaches into arrays), ``orderby=[-]path``, ``limit`` (at most 100),
``count=true``, and opaque continuation tokens that do not repeat the filters (clients must resend them).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_LIMIT = 100
_OPS = (">=", "<=", "==", ">", "<")


class QueryError(Exception):
    """A query Adobe would refuse with 400; ``code`` is Adobe's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Filter:
    path: str
    op: str
    values: tuple[str, ...]


def parse_filter(text: str) -> Filter:
    """``flowId==abc`` -> Filter; QueryError for an operator Adobe does not support."""
    for i, ch in enumerate(text):
        if ch in "=<>!~":
            for op in _OPS:
                if text.startswith(op, i):
                    path, value = text[:i], text[i + len(op) :]
                    if not path or value == "":
                        raise QueryError("1440-400", f"invalid property filter {text!r}")
                    if value[:1] in "=<>!~":
                        raise QueryError("1450-400", f"unsupported operator in {text!r}")
                    values = tuple(value.split(",")) if op == "==" else (value,)
                    return Filter(path=path, op=op, values=values)
            raise QueryError("1450-400", f"unsupported operator in {text!r}")
    raise QueryError("1440-400", f"invalid property filter {text!r}")


def values_at(obj: Any, path: str) -> list[Any]:
    """Every value at a dotted path; ``name[]`` fans out over a list. Missing paths give nothing."""
    current = [obj]
    for part in path.split("."):
        fan = part.endswith("[]")
        key = part[:-2] if fan else part
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, dict) and key in item:
                value = item[key]
                if fan and isinstance(value, list):
                    nxt.extend(value)
                elif not fan:
                    nxt.append(value)
        current = nxt
    return current


def _coerce(target: str, actual: Any) -> Any:
    if isinstance(actual, bool):
        return target.lower() == "true" if target.lower() in ("true", "false") else target
    if isinstance(actual, (int, float)):
        try:
            return float(target)
        except ValueError:
            return target
    return target


def _compare(actual: Any, op: str, target: str) -> bool:
    wanted = _coerce(target, actual)
    if isinstance(actual, bool) or op == "==":
        return bool(actual == wanted) if not isinstance(actual, str) else actual == target
    if isinstance(actual, (int, float)) and isinstance(wanted, float):
        a: Any = float(actual)
    elif isinstance(actual, str):
        a, wanted = actual, target
    else:
        return False
    if op == ">":
        return bool(a > wanted)
    if op == "<":
        return bool(a < wanted)
    if op == ">=":
        return bool(a >= wanted)
    return bool(a <= wanted)


def matches(obj: dict[str, Any], filters: Iterable[Filter]) -> bool:
    """Whether an entity passes every filter (filters AND together)."""
    for flt in filters:
        found = values_at(obj, flt.path)
        if not any(_compare(v, flt.op, t) for v in found for t in flt.values):
            return False
    return True


def sort_items(items: list[dict[str, Any]], orderby: str | None) -> list[dict[str, Any]]:
    """Newest first by default; ``orderby=createdAt`` ascending, ``-createdAt`` descending."""
    spec = orderby or "-createdAt"
    descending = spec.startswith("-")
    path = spec.lstrip("-+")

    def key(item: dict[str, Any]) -> tuple[int, Any]:
        found = values_at(item, path)
        value = found[0] if found else None
        return (0, "") if value is None else (1, value if isinstance(value, (int, float)) else str(value))

    return sorted(items, key=key, reverse=descending)


def query_digest(filters: Iterable[Filter], orderby: str | None) -> str:
    """What a continuation token is bound to: the filters and order it was issued for."""
    text = json.dumps([sorted((f.path, f.op, f.values) for f in filters), orderby or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_token(offset: int, digest: str) -> str:
    """An opaque token; it carries ``=`` padding on purpose (clients must treat it as a query value)."""
    raw = f"{offset}:{digest}".encode()
    while len(raw) % 3 != 1:
        raw += b" "
    return base64.urlsafe_b64encode(raw).decode()


def read_token(token: str, digest: str) -> int:
    """The offset a token stands for; QueryError when it is bad or issued for another query."""
    try:
        offset_text, token_digest = base64.urlsafe_b64decode(token.encode()).decode().strip().split(":")
        offset = int(offset_text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError("1401-400", "invalid continuationToken") from exc
    if token_digest != digest:
        raise QueryError("1401-400", "continuationToken does not belong to this query: resend the same filters")
    return offset
