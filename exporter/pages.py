"""The exporter's HTML pages: the landing page (``/``) and the runbook (``/runbook``). Pure: values in, HTML out.

The landing page reads one clock: the exporter's (Adobe's times are compared with it; in the demo it is the
simulator's, and the page says so). Every time is shown with its age. Flows that need a look come first: not
readable, then failed, then the rest, each status with its colour and what it means.

The runbook is exporter/runbook.md (shipped in the package), rendered once with Python-Markdown; each heading
gets an id of its text in lower case, so ``/runbook#aepflowrunfailed`` is the section of ``AEPFlowRunFailed``,
as the alert rules' ``runbook_url`` expects.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
import time
import urllib.parse

import markdown

from exporter import __version__
from exporter.values import FlowState, Snapshot

LANDING_FLOW_ROWS = 1000

STATUS_MEANING = {
    "failed": ("#b00020", "the newest run failed"),
    "partial_success": ("#b26a00", "the newest run ingested some records and failed others"),
    "in_progress": ("#1565c0", "the newest run is still going"),
    "scheduled": ("#616161", "the newest run is waiting to start"),
    "cancelled": ("#616161", "the newest run was cancelled"),
    "other": ("#6a1b9a", "a status Adobe sent that the exporter does not know (see the log)"),
    "success": ("#1b5e20", "the newest run succeeded"),
}
"""Every status a run can have (statuses.py), its colour and what it means, in the order flows are listed."""

STYLE = """body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
.age{color:#555;font-size:.9em}.down{color:#b00020;font-weight:bold}
""" + "".join(f".s-{s}{{color:{c};font-weight:bold}}" for s, (c, _m) in STATUS_MEANING.items())


def age(seconds: float | None, now: float) -> str:
    """``5 min ago``, ``in 2 h`` (a time ahead of the clock), ``never``."""
    if seconds is None:
        return "never"
    delta = now - seconds
    ahead, delta = delta < 0, abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            amount = f"{delta / size:.0f} {unit}"
            break
    else:
        amount = f"{delta:.0f} s"
    return f"in {amount}" if ahead else f"{amount} ago"


def flow_path(sandbox: str, flow_id: str) -> str:
    """The flow page's address on the exporter."""
    return f"/flows/{urllib.parse.quote(sandbox, safe='')}/{urllib.parse.quote(flow_id, safe='')}"


def _when(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
    return f"{stamp} <span class='age'>({age(seconds, now)})</span>"


def _rank(state: FlowState) -> tuple[int, str, str, str]:
    """Not readable first, then by status (failed first, success last), then sandbox and name."""
    order = list(STATUS_MEANING)
    status = state.last_run.status if state.last_run else "other"
    first = 0 if not state.up else 1 + order.index(status if status in STATUS_MEANING else "other")
    return (first, state.sandbox, state.flow.name if state.flow else "", state.flow_id)


def _flow_row(state: FlowState, now: float) -> str:
    esc = html.escape
    flow, last = state.flow, state.last_run
    status = last.status if last else None
    shown = (
        f"<span class='s-{esc(status)}' title='{esc(STATUS_MEANING.get(status, ('', ''))[1])}'>{esc(status)}</span>"
        if status
        else "no runs yet"
    )
    ended = _when(last.ended_ms / 1000.0, now) if last and last.ended_ms is not None else "-"
    success = _when(state.last_success_ms / 1000.0, now) if state.last_success_ms is not None else "never"
    up = "yes" if state.up else "<span class='down'>no: cannot be read (see the log)</span>"
    return (
        f"<tr><td>{esc(state.sandbox)}</td><td><a href='{esc(flow_path(state.sandbox, state.flow_id), quote=True)}'>"
        f"{esc((flow.name if flow else '') or '?')}</a></td>"
        f"<td><code>{esc(state.flow_id)}</code></td><td>{esc(flow.kind if flow else '?')}</td>"
        f"<td>{esc(flow.state if flow else '?')}</td><td>{shown}</td><td>{ended}</td><td>{success}</td>"
        f"<td>{up}</td></tr>"
    )


def plural(count: int, word: str, words: str = "") -> str:
    """``1 sandbox``, ``2 sandboxes``: the count with the word in its number."""
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"


def landing_page(snapshot: Snapshot, *, now: float, clock_note: str = "", title: str = "AEP Flow Exporter") -> str:
    """Version, links, each sandbox's last poll, each flow's newest run; ``now`` is the exporter's clock."""
    esc = html.escape
    rows = []
    for sb in snapshot.sandboxes:
        result = "not yet polled" if sb.last_ok is None else ("ok" if sb.last_ok else f"failed: {sb.last_error}")
        rows.append(
            f"<tr><td>{esc(sb.name)}</td><td>{sb.flows}</td><td>{sb.dropped}</td>"
            f"<td>{esc(result)}</td><td>{_when(sb.last_success_s, now)}</td>"
            f"<td><code>{esc(sb.runs_strategy)}</code></td></tr>"
        )
    flows = sorted(snapshot.flows, key=_rank)
    flow_rows = [_flow_row(state, now) for state in flows[:LANDING_FLOW_ROWS]]
    more = len(flows) - LANDING_FLOW_ROWS
    note = f"<p>{plural(more, 'more flow')} not shown; see /metrics.</p>" if more > 0 else ""
    legend = "".join(
        f"<li><span class='s-{s}'>{s}</span>: {esc(meaning)}</li>" for s, (_c, meaning) in STATUS_MEANING.items()
    )
    clock = f" {esc(clock_note)}" if clock_note else ""
    failed = sum(1 for f in flows if f.last_run is not None and f.last_run.status == "failed")
    down = sum(1 for f in flows if not f.up)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{STYLE}</style></head><body>
<h1>{esc(title)}</h1>
<p>Version {esc(__version__)}. <a href="/metrics">Metrics</a> &middot; <a href="/runbook">Runbook</a>
&middot; <a href="/healthz">Health</a> &middot; <a href="/readyz">Readiness</a></p>
<p>Now: {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))}.{clock}
{plural(len(snapshot.sandboxes), "sandbox", "sandboxes")}, {plural(len(flows), "flow")}:
{plural(failed, "failed flow")}, {plural(down, "flow")} not readable.</p>
<h2>Sandboxes</h2>
<table><tr><th>Sandbox</th><th>Flows</th><th>Dropped</th><th>Last poll</th><th>Last success</th>
<th>Runs query</th></tr>
{"".join(rows)}</table>
<h2>Flows</h2>
<table><tr><th>Sandbox</th><th>Name</th><th>Flow id</th><th>Kind</th><th>State</th><th>Newest run</th>
<th>Ended</th><th>Last success</th><th>Readable</th></tr>
{"".join(flow_rows)}</table>{note}
<h2>Statuses</h2>
<ul>{legend}</ul>
</body></html>
"""


@functools.cache
def runbook_page() -> str:
    """exporter/runbook.md as an HTML page, every heading with its anchor."""
    text = importlib.resources.files("exporter").joinpath("runbook.md").read_text(encoding="utf-8")
    body = markdown.markdown(text, extensions=["toc", "tables", "fenced_code"], output_format="html")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aep-flow-exporter runbook</title><style>{STYLE}
code{{background:#f4f4f4;padding:0 .2em}}</style></head><body>
<p><a href="/">Exporter</a> &middot; version {html.escape(__version__)}</p>
{body}
</body></html>
"""
