"""Run ids as exemplars: the newest run that changed a counter series (counting.py keeps it in the flow's state),
as prometheus-client writes it in OpenMetrics; the text format leaves exemplars out, and no series is added."""

from __future__ import annotations

from prometheus_client.samples import Exemplar

from exporter.values import FlowState

EXEMPLAR_MAX_CHARS = 128
"""OpenMetrics caps an exemplar's label names and values at 128 characters together."""


def exemplar_of(state: FlowState, key: str) -> Exemplar | None:
    """The exemplar of one of the flow's counter series (the newest run that changed it), as prometheus-client
    writes it in OpenMetrics (the text format leaves it out): ``run_id`` and ``flow_id``, the run's contribution,
    the run's end. None when there is none, or when the ids are too long for OpenMetrics."""
    known = state.exemplars.get(key)
    if known is None:
        return None
    labels = {"run_id": known.run_id, "flow_id": state.flow_id}
    if sum(len(k) + len(v) for k, v in labels.items()) > EXEMPLAR_MAX_CHARS:
        return None
    return Exemplar(labels, known.value, known.ended_ms / 1000.0)
