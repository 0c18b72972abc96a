"""Precision@30 against wall-clock minutes for the recipes measured on full Tiny ImageNet
(2-core CPU): the tuning-split points chose the recipe, the val points are final recipes,
each evaluated once. Reads ``docs/figures/levers.json`` (each point with its command, split,
minutes and how the minutes were counted; the numbers come from RESULTS.md) and writes
``docs/figures/levers.png``.

    python benchmarks/plot_levers.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ranking_lib.reporting.plots import plot_precision_vs_minutes

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "figures"


def main() -> int:
    points = json.loads((RESULTS / "levers.json").read_text())["points"]
    plot_precision_vs_minutes(points, RESULTS / "levers.png")
    for p in points:
        print(f"{p['split']:<5} {p['minutes']:6.1f} min  P@30 {p['precision@30']:6.2f}  {p['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
