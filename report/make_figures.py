"""The figures and tables of notebooks 01-04 for a finished run, without Jupyter.

    python report/make_figures.py --run-dir runs/gpu-full

After ``python -m ranking_lib all`` (which trains, embeds and evaluates but draws nothing), this
writes into the run directory what the notebooks 01-04 would have written for the report
notebook 05: ``figures/`` (class counts, sample grid, triplets, loss curve, precision bars, the
query examples), ``class_counts.csv``, ``precision_table.csv``, ``semantic_table.csv`` and
``query_examples.json``, with the same functions and file names (``ranking_lib.reporting``).
With ``--html`` (Jupyter, papermill and nbconvert installed) the report notebook 05 is then
executed on them, as ``report/run_pipeline.py`` would, and converted to ``report.html``; the
run's ``run_card.json`` is left as ``all`` wrote it. Exit status: 0 done, 2 bad input (one
``error: ...`` line), 3 the report notebook or its conversion failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranking_lib.core.config import RunConfig  # noqa: E402
from ranking_lib.core.errors import RankingError  # noqa: E402


def data_figures(cfg: RunConfig, caches: dict) -> None:
    """Notebook 01: class counts (table and figure), a sample grid, four training triplets."""
    from ranking_lib import workflow
    from ranking_lib.core import fileio
    from ranking_lib.reporting import outputs, plots, tables

    train, val = caches["train"], caches["val"]
    counts = tables.class_counts_table(train.class_names, train.labels, val.labels, wnids=train.wnids)
    fileio.write_text(workflow.run_path(cfg, "class_counts.csv"), counts.to_csv(index=False))
    plots.plot_class_counts(train.class_names, counts["train"], counts["val"],
                            path=outputs.figure_path(cfg.run_dir, outputs.CLASS_COUNTS))
    plots.plot_sample_grid(train.images, train.labels, train.class_names, per_class=8, max_classes=10,
                           seed=cfg.seed, path=outputs.figure_path(cfg.run_dir, outputs.SAMPLE_GRID))
    t = workflow.load_run_triplets(cfg, "train", len(train))[:4]
    names = [tuple(train.class_names[train.labels[i]] for i in row) for row in t]
    plots.plot_triplets(train.images[t[:, 0]], train.images[t[:, 1]], train.images[t[:, 2]], names,
                        path=outputs.figure_path(cfg.run_dir, outputs.TRIPLETS))


def training_figure(cfg: RunConfig) -> None:
    """Notebook 02: the loss curve."""
    from ranking_lib import workflow
    from ranking_lib.reporting import outputs, plots

    log = workflow.load_loss_log(cfg)
    plots.plot_loss_curve(log["step"], log["loss"], smooth=0.9 if len(log) < 500 else 0.98, gap=cfg.gap,
                          path=outputs.figure_path(cfg.run_dir, outputs.LOSS_CURVE))


def metrics_figures(cfg: RunConfig) -> None:
    """Notebook 03, from the metrics `evaluate` wrote: precision table and bars, semantic table."""
    from ranking_lib import workflow
    from ranking_lib.core import fileio
    from ranking_lib.reporting import outputs, plots, tables

    metrics = {m: fileio.read_json(workflow.run_path(cfg, f"metrics_{m}.json"), "metrics file",
                                   " (run the 'evaluate' step)") for m in workflow.MODELS}
    table = tables.metrics_table({(m, s): metrics[m][s] for m in workflow.MODELS
                                  for s in workflow.METRIC_SPLITS if s in metrics[m]})
    outputs.save_metrics_table(table, cfg.run_dir)
    plots.plot_precision_bars(table, path=outputs.figure_path(cfg.run_dir, outputs.PRECISION_BARS))
    semantic = tables.semantic_table({(m, s): metrics[m][s] for m in workflow.MODELS
                                      for s in ("tune", "val") if s in metrics[m]}, k=max(cfg.ks))
    if semantic is not None:
        fileio.write_text(workflow.run_path(cfg, "semantic_table.csv"), semantic.to_csv())


def query_figures(cfg: RunConfig, caches: dict) -> None:
    """Notebook 04: top-k of a few val images (query_examples.json and one figure each)."""
    from ranking_lib import workflow
    from ranking_lib.core import fileio
    from ranking_lib.reporting import outputs, plots

    train, val = caches["train"], caches["val"]
    results = workflow.query(cfg, workflow.select_query_examples(cfg), k=cfg.top_k_show)
    fileio.write_json(workflow.run_path(cfg, "query_examples.json"), [r.to_dict() for r in results])
    for i, r in enumerate(results, 1):
        plots.plot_query(r, val.images[r.query_index], train, path=outputs.figure_path(cfg.run_dir, outputs.query_figure(i)),
                         title=f"Query {i}: {Path(r.query_path).name} ({plots.short_name(r.query_class, 24)})   "
                               "green frame = same class, red = other class")


def make_figures(run_dir: str | Path) -> list[Path]:
    """Everything notebooks 01-04 draw and tabulate, for the run in `run_dir`; the figures written."""
    import matplotlib

    matplotlib.use("Agg")
    from ranking_lib import workflow
    from ranking_lib.core.fileio import read_json
    from ranking_lib.reporting import outputs

    run = Path(run_dir)
    saved = read_json(run / "config.json", "run config", " (run python -m ranking_lib all first)")
    cfg = RunConfig.from_dict({**saved, "run_dir": str(run)})
    caches = workflow.load_caches(cfg, progress=False)
    data_figures(cfg, caches)
    training_figure(cfg)
    metrics_figures(cfg)
    query_figures(cfg, caches)
    return sorted((run / outputs.FIGURES_DIR).glob("*.png"))


def build_html(run_dir: str | Path, profile: str = "gpu") -> Path:
    """Execute notebook 05 on the run (its settings: the run's config.json) and write report.html."""
    from ranking_lib.core.fileio import read_json
    from report import run_pipeline as rp

    run = Path(run_dir).resolve()
    saved = read_json(run / "config.json", "run config", " (run python -m ranking_lib all first)")
    params = {"profile": profile, "overrides": {**saved, "run_dir": str(run)}}
    rp.kernel_env(None)
    rp.ensure_kernel()
    executed = run / "notebooks" / rp.REPORT_NOTEBOOK
    executed.parent.mkdir(parents=True, exist_ok=True)
    rp.execute(rp.NOTEBOOK_DIR / rp.REPORT_NOTEBOOK, executed, params, log_output=False, timeout=None)
    return rp.build_report(executed, run, pdf=False, show_code=False, title=None)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a run that `python -m ranking_lib all` finished")
    p.add_argument("--html", action="store_true", help="then execute notebook 05 and write report.html (needs "
                                                        "Jupyter, papermill and nbconvert)")
    p.add_argument("--profile", default="gpu", help="the profile notebook 05 is given (its settings come from the "
                                                    "run's config.json; default gpu)")
    args = p.parse_args(argv)
    try:
        written = make_figures(args.run_dir)
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} figures in {Path(args.run_dir) / 'figures'}")
    if args.html:
        try:
            print(f"wrote {build_html(args.run_dir, args.profile)}")
        except Exception as e:  # noqa: BLE001 - papermill's, nbconvert's or the notebook's error, in one line
            msg = str(e).strip().splitlines()
            print(f"error: report.html not built: {type(e).__name__}: {msg[0] if msg else ''}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
