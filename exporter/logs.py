"""How the exporter logs: structlog, once per process, as JSON lines (or a console format) on stderr; the
standard library's records (aiohttp, asyncio) routed into the same lines without their arguments; and
``OnceLog``, so a problem that every poll meets is logged the first time only.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict

import structlog

from exporter.checks import clean_text
from exporter.errors import ExporterError

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """structlog, once per process: JSON lines (or a console format) on stderr, at ``log.level``."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiohttp (and asyncio) report through the standard library; route them into the same JSON lines, without
    # their messages' arguments or tracebacks, which can quote request headers (Authorization included).
    root = logging.getLogger()
    root.handlers = [_StdlibToStructlog()]
    root.setLevel(logging.WARNING)


class _StdlibToStructlog(logging.Handler):
    """A standard-library record as one structlog event: logger, level, the fixed message and the exception's
    type; never the formatted arguments or the traceback (a bad header's value would be in them)."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, str] = {"logger": record.name}
        if record.exc_info and record.exc_info[0] is not None:
            fields["error_type"] = record.exc_info[0].__name__
        event = str(record.msg).split("%", 1)[0].strip() or "stdlib_log"
        structlog.get_logger("stdlib").log(record.levelno, event, **fields)


class OnceLog:
    """Logs a problem the first time it is seen, so a bad payload does not flood the log every poll. Remembers
    the last ``limit`` keys (a key: sandbox, flow id, what)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._limit = limit

    def first(self, *key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True


def describe(exc: Exception) -> str:
    """An error for the landing page and logs: our own errors' text, which names the endpoint, Adobe's status and
    code and what to do (upstream parts already redacted and cleaned by the client), without a Python class name;
    only the type of anything else (its text could quote upstream data)."""
    if isinstance(exc, ExporterError):
        return clean_text(str(exc), 600)
    return f"unexpected {type(exc).__name__}"
