"""The value syntax of the config: what a duration, a size, a percentage, a URL or ``host:port`` may look like, and
``setting``, which puts a key's default and its rule side by side in a dataclass field. Pure; a leaf.

A rule takes the YAML value (strings already ``${VAR}``-expanded) and returns the typed value, or raises
ValueError/TypeError with a message that never echoes an expanded environment value (configfile.py replaces it).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from typing import Any
from urllib.parse import urlsplit

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def string(value: object) -> str:
    if isinstance(value, (dict, list)):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return str(value)


def optional_string(value: object) -> str | None:
    """A string; empty means none."""
    return string(value) or None


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise TypeError(f"expected true or false, got {value!r}")


def integer(minimum: int) -> Callable[[object], int]:
    """A whole number of at least ``minimum`` (a string of digits too)."""

    def rule(value: object) -> int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        number = int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
        if not isinstance(number, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return rule


def one_of(*choices: str) -> Callable[[object], str]:
    """One of ``choices`` (any case)."""

    def rule(value: object) -> str:
        text = string(value).lower()
        if text not in choices:
            listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
            raise ValueError(f"{text!r} is not {listed}")
        return text

    return rule


def parse_duration(value: object) -> float:
    """``90s``, ``5m``, ``1h``, ``1d``, ``250ms`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise TypeError("expected a duration such as 90s, 5m, 1h or 1d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use 90s, 5m, 1h or 1d)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a non-negative duration")
    return seconds


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def durations(value: object) -> tuple[float, ...]:
    """A non-empty, strictly increasing list of durations (histogram buckets)."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of durations")
    parsed = [parse_duration(b) for b in value]
    if any(b <= a for a, b in itertools.pairwise(parsed)):
        raise ValueError("buckets must be strictly increasing")
    return tuple(parsed)


def words(value: object) -> tuple[str, ...]:
    """A non-empty list of plain words (letters, digits, ``_``, ``-``), as label values to match."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of words")
    out = tuple(string(v) for v in value)
    bad = [w for w in out if not re.fullmatch(r"[A-Za-z0-9_-]+", w)]
    if bad:
        raise ValueError(f"not a plain word (letters, digits, _ and - only): {bad[0][:64]!r}")
    return out


def size(value: object) -> int:
    """A byte size: a whole number, or with a unit (``32MiB``, ``500KiB``, ``1GB``); at least 1 KiB."""
    if isinstance(value, bool):
        raise TypeError("expected a size such as 32MiB")
    if isinstance(value, int):
        number = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 32MiB, got {value!r}")
        number = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if number < 1024:
        raise ValueError("must be at least 1KiB")
    return number


def positive_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return number


def fraction(value: object) -> float:
    """``10%`` or ``0.1``, between 0 and 1."""
    if isinstance(value, bool):
        raise TypeError(f"expected a percentage such as 10%, got {value!r}")
    text = str(value).strip()
    number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be between 0% and 100%, got {value!r}")
    return number


def _percent(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected a percentage such as 99.5%, got {value!r}")
    text = str(value).strip()
    number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    if not math.isfinite(number):
        raise ValueError(f"expected a percentage such as 99.5%, got {value!r}")
    return number


def objective(value: object) -> float:
    """An SLO objective: ``99.5%`` or ``0.995``, above 0% and below 100% (100% leaves no error budget)."""
    number = _percent(value)
    if not 0.0 < number < 1.0:
        raise ValueError(f"must be above 0% and below 100%, got {value!r}")
    return number


def share(value: object) -> float:
    """A share of something, ``25%`` or ``0.25``; 0 or more (300% is three times it)."""
    number = _percent(value)
    if number < 0.0:
        raise ValueError(f"must not be negative, got {value!r}")
    return number


def url(value: object) -> str:
    text = string(value).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text


def optional_url(value: object) -> str | None:
    return url(value) if string(value) else None


def proxy_url(value: object) -> str:
    """An http:// (or https://) proxy URL; user:password in it is allowed and never echoed in an error."""
    text = string(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname or ''}..." if "@" in text else repr(text)
        raise ValueError(f"{shown} is not a proxy URL such as http://proxy.example.com:3128")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ValueError("the proxy URL's port is not a number") from None
    return text


def parse_listen(value: object) -> tuple[str, int]:
    """``host:port``, ``[::1]:port`` or ``:port`` (every interface) -> (host, port)."""
    text = string(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 -- ":9847" means every interface, as in Prometheus
    return host, int(port)


def webhook_path(value: object) -> str:
    text = string(value)
    if not re.match(r"^/[A-Za-z0-9/_.-]*$", text) or text.startswith("/metrics"):
        raise ValueError(f"{text!r} is not a path such as /adobe-events")
    return text


def shard_problem(index: int, total: int) -> str | None:
    """What is wrong with a shard index and count (from the file or the command line), or None."""
    if total < 1:
        return f"shard.total must be at least 1, got {total}"
    if not 0 <= index < total:
        return f"must be below shard.total ({total}) and not negative, got {index}"
    return None


# --- settings: a field with its default and its rule ----------------------------------------------------------

Rule = Callable[[Any], Any]


def setting(default: Any = MISSING, rule: Rule | None = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A configurable field: its YAML key is the field's name, ``rule`` reads the YAML value, ``default`` (or
    ``factory()``) applies when the key is absent or null."""
    metadata = {"rule": rule} if rule is not None else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def rule_of(item: Any) -> Rule | None:
    """The rule of a dataclass field (None: the field is not read by the generic reader)."""
    rule: Rule | None = item.metadata.get("rule")
    return rule


def rule_for(cls: type, name: str) -> Rule:
    """The rule of the field ``name`` of the dataclass ``cls``."""
    rule = rule_of(next(f for f in fields(cls) if f.name == name))
    assert rule is not None  # noqa: S101 -- asked only for fields that have one
    return rule
