"""logs.py: one JSON line per event, standard-library records without their arguments, problems logged once."""

from __future__ import annotations

import json
import subprocess
import sys

from exporter.logs import OnceLog


def run_logging(body: str) -> list[dict[str, object]]:
    """The JSON lines a fresh interpreter writes on stderr after configure_logging and ``body``."""
    code = f"from exporter.logs import configure_logging\nconfigure_logging('info', 'json')\n{body}\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stderr.splitlines()]


def test_events_are_json_lines_with_their_fields_at_the_configured_level() -> None:
    """structlog events come out as JSON with level, timestamp and fields; debug is filtered at info."""
    lines = run_logging(
        "import structlog\nlog = structlog.get_logger('x')\n"
        "log.debug('hidden')\nlog.warning('flow_unreadable', sandbox='prod', flow_id='f1')"
    )
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("event", "level", "sandbox", "flow_id")} == {
        "event": "flow_unreadable",
        "level": "warning",
        "sandbox": "prod",
        "flow_id": "f1",
    }
    assert str(lines[0]["timestamp"]).endswith("Z")


def test_a_standard_library_record_keeps_its_message_and_never_its_arguments_or_traceback() -> None:
    """aiohttp's records may quote a request header: only the fixed message, the logger and the exception's type
    reach the log, never the formatted arguments or the traceback."""
    lines = run_logging(
        "import logging\n"
        "try:\n    raise ValueError('Authorization: Bearer sekrit-token')\n"
        "except ValueError:\n"
        "    logging.getLogger('aiohttp.server').exception('Error handling request %s', 'Bearer sekrit-token')\n"
        "logging.getLogger('asyncio').info('quiet below warning')"
    )
    assert len(lines) == 1
    assert lines[0]["event"] == "Error handling request"
    assert (lines[0]["logger"], lines[0]["error_type"], lines[0]["level"]) == ("aiohttp.server", "ValueError", "error")
    assert "sekrit" not in json.dumps(lines)


def test_once_log_says_first_once_per_key_and_forgets_the_oldest_past_its_limit() -> None:
    """A key is first once; past the limit the oldest key is forgotten (and would be logged again)."""
    once = OnceLog(limit=2)
    assert once.first("prod", "f1", "down") is True
    assert once.first("prod", "f1", "down") is False
    assert once.first("prod", "f2", "down") is True
    assert once.first("prod", "f3", "down") is True  # f1 forgotten
    assert once.first("prod", "f2", "down") is False
    assert once.first("prod", "f1", "down") is True
