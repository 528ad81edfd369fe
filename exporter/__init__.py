"""aep-flow-exporter: a Prometheus exporter for Adobe Experience Platform dataflows."""

from __future__ import annotations

__version__ = "0.1.0"
