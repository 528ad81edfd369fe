"""Event-loop lag probe, in its own process so the scrapers' load does not skew it.

Requests ``/healthz`` every 20 ms over one keep-alive connection for ``--seconds`` and prints the worst and
the 99th-percentile latency in milliseconds as JSON. A handler that does nothing answers as soon as the
exporter's event loop gets to it, so this is an upper bound of the loop's lag (plus loopback HTTP overhead).
"""

from __future__ import annotations

import argparse
import http.client
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    latencies: list[float] = []
    errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            latencies.append((time.perf_counter() - started) * 1000)
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        time.sleep(0.02)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else None
    print(
        json.dumps(
            {"max_ms": latencies[-1] if latencies else None, "p99_ms": p99, "samples": len(latencies), "errors": errors}
        )
    )


if __name__ == "__main__":
    main()
