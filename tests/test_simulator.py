"""The simulator speaks the Flow Service faithfully: headers, errors, filters, paging, payload variety."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from exporter.simulator import Credentials, World
from exporter.simulator.server import API_PREFIX, IMS_PATH
from tests.simulation import Sim, make_world


async def _token(session: aiohttp.ClientSession, sim: Sim) -> str:
    creds = Credentials()
    async with session.post(
        f"{sim.url}{IMS_PATH}",
        data={
            "grant_type": "client_credentials",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "scope": "openid",
        },
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    return str(body["access_token"])


async def _get(
    sim: Sim,
    path: str,
    params: list[tuple[str, str]] | None = None,
    *,
    sandbox: str | None = "prod",
    token: str | None = None,
    api_key: str | None = None,
) -> tuple[int, Any]:
    creds = Credentials()
    async with aiohttp.ClientSession() as session:
        token = token if token is not None else await _token(session, sim)
        headers = {
            "Authorization": f"Bearer {token}",
            "x-api-key": api_key or creds.client_id,
            "x-gw-ims-org-id": creds.org_id,
        }
        if sandbox is not None:
            headers["x-sandbox-name"] = sandbox
        async with session.get(f"{sim.url}{API_PREFIX}{path}", params=params or [], headers=headers) as resp:
            return resp.status, await resp.json()


async def test_missing_or_wrong_headers_get_gateway_style_errors(sim: Sim) -> None:
    """No sandbox header: 400 2105-400; bad token: 401 401013; bad api key: 403."""
    status, body = await _get(sim, "/flows", sandbox=None)
    assert status == 400 and "2105-400" in body["type"]
    status, body = await _get(sim, "/flows", token="forged")
    assert (status, body["error_code"]) == (401, "401013")
    status, body = await _get(sim, "/flows", api_key="someone-else")
    assert status == 403


async def test_filters_support_every_documented_operator(sim: Sim) -> None:
    """==, multi-value ==, >, <, >=, <= and array paths filter runs and flows as documented."""
    _s, runs = await _get(sim, "/runs", [("limit", "100")])
    items = runs["items"]
    flow_ids = sorted({r["flowId"] for r in items})[:2]
    _s, two = await _get(sim, "/runs", [("property", "flowId==" + ",".join(flow_ids))])
    assert {r["flowId"] for r in two["items"]} == set(flow_ids)
    pivot = sorted(r["createdAt"] for r in items)[len(items) // 2]
    for op, check in (
        (">", lambda v: v > pivot),
        ("<", lambda v: v < pivot),
        (">=", lambda v: v >= pivot),
        ("<=", lambda v: v <= pivot),
    ):
        _s, got = await _get(sim, "/runs", [("property", f"createdAt{op}{pivot}"), ("limit", "100")])
        assert got["items"] and all(check(r["createdAt"]) for r in got["items"]), op
    _s, flows = await _get(sim, "/flows")
    conn = flows["items"][0]["sourceConnectionIds"][0]
    _s, by_conn = await _get(sim, "/flows", [("property", f"sourceConnectionIds[]=={conn}")])
    assert [f["id"] for f in by_conn["items"]] == [flows["items"][0]["id"]]
    _s, sources = await _get(sim, "/flows", [("property", "inheritedAttributes.properties.isSourceFlow==true")])
    assert sources["items"] and all(f["inheritedAttributes"]["properties"]["isSourceFlow"] for f in sources["items"])
    status, body = await _get(sim, "/flows", [("property", "state!=enabled")])
    assert status == 400 and "1450-400" in body["type"]


async def test_lists_are_newest_first_and_limit_is_capped(sim: Sim) -> None:
    """Lists come newest first (orderby=createdAt reverses), and limit is at most 100."""
    sim.world.clock.advance(12 * 3600)  # enough runs for more than one page
    _s, page = await _get(sim, "/runs", [("limit", "500")])
    created = [r["createdAt"] for r in page["items"]]
    assert len(created) == 100 and created == sorted(created, reverse=True)
    _s, asc = await _get(sim, "/runs", [("orderby", "createdAt"), ("limit", "10")])
    assert [r["createdAt"] for r in asc["items"]] == sorted(r["createdAt"] for r in asc["items"])
    assert "next" in page["_links"]


async def test_count_answers_a_number_and_refuses_limit(sim: Sim) -> None:
    """count=true gives {"count": N}; combined with limit it is refused with 1401-400."""
    _s, body = await _get(sim, "/flows", [("count", "true")])
    assert body == {"count": 6}
    status, body = await _get(sim, "/flows", [("count", "true"), ("limit", "5")])
    assert status == 400 and "1401-400" in body["type"]


async def test_continuation_token_requires_the_same_filters(sim: Sim) -> None:
    """The next href carries only the token; reusing it with other filters is refused."""
    _s, first = await _get(sim, "/runs", [("property", "createdAt>0"), ("limit", "5")])
    href = first["_links"]["next"]["href"]
    assert href.startswith("/runs?continuationToken=") and "property" not in href
    token = href.split("continuationToken=", 1)[1]
    assert "=" in token
    status, _body = await _get(sim, "/runs", [("limit", "5"), ("continuationToken", token)])
    assert status == 400
    status, second = await _get(
        sim, "/runs", [("property", "createdAt>0"), ("limit", "5"), ("continuationToken", token)]
    )
    assert status == 200
    assert not {r["id"] for r in second["items"]} & {r["id"] for r in first["items"]}


async def test_single_entity_routes_use_the_list_envelope(sim: Sim) -> None:
    """/flows/{id} and /runs/{id} answer {"items": [...]}; unknown ids give 404."""
    flow_id = next(iter(sim.world.flows["prod"]))
    status, body = await _get(sim, f"/flows/{flow_id}")
    assert status == 200 and [f["id"] for f in body["items"]] == [flow_id]
    run_id = sim.world.flows["prod"][flow_id].runs[0].id
    status, body = await _get(sim, f"/runs/{run_id}")
    assert status == 200 and body["items"][0]["flowId"] == flow_id
    status, _ = await _get(sim, "/flows/nope")
    assert status == 404


def test_payloads_cover_every_variation_the_exporter_must_handle() -> None:
    """Across a seeded world: every status, -1 unknowns, both activity id forms, destination capitalisation."""
    world = make_world(flows_per_sandbox=10)
    world.clock.advance(3600)
    now = world.now_ms()
    payloads = [r.to_json(now) for sb in world.flows for f in world.sandbox_flows(sb) for r in f.runs]
    statuses = {p["metrics"]["statusSummary"]["status"] for p in payloads}
    assert {"success", "partialSuccess", "failed", "inProgress", "Success"} <= statuses
    assert any(p["metrics"].get("sizeSummary", {}).get("inputBytes") == -1 for p in payloads)
    ids = {a["id"] for p in payloads for a in p["activities"]}
    assert {"copyActivity", "promotionActivity"} <= ids
    assert any("name" in a for p in payloads for a in p["activities"])
    codes = {e["code"] for p in payloads for e in p["metrics"]["statusSummary"].get("errors", [])}
    assert codes
    young = [r for sb in world.flows for f in world.flows[sb].values() for r in f.runs if now - r.created_ms < 5000]
    for run in young:
        assert "durationSummary" not in run.to_json(now)["metrics"]


def test_same_seed_gives_the_same_world() -> None:
    """Two worlds with one seed and one clock produce identical flows and runs."""
    from exporter.simulator import SimClock

    clock_a, clock_b = SimClock(start_ms=1_700_000_000_000, speed=0), SimClock(start_ms=1_700_000_000_000, speed=0)
    a = World(seed=5, clock=clock_a)
    b = World(seed=5, clock=clock_b)
    assert a.truth() == b.truth()
    c = World(seed=6, clock=SimClock(start_ms=1_700_000_000_000, speed=0))
    assert c.truth() != a.truth()


@pytest.mark.parametrize("status", ["failed", "success"])
def test_forced_status_applies_to_new_runs(status: str) -> None:
    """force_status makes every later run of a flow end with that status (for alert tests and demos)."""
    world = make_world()
    flow_id = next(iter(world.flows["prod"]))
    world.force_status(flow_id, status)
    before = len(world.flows["prod"][flow_id].runs)
    world.clock.advance(6 * 3600)
    world.sandbox_flows("prod")  # materialise the runs up to now
    runs = world.flows["prod"][flow_id].visible_runs(world.now_ms())
    assert len(runs) > before
    assert {r.status for r in runs[before:]} == {status}
