"""`write_benchmark_card`: a benchmark's run card beside its results, kept under ``docs/runs/``.

Repository tooling, not the library: the benchmark scripts import it from their own folder
(``python benchmarks/bench_x.py`` puts that folder first on the path; pytest has it on its
``pythonpath``). The card's parts (machine, git state, portable arguments) are
`ranking_lib.core.runcard`'s, as the pipeline's run cards use them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ranking_lib.core import paths
from ranking_lib.core.fileio import write_bytes, write_json
from ranking_lib.core.runcard import CARD_VERSION, git_state, machine, portable_arg

__all__ = ["card_name", "write_benchmark_card"]


def card_name(script: str, results_path: str | Path) -> str:
    """The kept card's name for `script`'s results: the script's name for its default results
    file (``bench_x.py`` writes ``x.json``), else the script's name and the results' own part, so
    one script keeps several cards (``step_cost_backbone.json`` -> ``bench_step_cost-backbone``,
    ``ablation_fine.json`` -> ``bench_ablation-fine``)."""
    default, stem = script.removeprefix("bench_"), Path(results_path).stem
    own = stem[len(default):].lstrip("_") if stem.startswith(default) else stem
    return script + (f"-{own.replace('_', '-')}" if own else "")


def write_benchmark_card(name: str, results_path: str | Path, argv: list[str] | None = None,
                         *, phases: dict[str, float] | None = None, keep: Path | None = None,
                         script: str | None = None) -> Path:
    """A benchmark's card beside its results (``<results>.card.json``). When the results went
    to the default folder ``benchmarks/results/`` (ignored by git), the results and the card are
    also copied to ``docs/runs/<name>/`` (tracked), so a measurement is never only in an
    ignored folder; results written elsewhere (tests, trials) stay where they were put.
    `script`: the benchmark's file name when the card's `name` is another (one script, several
    kept cards)."""
    results = Path(results_path)
    args = sys.argv[1:] if argv is None else list(argv)
    card = {
        "card_version": CARD_VERSION, "kind": "benchmark", "name": name,
        "command": " ".join(["python", f"benchmarks/{script or name}.py", *map(portable_arg, args)]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "phases": {k: round(v, 1) for k, v in (phases or {}).items()},
        "results": results.name, "machine": machine(), "bf16": None, "git": git_state(), "reconstructed": False,
    }
    path = results.with_name(results.stem + ".card.json")
    write_json(path, card)
    keep_dir = keep
    if keep_dir is None and results.resolve().parent == paths.BENCH_RESULTS.resolve():
        keep_dir = paths.KEPT_RUNS / name
    if keep_dir is not None and results.is_file():
        write_json(keep_dir / "card.json", card)
        write_bytes(keep_dir / results.name, results.read_bytes())
    return path
