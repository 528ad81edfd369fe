"""The simulator's HTTP face: Adobe IMS, the Flow Service, fault injection and an admin API for tests.

Which Adobe page each behaviour follows:
- IMS: "OAuth Server-to-Server credential API Reference" (the form-encoded client_credentials request, the
  ``{"access_token", "token_type": "bearer", "expires_in"}`` answer, ``expires_in`` in seconds).
- Headers, the run and flow objects: "Monitor dataflows using the Flow Service API" and the "Flow Service API"
  reference (``x-api-key``, ``x-gw-ims-org-id``, ``x-sandbox-name``; ``{"items", "_links"}`` envelopes).
- ``property`` filters (``==`` with several values, ``>``, ``<``, ``>=``, ``<=``, ``[]`` array paths), ``orderby``
  (``-`` descending; ``+`` or nothing ascending), ``count``: "Sorting and filtering responses in the Flow Service
  API"; ``limit`` and ``continuationToken``: the "Flow Service API" reference.
- Error codes and their shapes: "Flow Service Error Messages" (``1401-400`` limit with count, ``1440-400`` and
  ``1450-400`` operators, ``1448-400`` "Operator >= not supported for field", ``2105-400`` missing sandbox header,
  ``2100-404`` sandbox not found, ``2120-403`` forbidden); the gateway's ``{"error_code", "message"}`` as Adobe's
  gateway answers (``401013`` for a bad token).
- Where Adobe is silent (whether ``/runs`` honours a ``createdAt`` filter, its default order, where runs without
  ``createdAt`` are listed), each plausible answer is a switch in :class:`Faults`.

Routes (all on one port):
- ``POST /ims/token/v3``: client-credentials tokens, checked against the configured id and secret.
- ``GET /data/foundation/flowservice/{flows,runs}[/{id}]``: the Flow Service, with its headers, errors,
  filters, ordering, page limits and continuation tokens.
- ``/_sim/...``: ground truth, clock, faults, request counts, flow controls (see ``admin routes`` below).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import random
import secrets
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from exporter.simulator.events import JOURNAL_PATH, SimEvents
from exporter.simulator.query import (
    MAX_LIMIT,
    QueryError,
    make_token,
    matches,
    parse_filter,
    query_digest,
    read_token,
    sort_items,
)
from exporter.simulator.world import World

API_PREFIX = "/data/foundation/flowservice"
IMS_PATH = "/ims/token/v3"


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """What the simulated IMS accepts (the defaults are what ``demo`` configures)."""

    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"  # noqa: S105 -- the simulator's well-known demo secret
    org_id: str = "SIMULATED000000000000000@AdobeOrg"


@dataclass
class Faults:
    """Switchable failure modes; rates are probabilities per API request, drawn from a seeded RNG."""

    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: str | None = None
    latency_s: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 0.0
    malformed_rate: float = 0.0
    truncate_rate: float = 0.0
    ims_down: bool = False
    forbidden_sandboxes: list[str] = field(default_factory=list)
    failing_flows: list[str] = field(default_factory=list)  # /runs of these flows answers 500
    # How /runs treats time filters and order, as Adobe might (no public source says which):
    # "honour"; "refuse": a createdAt filter or order gets a 400 (Adobe's error shape `refuse_shape`, "platform"
    # or "gateway"); "refuse_time": every time filter does (startedAtUTC too); "ignore": time filters and orderby
    # are ignored and runs come back in no particular order.
    runs_filters: str = "honour"
    refuse_shape: str = "platform"
    omit_created_at: float = 0.0  # this share of runs carry no createdAt (half of them no updatedAt either)
    # Where a listing puts runs without createdAt, and its order without orderby: Adobe documents neither (its
    # "Sorting and filtering responses in the Flow Service API" page shows orderby, never the default), so each
    # plausible answer is a switch: "interleaved" (in the service's own creation order), "first" or "last" (as a
    # database sorting a missing key does); "newest_first" or "oldest_first".
    missing_created_at: str = "interleaved"
    default_order: str = "newest_first"
    # Flows whose payloads carry hostile values that must change no counter: a lone surrogate in the name and in
    # error messages, counts of 10^400 and 1e400 in fields the run does not report, a lastRunDetails end in the
    # year 33658, and 3,000 activities per run.
    hostile_flows: list[str] = field(default_factory=list)
    # Flows carrying an access label the credential's role lacks (Adobe's "Apply access labels to sources
    # dataflows" page): nobody without the label can view them or their runs, so /flows and /runs leave them
    # out, and GET /flows/{id} answers the page's 404 FLOW-1439-404 "Resource not found", as for a missing flow.
    labelled_flows: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scripted:
    """One queued answer: the next request to ``endpoint`` (or any, with ``*``) gets ``status``."""

    endpoint: str
    status: int
    retry_after: str | None = None
    delay_s: float = 0.0
    body: str | bytes | None = None  # served as is (any status, 200 included)
    headers: tuple[tuple[str, str], ...] = ()


def _gateway_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error_code": code, "message": message}, status=status)


RUNS_FILTER_MODES = ("honour", "refuse", "refuse_time", "ignore")
MISSING_CREATED_AT_PLACES = ("interleaved", "first", "last")
DEFAULT_ORDERS = ("newest_first", "oldest_first")
_TIME_PATHS = ("createdAt", "metrics.durationSummary.startedAtUTC")


def _share(run_id: str, salt: str) -> float:
    """A stable number in [0, 1) for a run: which runs lose a field, and where an unordered listing puts them."""
    return int(hashlib.sha256(f"{salt}:{run_id}".encode()).hexdigest()[:8], 16) / 2**32


def _hostile_flow(flow: dict[str, Any]) -> dict[str, Any]:
    """A flow payload with values no counter depends on made hostile (see Faults.hostile_flows)."""
    flow = {**flow, "name": flow["name"] + " \ud800\x07"}
    if "lastRunDetails" in flow and "completedAtUTC" in flow["lastRunDetails"]:
        flow["lastRunDetails"] = {**flow["lastRunDetails"], "completedAtUTC": 1_000_000_000_000_000}
    return flow


def _hostile_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run payload made hostile without changing what it reports (see Faults.hostile_flows)."""
    run = copy.deepcopy(run)
    metrics = run["metrics"]
    records = metrics.get("recordSummary")
    if records is not None:
        absent = [k for k in ("warningRecordCount", "skippedRecordCount") if k not in records]
        for key, huge in zip(absent, (10**400, float("inf")), strict=False):
            records[key] = huge  # 10^400 as an integer literal, and 1e400 (which JSON readers take as infinity)
    for error in metrics["statusSummary"].get("errors", []):
        error["message"] = "bad \ud800 message"
    run["activities"] = run.get("activities", []) + [
        {"id": f"extra-{i}", "name": f"Hostile Activity {i}", "statusSummary": {"status": "success"}}
        for i in range(3000)
    ]
    return run


def _platform_error(status: int, code: str, title: str) -> web.Response:
    body = {
        "type": f"https://ns.adobe.com/aep/errors/FLOW-{code}",
        "title": title,
        "status": status,
        "report": {"detailed-message": title},
        "error-chain": [{"serviceId": "FLOW", "errorCode": code}],
    }
    return web.json_response(body, status=status)


class Simulator:
    """Serves a :class:`World` as Adobe would, with faults on demand and counts of every request."""

    def __init__(
        self,
        world: World,
        *,
        credentials: Credentials | None = None,
        faults: Faults | None = None,
        token_lifetime_s: float = 86399.0,
        seed: int = 1,
    ) -> None:
        self.world = world
        self.credentials = credentials or Credentials()
        self.faults = faults or Faults()
        self.token_lifetime_s = token_lifetime_s
        self.rng = random.Random(seed)
        self.tokens: dict[str, float] = {}
        self.requests: Counter[str] = Counter()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=20_000)
        self.scripted: deque[Scripted] = deque()
        self.faults_injected: Counter[str] = Counter()
        self.events = SimEvents(world, client_id=self.credentials.client_id, org_id=self.credentials.org_id, seed=seed)
        # Payloads served exactly as given, beside the world's (the conformance suite replays Adobe's examples):
        self.fixture_flows: dict[str, list[dict[str, Any]]] = {}  # sandbox -> flow objects
        self.fixture_runs: dict[str, list[dict[str, Any]]] = {}  # flow id -> run objects

    # --- test and admin controls -------------------------------------------------------------------------

    def fail_next(
        self,
        endpoint: str,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        delay_s: float = 0.0,
        body: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue ``times`` answers with ``status`` for the next requests to ``endpoint`` (``*`` = any); with
        ``body``, that body (and ``headers``) exactly, whatever the status."""
        for _ in range(times):
            self.scripted.append(Scripted(endpoint, status, retry_after, delay_s, body, tuple((headers or {}).items())))

    def revoke_tokens(self) -> None:
        """Every token issued so far becomes invalid (as when an admin rotates the credential)."""
        self.tokens.clear()

    def reset_counts(self) -> None:
        self.requests.clear()
        self.request_log.clear()

    # --- the application -----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(IMS_PATH, self._token)
        app.router.add_get(f"{API_PREFIX}/flows", self._list_flows)
        app.router.add_get(f"{API_PREFIX}/flows/{{id}}", self._get_flow)
        app.router.add_get(f"{API_PREFIX}/runs", self._list_runs)
        app.router.add_get(f"{API_PREFIX}/runs/{{id}}", self._get_run)
        app.router.add_get("/_sim/truth", self._truth)
        app.router.add_get("/_sim/requests", self._requests)
        app.router.add_post("/_sim/requests/reset", self._reset_requests)
        app.router.add_post("/_sim/advance", self._advance)
        app.router.add_get("/_sim/faults", self._get_faults)
        app.router.add_post("/_sim/faults", self._set_faults)
        app.router.add_post("/_sim/fail-next", self._fail_next)
        app.router.add_post("/_sim/revoke", self._revoke)
        app.router.add_get("/_sim/flows", self._flow_ids)
        app.router.add_post("/_sim/trigger", self._trigger)
        app.router.add_post("/_sim/flows/{id}/status", self._force_status)
        app.router.add_post("/_sim/flows/{id}/state", self._set_state)
        app.router.add_get(JOURNAL_PATH, self._journal)
        app.router.add_get("/prod/keys/{name}", self.events.public_key)
        app.cleanup_ctx.append(self.events.deliver_loop)
        app.router.add_get("/", self._index)
        return app

    async def _journal(self, request: web.Request) -> web.StreamResponse:
        """The events journal, for a valid token and API key (as Adobe I/O Events asks)."""
        self.requests["journal"] += 1
        self.request_log.append(
            {"endpoint": "journal", "path": request.path, "query": request.query_string, "sandbox": None}
        )
        auth = request.headers.get("Authorization", "")
        expiry = self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if expiry is None or expiry < time.time():
            return _gateway_error(401, "401013", "Oauth token is not valid")
        if request.headers.get("x-api-key") != self.credentials.client_id:
            return _gateway_error(403, "403003", "Api Key is invalid")
        return await self.events.journal(request)

    def _take_scripted(self, endpoint: str) -> Scripted | None:
        for i, item in enumerate(self.scripted):
            if item.endpoint in (endpoint, "*"):
                del self.scripted[i]
                return item
        return None

    async def _fault(self, endpoint: str) -> web.StreamResponse | None:
        """An injected failure for this request, or None to answer normally."""
        faults = self.faults
        scripted = self._take_scripted(endpoint)
        if scripted is not None:
            self.faults_injected[f"scripted_{scripted.status}"] += 1
            if scripted.delay_s:
                await asyncio.sleep(scripted.delay_s)
            headers = {"Retry-After": scripted.retry_after} if scripted.retry_after else {}
            headers.update(scripted.headers)
            if scripted.body is not None:
                body = scripted.body.encode() if isinstance(scripted.body, str) else scripted.body
                return web.Response(status=scripted.status, body=body, headers=headers, content_type="application/json")
            if scripted.status == 200:
                return None
            if scripted.status == 429:
                return web.json_response(
                    {"error_code": "429050", "message": "Too many requests"}, status=429, headers=headers
                )
            return web.json_response(
                {"error_code": str(scripted.status), "message": "Injected failure"},
                status=scripted.status,
                headers=headers,
            )
        if endpoint == "token":
            if faults.ims_down:
                self.faults_injected["ims_down"] += 1
                return web.Response(status=503, text="IMS unavailable")
            return None
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if faults.slow_rate and self.rng.random() < faults.slow_rate:
            self.faults_injected["slow"] += 1
            await asyncio.sleep(faults.slow_s)
        if faults.throttle_rate and self.rng.random() < faults.throttle_rate:
            self.faults_injected["throttle"] += 1
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return web.json_response(
                {"error_code": "429050", "message": "Too many requests"}, status=429, headers=headers
            )
        if faults.error_rate and self.rng.random() < faults.error_rate:
            self.faults_injected["server_error"] += 1
            return web.json_response(
                {"error_code": "500", "message": "Injected server error"}, status=self.rng.choice((500, 502, 503))
            )
        return None

    def _check_headers(self, request: web.Request) -> web.Response | str:
        """The sandbox name when the request carries valid credentials and headers, else the error answer."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        expiry = self.tokens.get(token)
        if not token or expiry is None or expiry < time.time():
            return _gateway_error(401, "401013", "Oauth token is not valid")
        if request.headers.get("x-api-key") != self.credentials.client_id:
            return _gateway_error(403, "403003", "Api Key is invalid")
        if request.headers.get("x-gw-ims-org-id") != self.credentials.org_id:
            return _gateway_error(403, "403027", "User is not part of the IMS organization")
        sandbox = request.headers.get("x-sandbox-name")
        if not sandbox:
            return _platform_error(400, "2105-400", "Missing x-sandbox-name header")
        if sandbox in self.faults.forbidden_sandboxes:
            self.faults_injected["forbidden"] += 1
            return _platform_error(403, "2120-403", "You do not have sufficient permissions to perform the operation")
        if sandbox not in self.world.flows:
            return _platform_error(404, "2100-404", f"The sandbox with the name '{sandbox}' could not be found")
        return sandbox

    async def _api(self, request: web.Request, endpoint: str) -> web.StreamResponse | str:
        self.requests[endpoint] += 1
        self.request_log.append(
            {
                "endpoint": endpoint,
                "path": request.path,
                "query": request.query_string,
                "sandbox": request.headers.get("x-sandbox-name"),
            }
        )
        fault = await self._fault(endpoint)
        if fault is not None:
            return fault
        return self._check_headers(request)

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """JSON, or (by fault draw) malformed JSON or a connection cut mid-body."""
        faults = self.faults
        if faults.malformed_rate and self.rng.random() < faults.malformed_rate:
            self.faults_injected["malformed"] += 1
            return web.Response(text='{"items": [{"id": ', content_type="application/json")
        if faults.truncate_rate and self.rng.random() < faults.truncate_rate:
            self.faults_injected["truncated"] += 1
            data = web.json_response(body).body
            assert isinstance(data, bytes)  # noqa: S101 -- json_response always has bytes
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: max(1, len(data) // 2)])
            if request.transport is not None:
                request.transport.close()
            return resp
        return web.json_response(body)

    # --- IMS -----------------------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.requests["token"] += 1
        fault = await self._fault("token")
        if fault is not None:
            return fault
        form = await request.post()
        creds = self.credentials
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("client_id") != creds.client_id:
            return web.json_response(
                {"error": "invalid_client", "error_description": "invalid client_id parameter"}, status=400
            )
        if form.get("client_secret") != creds.client_secret:
            return web.json_response(
                {"error": "invalid_client", "error_description": "invalid client_secret"}, status=401
            )
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_lifetime_s
        lifetime = self.token_lifetime_s
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": int(lifetime) if lifetime >= 1 else lifetime}
        )

    # --- Flow Service --------------------------------------------------------------------------------------

    async def _list(self, request: web.Request, endpoint: str, items_for: Any) -> web.StreamResponse:
        checked = await self._api(request, endpoint)
        if not isinstance(checked, str):
            return checked
        try:
            filters = [parse_filter(v) for v in request.query.getall("property", [])]
            orderby = request.query.get("orderby")
            if request.query.get("count") == "true":
                if "limit" in request.query:
                    raise QueryError("1401-400", "count cannot be combined with limit")
                return await self._answer(request, {"count": len(items_for(checked, filters))})
            limit = min(int(request.query.get("limit", str(MAX_LIMIT))), MAX_LIMIT)
            if limit < 1:
                raise QueryError("1401-400", "limit must be positive")
            digest = query_digest(filters, orderby)
            token = request.query.get("continuationToken")
            offset = read_token(token, digest) if token else 0
        except QueryError as exc:
            return _platform_error(400, exc.code, str(exc))
        except ValueError:
            return _platform_error(400, "1401-400", "limit must be an integer")
        if endpoint == "runs":
            refused = self._refused_runs_query(filters, orderby)
            if refused is not None:
                return refused
            if self.faults.runs_filters == "ignore":
                filters = [f for f in filters if f.path not in _TIME_PATHS]
                items = sorted(items_for(checked, filters), key=lambda r: _share(r["id"], "order"))
            else:
                items = self._placed(self._ordered_runs(items_for(checked, filters), orderby))
        else:
            items = sort_items(items_for(checked, filters), orderby)
        page = items[offset : offset + limit]
        links: dict[str, Any] = {}
        if offset + limit < len(items):
            links["next"] = {"href": f"/{endpoint}?continuationToken={make_token(offset + limit, digest)}"}
        return await self._answer(request, {"items": page, "_links": links})

    def _flow_items(self, sandbox: str, filters: list[Any]) -> list[dict[str, Any]]:
        now = self.world.now_ms()
        ids = next((set(f.values) for f in filters if f.path == "id" and f.op == "=="), None)
        flows = [f for f in self.world.sandbox_flows(sandbox, ids) if f.id not in self.faults.labelled_flows]
        items = [
            _hostile_flow(f.to_json(now)) if f.id in self.faults.hostile_flows else f.to_json(now) for f in flows
        ] + self.fixture_flows.get(sandbox, [])
        return [item for item in items if matches(item, filters)]

    def _run_items(self, sandbox: str, filters: list[Any]) -> list[dict[str, Any]]:
        """Matching runs, newest first by the service's own creation time (which a payload may not show)."""
        now = self.world.now_ms()
        ids = next((set(f.values) for f in filters if f.path == "flowId" and f.op == "=="), None)
        if self.faults.runs_filters == "ignore":
            filters = [f for f in filters if f.path not in _TIME_PATHS]
        flows = [f for f in self.world.sandbox_flows(sandbox, ids) if f.id not in self.faults.labelled_flows]
        created_floor = min(
            (
                float(f.values[0])
                for f in filters
                if f.path == "createdAt" and f.op in (">", ">=") and f.values[0].lstrip("-").isdigit()
            ),
            default=None,
        )
        runs = sorted(
            (r for f in flows for r in f.visible_runs(now) if created_floor is None or r.created_ms >= created_floor),
            key=lambda r: r.created_ms,
            reverse=True,
        )
        fixtures = [
            run for flow_id, items in self.fixture_runs.items() if ids is None or flow_id in ids for run in items
        ]
        return [item for item in [*fixtures, *(self._run_json(r, now) for r in runs)] if matches(item, filters)]

    def _run_json(self, run: Any, now_ms: int) -> dict[str, Any]:
        item: dict[str, Any] = run.to_json(now_ms)
        if run.flow_id in self.faults.hostile_flows:
            item = _hostile_run(item)
        share = self.faults.omit_created_at
        if share and _share(run.id, "created") < share:
            item = dict(item)  # the run's own payload is shared (world.SimRun.to_json)
            del item["createdAt"]
            if _share(run.id, "updated") < 0.5:
                del item["updatedAt"]
        return item

    def _refused_runs_query(self, filters: list[Any], orderby: str | None) -> web.Response | None:
        """Adobe's 400 for a time filter or order it does not support (in the refusing modes)."""
        mode = self.faults.runs_filters
        if mode not in ("refuse", "refuse_time"):
            return None
        paths = ("createdAt",) if mode == "refuse" else _TIME_PATHS
        bad = [f"{f.path}{f.op}" for f in filters if f.path in paths]
        if orderby and orderby.lstrip("+-") in paths:
            bad.append(f"orderby={orderby}")
        if not bad:
            return None
        self.faults_injected["refused_filter"] += 1
        message = f"Operator {bad[0]} not supported for field {bad[0].rstrip('<>=')}"
        if self.faults.refuse_shape == "gateway":
            return _gateway_error(400, "400002", message)
        return _platform_error(400, "1448-400", message)

    def _ordered_runs(self, items: list[dict[str, Any]], orderby: str | None) -> list[dict[str, Any]]:
        """Runs in the order asked for ("Sorting and filtering responses in the Flow Service API": ``-`` descending,
        ``+`` or nothing ascending), or in the default order (``Faults.default_order``)."""
        if orderby == "-createdAt" or (orderby is None and self.faults.default_order == "newest_first"):
            return items  # already newest first by the service's own time
        if orderby in (None, "createdAt", "+createdAt"):
            return items[::-1]
        return sort_items(items, orderby)

    def _placed(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Runs without createdAt where ``Faults.missing_created_at`` puts them."""
        place = self.faults.missing_created_at
        if place == "interleaved":
            return items
        dated = [i for i in items if "createdAt" in i]
        undated = [i for i in items if "createdAt" not in i]
        return undated + dated if place == "first" else dated + undated

    async def _list_flows(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "flows", self._flow_items)

    async def _list_runs(self, request: web.Request) -> web.StreamResponse:
        if self.faults.failing_flows:
            asked = {
                v
                for p in request.query.getall("property", [])
                if p.startswith("flowId==")
                for v in p[len("flowId==") :].split(",")
            }
            if asked & set(self.faults.failing_flows):
                self.requests["runs"] += 1
                self.faults_injected["failing_flow"] += 1
                return web.json_response({"error_code": "500", "message": "Injected flow failure"}, status=500)
        return await self._list(request, "runs", self._run_items)

    async def _get_one(self, request: web.Request, endpoint: str, items: list[dict[str, Any]]) -> web.StreamResponse:
        if not items:
            return _platform_error(404, "1404-404", f"{endpoint} {request.match_info['id']} not found")
        return await self._answer(request, {"items": items})

    async def _get_flow(self, request: web.Request) -> web.StreamResponse:
        checked = await self._api(request, "flow")
        if not isinstance(checked, str):
            return checked
        wanted = request.match_info["id"]
        now = self.world.now_ms()
        items = [
            f.to_json(now)
            for f in self.world.sandbox_flows(checked)
            if f.id == wanted and f.id not in self.faults.labelled_flows
        ]
        if not items:  # missing or labelled: the same answer ("Apply access labels to sources dataflows")
            return _platform_error(404, "1439-404", "Resource not found")
        return await self._get_one(request, "flow", items)

    async def _get_run(self, request: web.Request) -> web.StreamResponse:
        checked = await self._api(request, "run")
        if not isinstance(checked, str):
            return checked
        wanted = request.match_info["id"]
        now = self.world.now_ms()
        items = [
            self._run_json(r, now)
            for f in self.world.sandbox_flows(checked)
            for r in f.visible_runs(now)
            if r.id == wanted
        ]
        return await self._get_one(request, "run", items)

    # --- admin routes --------------------------------------------------------------------------------------

    async def _truth(self, _request: web.Request) -> web.Response:
        return web.json_response(self.world.truth())

    async def _requests(self, _request: web.Request) -> web.Response:
        return web.json_response({"requests": dict(self.requests), "faults_injected": dict(self.faults_injected)})

    async def _reset_requests(self, _request: web.Request) -> web.Response:
        self.reset_counts()
        return web.json_response({"ok": True})

    async def _advance(self, request: web.Request) -> web.Response:
        self.world.clock.advance(float(request.query.get("seconds", "0")))
        return web.json_response({"now_ms": self.world.now_ms()})

    async def _get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    async def _set_faults(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            faults = Faults(**{**asdict(self.faults), **data})
        except TypeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if (
            faults.runs_filters not in RUNS_FILTER_MODES
            or faults.refuse_shape not in ("platform", "gateway")
            or faults.missing_created_at not in MISSING_CREATED_AT_PLACES
            or faults.default_order not in DEFAULT_ORDERS
        ):
            return web.json_response(
                {
                    "error": f"runs_filters must be one of {RUNS_FILTER_MODES}, refuse_shape "
                    f"platform or gateway, missing_created_at one of "
                    f"{MISSING_CREATED_AT_PLACES}, default_order one of {DEFAULT_ORDERS}"
                },
                status=400,
            )
        self.faults = faults
        return web.json_response(asdict(self.faults))

    async def _fail_next(self, request: web.Request) -> web.Response:
        q = request.query
        self.fail_next(
            q.get("endpoint", "*"),
            int(q.get("status", "500")),
            times=int(q.get("times", "1")),
            retry_after=q.get("retry_after"),
        )
        return web.json_response({"queued": len(self.scripted)})

    async def _flow_ids(self, _request: web.Request) -> web.Response:
        return web.json_response({sb: sorted(flows) for sb, flows in self.world.flows.items()})

    async def _trigger(self, request: web.Request) -> web.Response:
        chosen = self.world.trigger_runs(
            float(request.query.get("fraction", "0.05")),
            duration_s=float(request.query.get("duration", "1")),
            seed=int(request.query.get("seed", "0")),
        )
        return web.json_response({"flows": chosen})

    async def _revoke(self, _request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.json_response({"ok": True})

    async def _force_status(self, request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        try:
            self.world.force_status(request.match_info["id"], status)
        except KeyError:
            return web.json_response({"error": "no such flow"}, status=404)
        return web.json_response({"ok": True})

    async def _set_state(self, request: web.Request) -> web.Response:
        try:
            self.world.set_state(request.match_info["id"], request.query.get("state", "disabled"))
        except KeyError:
            return web.json_response({"error": "no such flow"}, status=404)
        return web.json_response({"ok": True})

    async def _index(self, _request: web.Request) -> web.Response:
        flows = sum(len(f) for f in self.world.flows.values())
        return web.Response(
            text=f"AEP Flow Service simulator: {len(self.world.flows)} sandboxes, {flows} flows.\n"
            f"IMS: {IMS_PATH}  Flow Service: {API_PREFIX}  Truth: /_sim/truth\n"
        )
