"""A page per flow: its newest runs (from the state file, bounded) with status, counts, duration, error codes and
messages, a link to the flow in Experience Platform's UI, the same as JSON; escaped, never a 500 on data."""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import AEP_UI, MetricsConfig
from exporter.counting import apply_runs, new_flow_state
from exporter.flowpage import flow_json, flow_page
from exporter.model import parse_flow, parse_run
from exporter.store import SqliteStore
from exporter.values import RECENT_RUNS, FlowState
from tests.helpers import scrape, serve
from tests.simulation import Sim, make_config, make_exporter

HOSTILE = "<script>alert(\"x\")</script> & 'quote' \u202e"


def _run(run_id: str, *, status: str = "failed", code: str = "CONN-1001-500", message: str = "", at: int = 0) -> Any:
    return {
        "id": run_id,
        "flowId": "f1",
        "createdAt": 1_700_000_000_000 + at,
        "metrics": {
            "durationSummary": {
                "startedAtUTC": 1_700_000_000_000 + at,
                "completedAtUTC": 1_700_000_060_000 + at,
            },
            "recordSummary": {"inputRecordCount": 10, "outputRecordCount": 7, "failedRecordCount": 3},
            "statusSummary": {"status": status, "errors": [{"code": code, "message": message}]},
        },
    }


def _state(*runs: Any, name: str = "Orders") -> FlowState:
    flow = parse_flow({"id": "f1", "name": name, "state": "enabled"}, 1_800_000_000_000)
    state = new_flow_state(
        sandbox="prod", flow_id="f1", now_ms=1_800_000_000_000, initial_lookback=10**9, duration_buckets=(60.0,)
    )
    parsed = [parse_run(r, 1_800_000_000_000) for r in runs]
    return apply_runs(state, flow, parsed, now_ms=1_800_000_000_000, metrics=MetricsConfig()).state


def test_the_page_lists_the_newest_runs_first_with_counts_durations_errors_and_the_ui_link() -> None:
    """Status, start, duration, records in/out/failed, each error code with its message, newest first; the header
    links the flow in Experience Platform's UI under the configured base."""
    state = _state(
        _run("r-old", status="success", at=0),
        _run("r-new", message="Connection refused by the source", at=3_600_000),
    )
    page = flow_page(state, now=1_800_000_000, aep_ui="https://experience.adobe.com/#/@acme")
    assert page.index("r-new") < page.index("r-old")
    row = page[page.index("id='run-r-new'") :].split("</tr>")[0]
    assert "s-failed" in row and "60 s" in row and ">10<" in row and ">7<" in row and ">3<" in row
    assert "CONN-1001-500" in row and "Connection refused by the source" in row
    assert 'href="https://experience.adobe.com/#/@acme/sname:prod/platform/source/dataflows/f1"' in page
    assert flow_json(state, aep_ui=AEP_UI)["runs"][0] == {
        "id": "r-new",
        "status": "failed",
        "started": "2023-11-14T23:13:20Z",
        "ended": "2023-11-14T23:14:20Z",
        "duration_seconds": 60.0,
        "counts": {"records": {"input": 10, "output": 7, "failed": 3}, "bytes": {}, "files": {}},
        "errors": [{"code": "CONN-1001-500", "message": "Connection refused by the source"}],
    }


def test_a_flow_keeps_only_its_newest_runs_and_they_survive_a_restart(tmp_path: Path) -> None:
    """At most RECENT_RUNS runs per flow, the newest; the state file gives them back as they were."""
    state = _state(*(_run(f"r{i:03d}", status="success", at=i * 60_000) for i in range(RECENT_RUNS + 15)))
    assert [r.id for r in state.recent_runs] == [f"r{i:03d}" for i in range(RECENT_RUNS + 14, 14, -1)]
    store = SqliteStore(tmp_path / "state.db")
    store.save(state)
    store.close()
    store = SqliteStore(tmp_path / "state.db")
    loaded, _resets = store.load((60.0,), 1_800_000_000_000)
    store.close()
    assert loaded[0].recent_runs == state.recent_runs
    assert loaded[0].exemplars == state.exemplars


def test_hostile_names_codes_and_messages_show_as_text_in_html_and_json() -> None:
    """A flow name, error code and message full of markup reach the page escaped (no tag of theirs is a tag) and
    the JSON as the cleaned strings."""
    state = _state(_run("r1", code='E"<b>', message=HOSTILE), name=HOSTILE)
    page = flow_page(state, now=1_800_000_000, aep_ui=AEP_UI)
    assert "<script>" not in page and "<b>" not in page
    assert html.escape("<script>") in page
    tags = set(re.findall(r"<([a-z0-9]+)", page))
    assert tags <= {"html", "head", "meta", "title", "style", "body", "p", "a", "h1", "h2", "table", "tr", "th", "td",
                    "code", "span", "ul", "li"}  # fmt: skip
    data = flow_json(state, aep_ui=AEP_UI)
    assert data["runs"][0]["errors"][0]["message"].startswith("<script>")  # text, for the script to escape its way
    json.dumps(data)


payloads = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20)},
    optional={
        "createdAt": st.integers(-(2**40), 2**45) | st.text(max_size=5) | st.none(),
        "metrics": st.fixed_dictionaries(
            {},
            optional={
                "statusSummary": st.fixed_dictionaries(
                    {},
                    optional={
                        "status": st.text(max_size=10) | st.none() | st.integers(),
                        "errors": st.lists(
                            st.fixed_dictionaries(
                                {},
                                optional={
                                    "code": st.text(max_size=10) | st.integers() | st.none(),
                                    "message": st.text(max_size=50) | st.integers() | st.none() | st.lists(st.text()),
                                },
                            )
                            | st.text(max_size=5),
                            max_size=3,
                        )
                        | st.text(max_size=5),
                    },
                ),
                "durationSummary": st.dictionaries(
                    st.sampled_from(["startedAtUTC", "completedAtUTC"]),
                    st.integers(-(2**40), 2**45) | st.text(max_size=5) | st.floats(),
                ),
            },
        ),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(payloads, max_size=6))
def test_any_run_payloads_render_a_page_and_json_without_raising(runs: list[Any]) -> None:
    """Whatever runs Adobe sends, the page renders (no tag from data) and the JSON serializes."""
    good = []
    for payload in runs:
        try:
            good.append(parse_run(payload, 1_800_000_000_000))
        except Exception:  # noqa: BLE001, S112 -- PayloadError: no usable id, the run is skipped upstream too
            continue
    flow = parse_flow({"id": "f1", "name": "n"}, 1_800_000_000_000)
    state = new_flow_state(
        sandbox="prod", flow_id="f1", now_ms=1_800_000_000_000, initial_lookback=10**9, duration_buckets=(60.0,)
    )
    state = apply_runs(state, flow, good, now_ms=1_800_000_000_000, metrics=MetricsConfig()).state
    page = flow_page(state, now=1_800_000_000, aep_ui=AEP_UI)
    assert "<script" not in page
    json.dumps(flow_json(state, aep_ui=AEP_UI))


async def test_the_landing_page_links_each_flow_to_its_page_served_as_html_json_and_by_run_id(sim: Sim) -> None:
    """Over the simulator: each flow name on / links to /flows/<sandbox>/<id>; that page shows the flow's newest
    runs as the simulator has them; Accept: application/json gives the same as JSON; /runs/<run id> leads to the
    run's row; an unknown flow or run is a 404, never a 500."""
    exporter = make_exporter(make_config(sim.url), world=sim.world)
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        _status, landing, _headers = await scrape(server, "/")
        links = re.findall(r"href='(/flows/[^']+)'", landing)
        truth = sim.world.truth()["sandboxes"]
        assert len(links) == sum(len(f) for f in truth.values())
        checked = 0
        for link in links:
            sandbox, flow_id = (urllib.parse.unquote(p) for p in link.split("/")[2:4])
            status, page, _h = await scrape(server, html.unescape(link))
            assert status == 200 and flow_id in page
            status, body, headers = await scrape(server, html.unescape(link), Accept="application/json")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            data = json.loads(body)
            runs = sorted(truth[sandbox][flow_id]["runs"], key=lambda r: r["started_ms"] or 0, reverse=True)
            assert [r["id"] for r in data["runs"]] == [r["id"] for r in runs[:RECENT_RUNS]]
            for shown, real in zip(data["runs"], runs, strict=False):
                assert shown["status"] == real["status"]
                if not real["completed"]:
                    continue  # a run in progress reports no counts yet
                assert shown["counts"]["records"].get("input") == real["records"].get("input")
                assert sorted(e["code"] for e in shown["errors"]) == sorted(real["error_codes"])
                checked += 1
        assert checked > 20
        run_id = data["runs"][0]["id"]
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url(f"/runs/{run_id}"), allow_redirects=False) as resp:
                assert resp.status == 302
                assert resp.headers["Location"].endswith(f"#run-{run_id}")
            for path in ("/flows/prod/nope", "/runs/nope", "/flows/nope/" + flow_id):
                async with session.get(server.make_url(path)) as resp:
                    assert resp.status == 404
    finally:
        await server.close()


async def test_the_page_links_the_configured_experience_platform_address(sim: Sim) -> None:
    """server.aep_ui is the base of the page's link to the flow in Experience Platform's UI."""
    import dataclasses

    config = make_config(sim.url)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, aep_ui="https://experience.adobe.com/#/@acme")
    )
    exporter = make_exporter(config, world=sim.world)
    server: TestServer = await serve(exporter)
    try:
        assert await exporter.poll_once()
        state = exporter.snapshot().flows[0]
        _status, page, _headers = await scrape(server, f"/flows/{state.sandbox}/{state.flow_id}")
        assert f"https://experience.adobe.com/#/@acme/sname:{state.sandbox}/platform/source/dataflows/" in page
    finally:
        await server.close()


async def test_a_flow_whose_runs_cannot_be_shown_gets_a_plain_answer_never_a_500(sim: Sim) -> None:
    """Defence in depth: a state that bypassed validation (built by hand here) gets a plain 200 saying so, in HTML
    and JSON alike; the landing page and the other flows' pages are unaffected."""
    import dataclasses

    from exporter.values import RecentRun

    exporter = make_exporter(make_config(sim.url), world=sim.world)
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        broken, other = exporter.snapshot().flows[:2]
        bad = RecentRun(id="r", status="failed", started_ms=0, ended_ms=0, duration_seconds=1.0, counts=None)  # type: ignore[arg-type]
        exporter.tracker.put(dataclasses.replace(broken, recent_runs=(bad,)))
        exporter.tracker.publish()
        for headers in ({}, {"Accept": "application/json"}):
            status, text, _h = await scrape(server, f"/flows/{broken.sandbox}/{broken.flow_id}", **headers)
            assert status == 200 and "could not be shown" in text
        assert (await scrape(server, f"/flows/{other.sandbox}/{other.flow_id}"))[0] == 200
        assert (await scrape(server, "/"))[0] == 200
    finally:
        await server.close()
