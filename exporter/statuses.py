"""What a run's status says: Adobe's spellings mapped onto ours, and which of ours end a run. Pure; a leaf.

Adobe's pages spell run statuses several ways (``success``, ``partialSuccess``, ``Failed``, ``inProgress``,
``Processing``, ``Waiting``; flow-service-api.md, "Status values seen"); every spelling maps to one of
``STATUSES``, and one we do not know to ``other``, never to a status it may not be.
"""

from __future__ import annotations

import re

STATUSES = ("success", "partial_success", "failed", "in_progress", "scheduled", "cancelled", "other")
"""Every normalised run status, in the order the one-hot metrics list them."""

TERMINAL_STATUSES = ("success", "partial_success", "failed", "cancelled", "other")
"""Statuses a completed run can end with (``aep_flow_runs_total``'s ``status`` values)."""
FINAL_STATUSES = ("success", "partial_success", "failed", "cancelled")
"""Statuses that say a run has ended, whatever else its payload says (``other`` may be either)."""

_STATUS_ALIASES = {
    "success": "success",
    "succeeded": "success",
    "completed": "success",
    "partialsuccess": "partial_success",
    "failed": "failed",
    "failure": "failed",
    "error": "failed",
    "inprogress": "in_progress",
    "processing": "in_progress",
    "running": "in_progress",
    "started": "in_progress",
    "scheduled": "scheduled",
    "waiting": "scheduled",
    "queued": "scheduled",
    "pending": "scheduled",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "aborted": "cancelled",
}


def normalize_status(raw: object) -> str | None:
    """Map Adobe's status spellings (``partialSuccess``, ``Failed``, ``Processing``) to ``STATUSES``.

    Returns ``None`` when there is no status at all, and ``"other"`` for one we do not know.
    """
    if not isinstance(raw, str) or not raw.strip():
        return None
    key = re.sub(r"[\s_-]", "", raw).lower()
    return _STATUS_ALIASES.get(key, "other")
