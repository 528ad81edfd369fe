"""A faithful fake of Adobe IMS and the Flow Service, so anyone can run the exporter without an Adobe account."""

from __future__ import annotations

from exporter.simulator.server import Credentials, Faults, Simulator
from exporter.simulator.world import SimClock, World

__all__ = ["Credentials", "Faults", "SimClock", "Simulator", "World"]
