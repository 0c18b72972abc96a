"""What the notebooks write into a run directory for notebook 05 to show: the figure file names
(in ``<run_dir>/figures/``) and the metrics table (``<run_dir>/precision_table.csv``, written by
notebook 03 and read back by 05, so the report shows the table 03 built)."""

from __future__ import annotations

from pathlib import Path

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import write_text

FIGURES_DIR = "figures"
CLASS_COUNTS = "class_counts.png"        # 01
SAMPLE_GRID = "sample_grid.png"          # 01
TRIPLETS = "triplets.png"                # 01
LOSS_CURVE = "loss_curve.png"            # 02
PRECISION_BARS = "precision_bars.png"    # 03
LEVERS = "levers.png"                    # 05, from docs/figures/levers.json
ABLATION_OUT_OF_CLASS = "ablation_out_of_class.png"  # 05, from docs/figures/ablation.json
TRADE_OFF = "trade_off.png"  # 05, from docs/figures/ablation.json: class precision against near-duplicate recall
METRICS_TABLE = "precision_table.csv"    # 03 -> 05


def query_figure(i: int) -> str:
    """File name of query example `i` (1-based; 04)."""
    return f"query_{i}.png"


def figure_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / FIGURES_DIR / name


def save_metrics_table(table, run_dir: str | Path) -> Path:
    """Write `tables.metrics_table`'s (model, split) table as CSV, atomically."""
    return write_text(Path(run_dir) / METRICS_TABLE, table.to_csv())


def load_metrics_table(run_dir: str | Path):
    """The table :func:`save_metrics_table` wrote, with its (model, split) index."""
    import pandas as pd

    path = Path(run_dir) / METRICS_TABLE
    if not path.is_file():
        raise RankingError(f"metrics table {path} not found (run notebook 03 first)")
    return pd.read_csv(path, index_col=[0, 1])
