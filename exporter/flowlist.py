"""Which flows a sandbox has for this exporter: the configured ids read in pages of ``ID_BATCH``, the flows
discovery accepts (by kind and name), this shard's share of them, capped at ``metrics.max_flows_per_sandbox``;
and, for ``check-config --online``, what the credential can see at all (a ``Survey``).

Every item of a ``/flows`` answer goes through model.py; one that cannot be read is logged once and left out,
never allowed to stop the listing of the others.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from exporter.checks import clean_text
from exporter.client import FlowServiceClient
from exporter.config import MetricsConfig, SandboxConfig, ShardConfig
from exporter.errors import ApiError, AuthError, ExporterError, TransportError
from exporter.hints import hint_for
from exporter.logs import OnceLog
from exporter.model import Flow, parse_flow
from exporter.selfmetrics import SelfMetrics

log = structlog.get_logger(__name__)

ID_BATCH = 100


def shard_of(sandbox: str, flow_id: str, total: int) -> int:
    """The shard that owns a flow: the same in every process and version (not Python's salted hash)."""
    digest = hashlib.sha256(f"{sandbox}/{flow_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % total


@dataclass(frozen=True, kw_only=True)
class Survey:
    """What the credential can see in one sandbox (``check-config --online``): flows by kind, how many discovery
    would track, configured ids not found; or why it could not look."""

    sandbox: str
    kinds: Mapping[str, int] = field(default_factory=dict)
    discovered: int = 0
    missing: tuple[str, ...] = ()
    error: str = ""  # why the sandbox could not be listed, with Adobe's code and what to do
    problem: str = ""  # the same in a few words, for a table cell


def _in_words(exc: ExporterError) -> tuple[str, str]:
    """(a few words, the whole reason) for a sandbox that could not be listed; no Python class names."""
    text = clean_text(str(exc), 600)
    if isinstance(exc, ApiError):
        found = hint_for(exc.status, exc.code)
        return (found.problem if found else f"HTTP {exc.status}"), text
    if isinstance(exc, TransportError):
        return f"no answer ({exc.reason})", text
    if isinstance(exc, AuthError):
        return "token refused", text
    return "unreadable answer", text


class FlowLister:
    """Lists one sandbox's flows, as its config asks."""

    def __init__(
        self,
        *,
        sandbox: SandboxConfig,
        metrics: MetricsConfig,
        shard: ShardConfig,
        client: FlowServiceClient,
        self_metrics: SelfMetrics,
        once: OnceLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sandbox = sandbox
        self.name = sandbox.name
        self.metrics = metrics
        self.shard = shard
        self._client = client
        self._metrics = self_metrics
        self._once = once
        self._clock = clock

    async def tracked(self) -> tuple[list[Flow], list[str]]:
        """Every flow to track (discovered and configured), and configured ids the API does not know."""
        sandbox = self.sandbox
        found = await self._discover() if sandbox.discover.enabled else {}
        explicit = [ref.id for ref in sandbox.flows if ref.id not in found]
        for i in range(0, len(explicit), ID_BATCH):
            batch = explicit[i : i + ID_BATCH]
            wanted = set(batch)
            params = [("property", "id==" + ",".join(batch))]
            async for items in self._client.pages(sandbox.name, "flows", "/flows", params):
                found.update((flow.id, flow) for flow in self._parse_flows(items) if flow.id in wanted)
        missing = [ref.id for ref in sandbox.flows if ref.id not in found]
        return list(found.values()), missing

    async def _discover(self) -> dict[str, Flow]:
        """The sandbox's flows that discovery's kinds and name patterns accept."""
        discover = self.sandbox.discover
        kinds = set(discover.kinds)
        params: list[tuple[str, str]] = []
        if kinds == {"source"}:
            params.append(("property", "inheritedAttributes.properties.isSourceFlow==true"))
        elif kinds == {"destination"}:
            params.append(("property", "inheritedAttributes.properties.isDestinationFlow==true"))
        found: dict[str, Flow] = {}
        async for items in self._client.pages(self.name, "flows", "/flows", params):
            for flow in self._parse_flows(items):
                kind_ok = flow.kind in kinds or (flow.kind == "unknown" and len(kinds) == 2)
                if kind_ok and discover.accepts(flow.name):
                    found[flow.id] = flow
        return found

    async def survey(self) -> Survey:
        """List every flow of the sandbox once (no state touched); a failure is reported, never raised."""
        flows: dict[str, Flow] = {}
        try:
            async for items in self._client.pages(self.name, "flows", "/flows", []):
                flows.update((flow.id, flow) for flow in self._parse_flows(items))
        except ExporterError as exc:
            problem, error = _in_words(exc)
            return Survey(sandbox=self.name, error=error, problem=problem)
        discover = self.sandbox.discover
        return Survey(
            sandbox=self.name,
            kinds=Counter(flow.kind for flow in flows.values()),
            discovered=sum(
                1
                for f in flows.values()
                if discover.enabled and discover.accepts(f.name) and (f.kind in discover.kinds or f.kind == "unknown")
            ),
            missing=tuple(ref.id for ref in self.sandbox.flows if ref.id not in flows),
        )

    def _parse_flows(self, items: Iterable[object]) -> list[Flow]:
        flows = []
        now_ms = int(self._clock() * 1000)
        for item in items:
            try:
                flow = parse_flow(item, now_ms)
            except ExporterError as exc:
                flow_id = item.get("id") if isinstance(item, dict) else None
                if self._once.first(self.name, "flow_payload", str(flow_id), str(exc)):
                    log.warning(
                        "flow_payload_invalid", sandbox=self.name, flow_id=clean_text(str(flow_id), 64), error=str(exc)
                    )
                continue
            flows.append(flow)
            if flow.invalid_fields and self._once.first(self.name, flow.id, "flow_fields", *flow.invalid_fields):
                log.warning("flow_values_invalid", sandbox=self.name, flow_id=flow.id, fields=list(flow.invalid_fields))
        return flows

    def select(self, flows: list[Flow]) -> tuple[dict[Flow, dict[str, str]], int]:
        """This shard's flows, capped at ``max_flows_per_sandbox``, each with its static labels; and how many
        were dropped by the cap."""
        shard, cap = self.shard, self.metrics.max_flows_per_sandbox
        mine = sorted(
            (f for f in flows if shard.total == 1 or shard_of(self.name, f.id, shard.total) == shard.index),
            key=lambda f: f.id,
        )
        dropped = max(0, len(mine) - cap)
        self._metrics.flows_dropped.labels(self.name).set(dropped)
        if dropped and self._once.first(self.name, "flows_dropped", str(dropped)):
            log.warning(
                "flows_dropped",
                sandbox=self.name,
                dropped=dropped,
                limit=cap,
                hint="raise metrics.max_flows_per_sandbox or shard the exporter",
            )
        return {f: self.sandbox.labels_for(f.id) for f in mine[:cap]}, dropped
