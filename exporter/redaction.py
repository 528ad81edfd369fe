"""Upstream text (an IMS error description, a Flow Service error title) made safe to show: every secret and token
redacted in every encoding it may come back in, *before* the text is cut (a cut inside a secret would leave part
of it), then control characters escaped (a newline in upstream text could forge a line of our own output, a
"token OK" in ``check-config``), then cut to a length.

The encodings a server may echo a secret in: as sent in the token request's form (percent-encoded, ``+`` for
spaces, in either case), as a ``Basic`` credential (base64 of ``client_id:secret``), base64 of the secret
alone, and JSON-escaped.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from exporter.checks import clean_text

REDACTED = "<redacted>"
_MIN_SECRET = 4
"""Shorter values are not secrets worth hunting for (and would redact ordinary words)."""
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def encodings(secret: str, client_id: str = "") -> set[str]:
    """Every form ``secret`` may be echoed in (see the module docstring)."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        quote(secret),
        json.dumps(secret)[1:-1],
        base64.b64encode(secret.encode()).decode().rstrip("="),
    }
    if client_id:
        forms.add(base64.b64encode(f"{client_id}:{secret}".encode()).decode().rstrip("="))
    return {f for f in forms if len(f) >= _MIN_SECRET}


def redactor(secrets: Iterable[str], client_id: str = "") -> re.Pattern[str] | None:
    """One pattern matching every form of every secret (percent-encodings in either case), longest first."""
    forms: set[str] = set()
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET:
            forms |= encodings(secret, client_id)
    if not forms:
        return None
    parts = []
    for form in sorted(forms, key=len, reverse=True):
        escaped = re.escape(form)
        # %2f and %2F are the same byte: match a percent-encoding whatever the case of its hex digits
        parts.append(
            re.sub(
                r"%([0-9A-Fa-f])([0-9A-Fa-f])",
                lambda m: f"%[{m[1].upper()}{m[1].lower()}][{m[2].upper()}{m[2].lower()}]",
                escaped,
            )
        )
    return re.compile("|".join(parts))


def safe_text(text: str, pattern: re.Pattern[str] | None, limit: int = 300) -> str:
    """``text`` redacted, its controls escaped, then cut to ``limit`` characters (in that order)."""
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = clean_text(text, len(text))
    for char, escape in _ESCAPES.items():
        text = text.replace(char, escape)
    return text if len(text) <= limit else text[: limit - 3] + "..."
