"""``python -m exporter``: the same as the ``aep-flow-exporter`` command."""

from __future__ import annotations

import sys

from exporter.cli import main

sys.exit(main())
