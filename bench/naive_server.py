"""The naive alternative, for comparison: plain prometheus-client ``generate_latest`` on every scrape.

Serves the flows of a state file through the same FlowCollector the exporter uses, registered on a
registry and rendered per request, the way most Python exporters work.
"""

from __future__ import annotations

import argparse

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from exporter.config import LEAN_BUCKETS, MetricsConfig
from exporter.metrics import FlowCollector
from exporter.store import SqliteStore
from exporter.tracker import Tracker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    store = SqliteStore(args.state)
    states, _ = store.load(LEAN_BUCKETS)
    tracker = Tracker(store, sorted({s.sandbox for s in states}))
    tracker.restore(states)
    registry = CollectorRegistry()
    registry.register(FlowCollector(tracker.snapshot, MetricsConfig()))

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
