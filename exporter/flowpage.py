"""A page per flow (``/flows/<sandbox>/<flow id>``): its newest runs, each with status, counts, duration, error
codes and messages, and a link to the flow in Experience Platform's UI; the same as JSON for scripts. Pure:
values in, HTML or a JSON-ready dict out.

Every value on it came from Adobe through model.py (cleaned there) or from the state file (validated on load
in store.py); here each is escaped once more for HTML, so whatever a run carries shows as text.
"""

from __future__ import annotations

import html
import time
import urllib.parse
from typing import Any

from exporter.model import Counts
from exporter.pages import STATUS_MEANING, STYLE, age, flow_path
from exporter.values import FlowState, RecentRun

_COUNTED = (("records", "input"), ("records", "output"), ("records", "failed"), ("bytes", "output"))


def ui_link(aep_ui: str, sandbox: str, flow_id: str) -> str:
    """The flow in Experience Platform's UI, as the dashboards link it (README, "Dashboards": Adobe documents no
    addresses of its UI; this is the one its browser tab shows for a dataflow)."""
    quoted = urllib.parse.quote
    return f"{aep_ui}/sname:{quoted(sandbox, safe='')}/platform/source/dataflows/{quoted(flow_id, safe='')}"


def _iso(ms: int | None) -> str | None:
    return None if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _counts(counts: Counts) -> dict[str, dict[str, int]]:
    return {
        group: {k: v for k, v in getattr(counts, group).items() if v is not None}
        for group in ("records", "bytes", "files")
    }


def run_json(run: RecentRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "started": _iso(run.started_ms),
        "ended": _iso(run.ended_ms),
        "duration_seconds": run.duration_seconds,
        "counts": _counts(run.counts),
        "errors": [{"code": code, "message": message} for code, message in run.errors],
    }


def flow_json(state: FlowState, *, aep_ui: str) -> dict[str, Any]:
    """The flow page's content for scripts (``Accept: application/json``)."""
    flow = state.flow
    return {
        "sandbox": state.sandbox,
        "flow_id": state.flow_id,
        "name": flow.name if flow else None,
        "kind": flow.kind if flow else None,
        "state": flow.state if flow else None,
        "readable": state.up,
        "labels": dict(state.labels),
        "aep_ui": ui_link(aep_ui, state.sandbox, state.flow_id),
        "last_success": _iso(state.last_success_ms),
        "data_as_of": _iso(state.data_as_of_ms),
        "next_run_expected": _iso(state.next_run_expected_ms),
        "runs_total": dict(state.runs_total),
        "runs": [run_json(r) for r in state.recent_runs],
    }


def _when(ms: int | None, now: float) -> str:
    if ms is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))
    return f"{stamp} <span class='age'>({age(ms / 1000, now)})</span>"


def _count_cell(counts: Counts, group: str, name: str) -> str:
    value = getattr(counts, group).get(name)
    return "-" if value is None else f"{value:,}"


def _run_row(run: RecentRun, now: float) -> str:
    esc = html.escape
    meaning = STATUS_MEANING.get(run.status, ("", ""))[1]
    errors = (
        "<ul>" + "".join(f"<li><code>{esc(code)}</code> {esc(message)}</li>" for code, message in run.errors) + "</ul>"
        if run.errors
        else ""
    )
    duration = "-" if run.duration_seconds is None else f"{run.duration_seconds:,.0f} s"
    cells = "".join(f"<td>{_count_cell(run.counts, g, n)}</td>" for g, n in _COUNTED)
    return (
        f"<tr id='run-{esc(run.id)}'><td><code>{esc(run.id)}</code></td>"
        f"<td><span class='s-{esc(run.status)}' title='{esc(meaning)}'>{esc(run.status)}</span></td>"
        f"<td>{_when(run.started_ms, now)}</td><td>{_when(run.ended_ms, now)}</td><td>{duration}</td>"
        f"{cells}<td>{errors}</td></tr>"
    )


def flow_page(state: FlowState, *, now: float, aep_ui: str) -> str:
    """The flow's page: what it is, its freshness, and its newest runs (newest first)."""
    esc = html.escape
    flow = state.flow
    name = flow.name if flow and flow.name else state.flow_id
    rows = "".join(_run_row(r, now) for r in state.recent_runs)
    heads = "".join(f"<th>{esc(f'{n} {g}')}</th>" for g, n in _COUNTED)
    runs = (
        f"<table><tr><th>Run</th><th>Status</th><th>Started</th><th>Ended</th><th>Duration</th>{heads}"
        f"<th>Errors</th></tr>{rows}</table>"
        if rows
        else "<p>No runs seen yet.</p>"
    )
    readable = "yes" if state.up else "<span class='down'>no: cannot be read (see the log)</span>"
    totals = ", ".join(f"{esc(k)} {v:,}" for k, v in sorted(state.runs_total.items()))
    link = esc(ui_link(aep_ui, state.sandbox, state.flow_id), quote=True)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(name)} - AEP Flow Exporter</title>
<style>{STYLE}</style></head><body>
<p><a href="/">Exporter</a> &middot; <a href="{link}">Open in Experience Platform</a> &middot;
<a href="{esc(flow_path(state.sandbox, state.flow_id), quote=True)}?format=json">JSON</a></p>
<h1>{esc(name)}</h1>
<table>
<tr><th>Sandbox</th><td>{esc(state.sandbox)}</td></tr>
<tr><th>Flow id</th><td><code>{esc(state.flow_id)}</code></td></tr>
<tr><th>Kind, state</th><td>{esc(flow.kind if flow else "?")}, {esc(flow.state if flow else "?")}</td></tr>
<tr><th>Readable</th><td>{readable}</td></tr>
<tr><th>Last success</th><td>{_when(state.last_success_ms, now)}</td></tr>
<tr><th>Data as of</th><td>{_when(state.data_as_of_ms, now)}</td></tr>
<tr><th>Next run expected</th><td>{_when(state.next_run_expected_ms, now)}</td></tr>
<tr><th>Runs counted</th><td>{totals}</td></tr>
</table>
<h2>Newest runs</h2>
{runs}
<p class="age">Times in UTC; the exporter keeps a flow's newest runs in its state file.</p>
</body></html>
"""
