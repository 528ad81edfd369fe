"""Copy the shipped rules file and dashboards into the chart (aep-flow-exporter/files/), which Helm can only read
from inside the chart, so the chart's PrometheusRule and dashboard ConfigMaps are the shipped ones.

    python deploy/helm/sync_files.py

The test suite fails when the chart's copies differ from the shipped files (tests/test_helm.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FILES = HERE / "aep-flow-exporter" / "files"


def main() -> None:
    shutil.copyfile(ROOT / "deploy" / "prometheus" / "rules" / "aep-flows.rules.yml", FILES / "aep-flows.rules.yml")
    boards = FILES / "dashboards"
    for old in boards.glob("*.json"):
        old.unlink()
    for board in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        shutil.copyfile(board, boards / board.name)


if __name__ == "__main__":
    main()
