"""``python -m ranking_lib verify-run RUN_DIR [--card CARD]``: recompute a run's metrics from its
saved embeddings and triplets and compare them with a run card and with the run's own
``metrics_<model>.json`` files (what the report reads).

The metrics are recomputed by `workflow.evaluate` itself, in a scratch directory that links the
run's files but its metrics and card (the run directory is only read). Every numeric metric the card
holds for a model and split is compared; the tolerance is stated in percentage points
(`DEFAULT_TOLERANCE`; counts such as ``score_at_top_30`` must then match exactly). Recomputed
from the same embeddings the metrics are reproducible to the last digit; embeddings computed on
another machine class (bf16 against fp32, another CPU architecture, a GPU) differ by rounding,
so a kept card of the same recipe is then a comparison, not an identity: the message says so.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import read_json
from ranking_lib.core.names import METRIC_SPLITS, MODELS
from ranking_lib.core.runcard import CARD_NAME, bf16_used, load_card, machine, machine_class

DEFAULT_TOLERANCE = 0.01
"""Percentage points (metrics are percentages)."""

SKIP = ("num_queries", "num_triplets")
RENAMED = {"knn1": "precision@1"}  # older cards: KNN-1 is the nearest neighbour's class = precision@1


@dataclass
class Verification:
    card: Path
    compared: int = 0
    mismatches: list[tuple[str, float, float, Path]] = field(default_factory=list)
    """(model/split/metric, recomputed, recorded, the file that records it: the card or a metrics file)."""
    card_class: str = ""
    this_class: str = ""

    @property
    def same_class(self) -> bool:
        return self.card_class == self.this_class

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not self.mismatches


def _card_path(run_dir: Path, card: str | Path | None) -> Path:
    if card is None:
        return run_dir / CARD_NAME
    p = Path(card)
    return p / (CARD_NAME if (p / CARD_NAME).is_file() else "card.json") if p.is_dir() else p


def recompute(run_dir: str | Path, config: dict, models) -> dict[str, dict]:
    """{model: {split: metrics}} recomputed from `run_dir`'s embeddings by `workflow.evaluate`
    with `config` (its run_dir replaced), in a scratch directory of links to the run's files."""
    from ranking_lib import workflow

    run = Path(run_dir).resolve()
    if not run.is_dir():
        raise RankingError(f"run directory not found: {run}")
    out = {}
    with tempfile.TemporaryDirectory(prefix="verify-run-") as tmp:
        for f in run.iterdir():  # what evaluate reads; what it writes (metrics, the lock) stays out
            if not (f.name.startswith(("metrics_", ".")) or f.name == CARD_NAME):
                (Path(tmp) / f.name).symlink_to(f)
        cfg = RunConfig.from_dict({**config, "run_dir": tmp})
        for m in models:
            out[m] = workflow.evaluate(cfg, m)
    return out


def verify(run_dir: str | Path, card: str | Path | None = None,
           tolerance: float = DEFAULT_TOLERANCE) -> Verification:
    """Compare the card's metrics with those recomputed from `run_dir`."""
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise RankingError(f"--tolerance must be a finite number >= 0 (got {tolerance})")
    run = Path(run_dir)
    path = _card_path(run, card)
    c = load_card(path)
    if c.get("kind") == "benchmark":
        raise RankingError(f"{path} is a benchmark's card: verify-run checks a pipeline run's card")
    config = c.get("config")
    if not config:  # a reconstructed card: the run's own settings (same recipe) recompute its metrics
        saved = run / "config.json"
        if not saved.is_file():
            raise RankingError(f"run card {path} has no config and {saved} is missing: nothing to recompute with")
        config = json.loads(saved.read_text(encoding="utf-8"))
    if not c.get("metrics"):
        raise RankingError(f"run card {path} holds no metrics to compare")
    result = Verification(path, card_class=machine_class(c))
    mach = machine()
    result.this_class = machine_class({"machine": mach, "bf16": bf16_used(config, mach)})
    files = {m: run / f"metrics_{m}.json" for m in MODELS if (run / f"metrics_{m}.json").is_file()}
    fresh = recompute(run, config, list(dict.fromkeys([*c["metrics"], *files])))
    _compare(result, c["metrics"], fresh, tolerance, path)
    for model, f in files.items():  # what the report reads must be what the embeddings give
        saved = read_json(f, "metrics file")
        splits = {s: saved[s] for s in METRIC_SPLITS if isinstance(saved, dict) and isinstance(saved.get(s), dict)}
        _compare(result, {model: splits}, fresh, tolerance, f)
    return result


def _compare(result: Verification, recorded: dict, fresh: dict, tolerance: float, source: Path) -> None:
    """Add to `result` each numeric metric of `recorded` ({model: {split: metrics}}, from
    `source`) compared with `fresh`, and those that differ by more than `tolerance`."""
    for model, splits in recorded.items():
        for split, metrics in splits.items():
            got_split = fresh.get(model, {}).get(split)
            for key, want in metrics.items():
                if key in SKIP or isinstance(want, bool) or not isinstance(want, (int, float)):
                    continue
                name = f"{model}/{split}/{key}"
                got = None if got_split is None else got_split.get(RENAMED.get(key, key))
                if got is None:
                    result.mismatches.append((name, float("nan"), float(want), source))
                    continue
                result.compared += 1
                if not abs(float(got) - float(want)) <= tolerance:
                    result.mismatches.append((name, float(got), float(want), source))


def main_verify(run_dir: str, card: str | None, tolerance: float) -> int:
    """CLI: 0 when every metric matches, 2 with one ``error:`` line when one does not."""
    r = verify(run_dir, card, tolerance)
    if not r.same_class:
        print(f"note: the card was made on {r.card_class}, this machine is {r.this_class}: embeddings computed "
              "on a different machine class may differ by rounding (bf16 against fp32), so the metrics may "
              f"differ by more than {tolerance:g} points")
    if not r.ok:
        if not r.compared and not r.mismatches:
            raise RankingError(f"{r.card}: no metric to compare")
        name, got, want, source = r.mismatches[0]
        more = f" (and {len(r.mismatches) - 1} more)" if len(r.mismatches) > 1 else ""
        what = "the card" if source == r.card else "the file"
        how = "is missing from the recomputed metrics" if got != got else f"is {got:.4f}, {what} says {want:.4f}"
        print(f"error: {run_dir} does not match {source}: {name} {how}, beyond {tolerance:g} points{more}",
              file=sys.stderr)
        return 2
    print(f"verified: {r.compared} metrics of {run_dir} match {r.card} and the run's metrics files within "
          f"{tolerance:g} points ({r.this_class})")
    return 0
