"""The simulator and exporters over it, for tests: a world whose clock stands still until a test moves it,
a simulator on 127.0.0.1, configs pointing at it, and exporters with fast retries and their own registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from exporter.app import Exporter, Tuning
from exporter.config import (
    AdobeConfig,
    Config,
    DiscoverConfig,
    FlowRef,
    MetricsConfig,
    PollConfig,
    SandboxConfig,
    StateConfig,
)
from exporter.simulator import Credentials, SimClock, Simulator, World
from exporter.simulator.server import API_PREFIX, IMS_PATH
from exporter.values import Secret

DATA = Path(__file__).parent / "data"


@dataclass
class Sim:
    """A running simulator and where it listens."""

    simulator: Simulator
    url: str

    @property
    def world(self) -> World:
        return self.simulator.world


def make_world(**kwargs: Any) -> World:
    """A world whose clock stands still until the test advances it."""
    defaults: dict[str, Any] = {
        "seed": 7,
        "sandboxes": ("prod", "dev"),
        "flows_per_sandbox": 6,
        "history_s": 6 * 3600,
        "clock": SimClock(speed=0),
    }
    return World(**{**defaults, **kwargs})


async def start_sim(world: World, **kwargs: Any) -> tuple[Sim, TestServer]:
    simulator = Simulator(world, **kwargs)
    server = TestServer(simulator.app(), host="127.0.0.1")
    await server.start_server()
    return Sim(simulator, str(server.make_url("")).rstrip("/")), server


def make_config(
    sim_url: str,
    *,
    sandboxes: tuple[str, ...] = ("prod", "dev"),
    discover: bool = True,
    flows: dict[str, list[str]] | None = None,
    state_path: str | None = None,
    secret: str = Credentials().client_secret,
    metrics: MetricsConfig | None = None,
    **poll: Any,
) -> Config:
    """A config for the simulator: discovery (or explicit flows), fast rate limit, no jitter."""
    creds = Credentials()
    poll_defaults: dict[str, Any] = {
        "interval": 60.0,
        "jitter": 0.0,
        "timeout": 5.0,
        "requests_per_second": 1000.0,
        "max_concurrency": 8,
        "retries": 3,
    }
    interval = float(poll.get("interval", poll_defaults["interval"]))
    return Config(
        adobe=AdobeConfig(
            client_id=creds.client_id,
            client_secret=Secret(secret),
            org_id=creds.org_id,
            ims_token_url=f"{sim_url}{IMS_PATH}",
            flow_service_url=f"{sim_url}{API_PREFIX}",
        ),
        sandboxes=tuple(
            SandboxConfig(
                name=name,
                labels={"env": "test"},
                discover=DiscoverConfig(enabled=discover),
                flows=tuple(FlowRef(id=f) for f in (flows or {}).get(name, [])),
                interval=interval,
                jitter=0.0,
            )
            for name in sandboxes
        ),
        poll=PollConfig(**{**poll_defaults, **poll}),
        state=StateConfig(path=state_path),
        metrics=metrics or MetricsConfig(),
    )


def make_exporter(config: Config, *, world: World | None = None) -> Exporter:
    """An exporter with its own registry and near-zero retry backoff (on the world's clock when given)."""
    tuning = Tuning(
        backoff_base=0.01,
        backoff_cap=0.05,
        seed=3,
        self_metrics_ttl=0.0,  # tests read exact values
        event_retries=(0.05, 0.1, 0.2),
    )
    if world is None:
        return Exporter(config, registry=CollectorRegistry(), tuning=tuning)
    return Exporter(config, registry=CollectorRegistry(), tuning=tuning, clock=lambda: world.now_ms() / 1000.0)
