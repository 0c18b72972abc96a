"""The measured results the checkout keeps, read back: run cards (``docs/runs/<name>/card.json``)
and benchmark JSON (``docs/figures/``). The report quotes them (`report.measured_levers`,
`report.reference_commands`); ``tools/results.py`` renders RESULTS.md's and the README's tables
from them. An installed package has none (`paths.checkout_file`)."""

from __future__ import annotations

import json
from pathlib import Path

from ranking_lib.core.fileio import read_json
from ranking_lib.core.paths import FIGURES, KEPT_RUNS, REPO


def card(name: str, runs: Path = KEPT_RUNS) -> dict:
    return read_json(runs / name / "card.json", "kept run card")


def figure_json(name: str, figures: Path = FIGURES) -> dict:
    return read_json(figures / name, "results file")


def metrics(c: dict, model: str, split: str) -> dict:
    return ((c.get("metrics") or {}).get(model) or {}).get(split) or {}


ABSOLUTE = ((str(REPO) + "/", ""), ("--cache-dir /work/data/cache", "--cache-dir <cache>"),
            ("=/work/exp/cache-final", "=<empty dir>"), ("/work/data/", "data/"), ("/work/exp/", "runs/"))


def relative(command: str) -> str:
    """A command as the documentation shows it: the checkout, the data and the run folders of the
    machine it ran on made repository-relative (the kept JSON holds the commands as they ran)."""
    for a, b in ABSOLUTE:
        command = command.replace(a, b)
    return command


def levers_points(path: Path | None = None) -> list[dict]:
    """The points of the precision-against-minutes figure, values read from their cards:
    ``docs/figures/levers.json`` names each point's card, split and label. A point whose
    minutes are stitched from two runs or estimated gets ``kind`` (drawn hollow)."""
    spec = figure_json("levers.json") if path is None else json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for p in spec["points"]:
        c = card(p["card"])
        m = metrics(c, "trained", p["split"])
        drawn = {**p, "precision@30": m["precision@30"], "minutes": c["wall_s"] / 60}
        kind = "stitched" if "wall_s" in c.get("stitched", []) else "estimated" if "wall_s" in c.get("estimated", []) else None
        if kind:
            drawn["kind"] = kind
        out.append(drawn)
    return out
