"""Do two run directories hold the same results? For a change that must not change behaviour:
run the same profile before and after it, then

    python tools/compare_runs.py runs/before runs/after

compares, file by file: the checkpoint's weights (every tensor bit for bit) and its step,
steps history and re-plans; the loss log; every ``embeddings_*.npz`` array; and the metrics
JSON files. Paths and wall times are left out (they name the run directory and the moment);
everything else must be equal. Prints one line per file and exits 0 when all are equal, 1 when
one differs or is missing from one side, 2 on bad input (not a run directory, a damaged file).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from ranking_lib.core.errors import RankingError

# what names the run directory or the moment, not the result (and every key ending in ``_s``: seconds)
VOLATILE = frozenset({"run_dir", "data_dir", "cache_dir", "path", "created", "seconds", "elapsed", "started",
                      "finished", "git"})
CHECKPOINT = "checkpoints/last.pt"


def _strip(value):
    """`value` without the volatile keys (at any depth)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE and not k.endswith("_s")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def compare_checkpoints(a: Path, b: Path) -> str | None:
    import torch

    from ranking_lib.training.checkpoint import read_checkpoint

    ca, cb = read_checkpoint(a), read_checkpoint(b)  # an unreadable one: a one-line CheckpointError
    ma, mb = ca["model"], cb["model"]
    if ma.keys() != mb.keys():
        return f"other tensors ({len(ma)} against {len(mb)})"
    unequal = [k for k in ma if not torch.equal(ma[k], mb[k])]
    if unequal:
        return f"{len(unequal)} of {len(ma)} tensors differ (first {unequal[0]})"
    for key in ("step", "steps_history", "replans", "sampler_seed", "triplets_sha256", "config"):
        if _strip(ca.get(key)) != _strip(cb.get(key)):
            return f"{key} differs"
    return None


def compare_loss_logs(a: Path, b: Path) -> str | None:
    rows = []
    for p in (a, b):
        with open(p, newline="") as f:
            rows.append([{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(f)])
    if len(rows[0]) != len(rows[1]):
        return f"{len(rows[0])} rows against {len(rows[1])}"
    bad = next((i for i, (x, y) in enumerate(zip(*rows)) if x != y), None)
    return None if bad is None else f"row {bad} differs"


def compare_npz(a: Path, b: Path) -> str | None:
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        if sorted(za.files) != sorted(zb.files):
            return f"other arrays ({sorted(za.files)} against {sorted(zb.files)})"
        for k in za.files:
            x, y = za[k], zb[k]
            if x.dtype.kind in "US":  # names (paths of images) may hold the run's own directory
                continue
            if x.shape != y.shape or not np.array_equal(x, y):
                return f"array {k!r} differs"
    return None


def compare_json(a: Path, b: Path) -> str | None:
    x, y = (_strip(json.loads(p.read_text())) for p in (a, b))
    return None if x == y else "differs"


def compared_files(a: Path) -> list[str]:
    names = [CHECKPOINT, "loss_log.csv"]
    names += sorted(p.name for p in a.glob("embeddings_*.npz"))
    names += sorted(p.name for p in a.glob("metrics_*.json"))
    return names


def compare(a: Path, b: Path) -> list[tuple[str, str | None]]:
    """[(file, None when equal else why not)] for every result file of run `a`."""
    out = []
    for name in compared_files(a):
        pa, pb = a / name, b / name
        if not pb.is_file():
            out.append((name, f"missing in {b}"))
            continue
        how = (compare_checkpoints if name == CHECKPOINT else compare_loss_logs if name.endswith(".csv")
               else compare_npz if name.endswith(".npz") else compare_json)
        out.append((name, how(pa, pb)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path, help="a run directory (its files name what is compared)")
    p.add_argument("run_b", type=Path, help="the run directory compared with it")
    args = p.parse_args(argv)
    for d in (args.run_a, args.run_b):
        if not (d / CHECKPOINT).is_file():
            print(f"error: {d} is not a trained run directory (no {CHECKPOINT})", file=sys.stderr)
            return 2
    try:
        results = compare(args.run_a, args.run_b)
    except (RankingError, OSError, ValueError, zipfile.BadZipFile) as e:  # a damaged file: which, in one line
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    for name, why in results:
        print(f"{name}: {'equal' if why is None else why}")
    differ = [n for n, why in results if why is not None]
    print(f"{len(results) - len(differ)} of {len(results)} files equal")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
