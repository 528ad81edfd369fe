"""Adobe's documented examples, as stored in ``data/`` (ids, times and free text replaced; structure, value types
and Adobe's oddities kept), and how they are replayed: times moved to the test's now, ids mapped to the ones the
test serves.

- ``monitor_flows``, ``monitor_runs``: "Monitor dataflows using the Flow Service API", its ``GET /flows`` and
  ``GET /runs?property=flowId==`` answers;
- ``api_reference_flows``, ``api_reference_runs``: the "Flow Service API" reference (flow-service.yaml), its
  ``FlowListResponse`` and ``FlowRunsListResponse`` assembled from their field examples;
- ``activation_results_runs``: "View detailed activation results" (Destination SDK), a destination run as
  ``GET /runs`` gives it (no ``createdAt``, ``latencySummary: null``);
- ``alert_source_flow_run_start``, ``_success``, ``_failure``: "Standard alert rules", run objects as I/O Events
  payloads (in progress; success; failed with a ``failedInfo`` code and no count);
- ``alert_source_flow_run_delay``, ``alert_sources_ingestion_error_rate``: "Standard alert rules", alerts naming a
  flow (and a run);
- ``alert_identity_flow_run_success``: "Standard alert rules", an Identity Service flow run (not a flow the
  exporter tracks);
- ``notification_success``, ``notification_failure``: "Flow run notifications", the success envelope
  (``durationSummary`` in seconds) and the failure message batch (no event id, no run end);
- ``ingestion_failure``: "Data ingestion notifications", ``ing_load_failure`` (a dataset, no flow);
- ``journaling_api_transcripts``: "Journaling API", every request/response pair the page shows;
- ``ims_token_response``: "OAuth Server-to-Server credential API Reference", the token answer;
- ``webhook_intro_event``: "Introduction to Adobe I/O Events Webhooks", a delivered event, the challenge and the
  asynchronous validation body.

(The "Standard alert rules" delay example has a typo, ``header"`` without its opening quote: it is stored as the
valid JSON it means.) Request forms documented by "Sorting and filtering responses in the Flow Service API" are
checked against the requests the exporter sends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
T0_MS = 1_600_000_000_000
"""The time the stored examples are anchored on (their latest time); replay moves it to the test's now."""


def load(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text())


def replay(example: Any, now_ms: int, ids: dict[str, str] | None = None) -> Any:
    """The example with its times moved so that T0 is ``now_ms`` (epoch milliseconds and seconds alike) and its ids
    replaced as ``ids`` says."""
    shift = now_ms - T0_MS
    mapping = ids or {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, bool):
            return node
        if isinstance(node, int):
            if 1_400_000_000_000 <= node <= 2_000_000_000_000:
                return node + shift
            if 1_400_000_000 <= node <= 2_000_000_000:
                return node + shift // 1000
            return node
        if isinstance(node, str):
            for old, new in mapping.items():
                node = node.replace(old, new)
            return node
        return node

    return walk(example)
