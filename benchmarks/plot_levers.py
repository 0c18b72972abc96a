"""Precision@30 against wall-clock minutes for the recipes measured on full Tiny ImageNet
(2-core CPU): the tuning-split points chose the recipe, the val points are final recipes,
each evaluated once. ``docs/figures/levers.json`` names each point's kept card
(``docs/runs/<card>/card.json``), its split, label and how its minutes were counted; the numbers
are read from the cards. Points whose minutes are stitched from two runs or estimated are drawn
hollow. Writes ``docs/figures/levers.png`` (``make results`` draws it as well).

    python benchmarks/plot_levers.py
"""

from __future__ import annotations

import sys

from ranking_lib.reporting.plots import plot_precision_vs_minutes
from ranking_lib.core.paths import FIGURES
from ranking_lib.reporting.kept import levers_points


def main() -> int:
    points = levers_points()
    plot_precision_vs_minutes(points, FIGURES / "levers.png")
    for p in points:
        kind = f" ({p['kind']})" if p.get("kind") else ""
        print(f"{p['split']:<5} {p['minutes']:6.1f} min  P@30 {p['precision@30']:6.2f}  {p['label']}{kind}  [{p['card']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
