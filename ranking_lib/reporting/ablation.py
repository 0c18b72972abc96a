"""The paper's method, measured: the ablation's rows, its results file, table, figure and the
sentences the report's Improvements section is written from.

Each row is a set of `RunConfig` overrides on one base recipe (the ``cpu`` profile at a reduced
budget, scored on the tuning split); ``benchmarks/bench_ablation.py`` runs them and writes
``benchmarks/results/ablation.json`` (generated, not in git; the measured results the report
reads are copied to ``docs/figures/ablation.json``):

    {"base": {...}, "split": "tune", "hardware": "...", "rows": [
        {"name": ..., "overrides": {...}, "command": "...", "wall_s": ..., "train_s": ...,
         "metrics": {"precision@30": ..., ...}}, ...],
     "val_rows": [{"name": ..., "overrides": {...}, "command": "...", "train_s": ...,
                   "metrics": {...val...}}, ...]}

Rows named ``<row>@equal-time`` repeat a row whose steps cost more than the profile's with its
steps cut so that its training time matches the profile's (``steps`` in their overrides).
``val_rows`` are full-budget runs of a row (the profile's own steps and input size), evaluated on
val once each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import read_json

# name -> (overrides on the base recipe, what the row is)
ROWS: dict[str, tuple[dict, str]] = {
    "course": ({"miner": "none"}, "the course's recipe: pre-sampled out-of-class negatives, no mining"),
    "profile": ({}, "the cpu profile's recipe (batch-hard negatives on top of the pre-sampled ones)"),
    "relevance-1.0": ({"sampler": "relevance", "out_of_class_fraction": 1.0},
                      "relevance-weighted queries and positives, all negatives out-of-class"),
    "relevance-0.5": ({"out_of_class_fraction": 0.5}, "relevance-weighted, half the negatives in-class"),
    "relevance-0.2": ({"out_of_class_fraction": 0.2}, "relevance-weighted, 20 % out-of-class (the paper's best)"),
    "relevance-0.0": ({"out_of_class_fraction": 0.0}, "relevance-weighted, in-class negatives only"),
    "multiscale": ({"architecture": "multiscale"}, "the multiscale network (two shallow 4:1 and 8:1 paths)"),
    "online": ({"triplet_source": "online"}, "online reservoir buffers instead of the pre-sampled file"),
    "instance-0.5": ({"instance_fraction": 0.5, "views_per_image": 2},
                     "half the triplets instance triplets (positive: one of 2 cached views of the query's image)"),
    "distill-1": ({"distill_weight": 1.0}, "within-class relational distillation from the frozen network, weight 1"),
    "distill-5": ({"distill_weight": 5.0}, "within-class relational distillation from the frozen network, weight 5"),
    "graded-0.5": ({"graded_margin": 0.5}, "graded margin: the gap grows by 0.5 x (1 - Wu-Palmer) of the classes"),
    "instance-0.2": ({"instance_fraction": 0.2, "views_per_image": 2},
                     "a fifth of the triplets instance triplets (2 cached views per image)"),
    "instance-0.5+distill-5": ({"instance_fraction": 0.5, "views_per_image": 2, "distill_weight": 5.0},
                               "instance-0.5 and distill-5 together"),
    "instance-0.2+distill-5": ({"instance_fraction": 0.2, "views_per_image": 2, "distill_weight": 5.0},
                               "instance-0.2 and distill-5 together"),
    "instance-0.2+distill-5+graded-0.5": ({"instance_fraction": 0.2, "views_per_image": 2, "distill_weight": 5.0,
                                           "graded_margin": 0.5},
                                          "instance-0.2, distill-5 and graded-0.5 together"),
    "lite1": ({"backbone": "efficientnet_lite1"},
              "EfficientNet-Lite1 backbone (ImageNet top-1 76.7 % against Lite0's 74.9 %; deeper), same frozen stages"),
    "lite2": ({"backbone": "efficientnet_lite2"},
              "EfficientNet-Lite2 backbone (ImageNet top-1 77.4 %; deeper and wider), same frozen stages"),
    "instance-0.5-live": ({"instance_fraction": 0.5, "cache_stage_features": False},
                          "half the triplets instance triplets, views made live (no stage cache)"),
}

COLUMNS = ("precision@1", "precision@10", "precision@30", "map@r", "any_hit@30", "triplet_acc", "score_at_top_30",
           "wup@30", "mistake_wup@30", "semantic_triplet_acc", "near_dup_recall@1", "near_dup_recall@10",
           "near_dup_held_out_recall@1")
SEMANTIC = COLUMNS[7:]
"""Similarity beyond the label (`retrieval.semantic`); tables show them when a row has them."""
SEMANTIC_TITLES = {"wup@30": "WuP@30", "mistake_wup@30": "mistake WuP@30", "semantic_triplet_acc": "WordNet triplet acc",
                   "near_dup_recall@1": "near-dup R@1", "near_dup_recall@10": "near-dup R@10",
                   "near_dup_held_out_recall@1": "held-out near-dup R@1"}
"""`SEMANTIC`'s column titles in documents (`SHORT` has the page-wide ones)."""

# rows measured without a training run of their own (`bench_ablation.py --frozen`)
EXTRA_ROWS = {"frozen": "the frozen pretrained backbone, untrained (`--model baseline` of the profile's run)"}
RESULTS_FILE = "ablation.json"  # bench_ablation.py writes benchmarks/results/<this>; docs/figures/<this> is kept


def load(path: str | Path | None) -> dict | None:
    """The ablation results in `path` (the measured copy: ``docs/figures/ablation.json`` in a
    checkout), or None when none were measured (no path, no file)."""
    data = None if path is None else read_json(path, "ablation results", missing_ok=True)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise RankingError(f"ablation results {path} have no 'rows' list")
    return data


def table(results: dict):
    """pandas DataFrame: one row per measured variant, metrics in % (short titles, `SHORT`),
    score@30 a count, wall time in minutes (``min``)."""
    import pandas as pd

    rows = []
    for r in results["rows"]:
        m = r["metrics"]
        rows.append({"variant": r["name"], **{SHORT[c]: m.get(c, np.nan) for c in _columns(results["rows"])},
                     "min": r["wall_s"] / 60})
    return _with_machine(pd.DataFrame(rows).set_index("variant"), results["rows"], results.get("hardware"))


def machine(hardware: str | None) -> str:
    """A hardware string short enough for a table cell ("2 cores, Intel(R) Xeon(R) Processor" ->
    "2 cores, Intel Xeon")."""
    out = hardware or "not recorded"
    for noise in ("(R)", "(TM)", " Processor", " CPU"):
        out = out.replace(noise, "")
    return " ".join(out.split())


def _with_machine(df, rows: list[dict], default: str | None):
    """`df` with an ``on`` column (the machine's last word) when its rows were measured on more
    than one machine (a row without its own ``hardware`` was measured on the results' ``default``)."""
    machines = [machine(r.get("hardware", default)) for r in rows]
    if len(set(machines)) > 1:  # the last word ("EPYC", "Xeon") keeps the table on the page
        df["on"] = [m.split()[-1] for m in machines]
    return df


# column titles short enough for a page-wide table
SHORT = {"precision@1": "P@1", "precision@10": "P@10", "precision@30": "P@30", "map@r": "MAP@R",
         "any_hit@30": "hit@30", "triplet_acc": "triplet acc", "score_at_top_30": "score@30",
         "wup@30": "WuP@30", "mistake_wup@30": "mistake WuP", "semantic_triplet_acc": "sem. trip",
         "near_dup_recall@1": "dup R@1", "near_dup_recall@10": "dup R@10", "near_dup_held_out_recall@1": "held-out R@1"}

TRADE_OFF = ("precision@30", "near_dup_recall@1", "near_dup_held_out_recall@1", "semantic_triplet_acc",
             "mistake_wup@30")
"""The axes of the Improvements table: class-level, instance-level and WordNet-graded similarity."""


def trade_off_table(results: dict):
    """pandas DataFrame of `TRADE_OFF` (metrics in %) and the minutes of each row (``min``): the
    profile's row first with its values, then every other row as its signed difference from the
    profile (``+1.23``), the frozen backbone among them; an axis the profile lacks is left out."""
    import pandas as pd

    ref = row(results, "profile")
    if ref is None:
        return None
    axes = [c for c in TRADE_OFF if c in ref["metrics"]]
    out = [{"option": "profile", **{SHORT[c]: f"{ref['metrics'][c]:.2f}" for c in axes},
            "min": f"{ref['wall_s'] / 60:.1f}"}]
    for r in results["rows"]:
        if r["name"] == "profile":
            continue
        m = r["metrics"]
        out.append({"option": r["name"], **{SHORT[c]: f"{m[c] - ref['metrics'][c]:+.2f}" if c in m else "-"
                                             for c in axes},
                    "min": f"{r['wall_s'] / 60:.1f}"})
    return pd.DataFrame(out).set_index("option")


def plot_trade_off(results: dict, path=None, x: str = "precision@30", y: str = "near_dup_recall@1"):
    """Class-level precision@30 against near-duplicate recall@1, one labelled point per row that has
    both; the frozen backbone marked apart (a grey square), the profile in red."""
    from ranking_lib.reporting.plots import finish, new_figure

    fig = new_figure((6.4, 3.6))
    ax = fig.add_subplot()
    points = [(r["name"], r["metrics"][x], r["metrics"][y]) for r in results["rows"]
              if x in r["metrics"] and y in r["metrics"]]
    for name, px, py in points:
        frozen = name in EXTRA_ROWS
        ax.scatter([px], [py], s=46, marker="s" if frozen else "o", zorder=3,
                   color="tab:gray" if frozen else "tab:red" if name == "profile" else "tab:blue")
    ax.set_xlabel(f"{SHORT.get(x, x)} (class level, %)")
    ax.set_ylabel(f"{SEMANTIC_TITLES.get(y, y)} (%)")
    ax.set_title(f"{results.get('split', 'tune')} split; {results.get('budget', '')}", fontsize=8)
    ax.grid(alpha=0.3)
    _place_labels(ax, [(name + (" (untrained)" if name in EXTRA_ROWS else ""), px, py) for name, px, py in points])
    return finish(fig, path)


# where a point's label may go, in points from it: right above, right below, left above, left below
LABEL_SPOTS = ((5, 4, "left"), (5, -10, "left"), (-5, 4, "right"), (-5, -10, "right"))


def _place_labels(ax, labels: list[tuple[str, float, float]]) -> None:
    """Each label at the first spot of `LABEL_SPOTS` where it overlaps no label placed before it,
    no other point and leaves the axes nowhere (the first spot when none is free)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(ax.figure).get_renderer()  # text sizes as drawn (the figure has no canvas yet)
    box = ax.get_window_extent(renderer)
    dots = [ax.transData.transform((px, py)) for _, px, py in labels]
    placed = []
    for i, (text, px, py) in enumerate(labels):
        def free(ext) -> bool:
            return (not any(ext.overlaps(b) for b in placed)
                    and not any(ext.contains(*d) for j, d in enumerate(dots) if j != i)
                    and box.contains(ext.x0, ext.y0) and box.contains(ext.x1, ext.y1))

        for n, (dx, dy, ha) in enumerate((*LABEL_SPOTS, LABEL_SPOTS[0])):  # nowhere free: the first spot
            note = ax.annotate(text, (px, py), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7)
            ext = note.get_window_extent(renderer)
            if n == len(LABEL_SPOTS) or free(ext):
                placed.append(ext)
                break
            note.remove()


def measured_columns(columns, rows: list[dict]) -> list[str]:
    """The `columns` some row measured (a column added later is left out of older sweeps' tables)."""
    return [c for c in columns if any(c in r["metrics"] for r in rows)]


def _columns(rows: list[dict]) -> tuple[str, ...]:
    """`COLUMNS`, the semantic ones only when some row has them (rows measured before them stay as
    they were)."""
    return tuple(c for c in COLUMNS if c not in SEMANTIC or c in measured_columns(SEMANTIC, rows))


EQUAL_TIME = "@equal-time"


def describe(name: str) -> str:
    """What a row is (``<row>@equal-time`` rows: their row's description, at equal training time)."""
    base = name.removesuffix(EQUAL_TIME)
    what = ROWS.get(base, ({}, EXTRA_ROWS.get(base, "")))[1]
    return f"{what}, steps cut to the profile's training time" if name.endswith(EQUAL_TIME) else what


def override_flags(overrides: dict) -> list[str]:
    """The CLI flags of a row's `RunConfig` overrides (``{"miner": "none"}`` -> ``--miner none``;
    booleans as ``--name`` / ``--no-name``)."""
    out = []
    for k, v in overrides.items():
        name = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(name if v else "--no-" + k.replace("_", "-"))
        else:
            out += [name, str(v)]
    return out


def commands(results: dict) -> str:
    """Markdown: the command of every measured row (the reduced-budget rows as the shared base
    command plus each row's flags; the full-budget val rows in full)."""
    base = results.get("base_command", "python -m ranking_lib STEP ...").replace(" --quiet", "")
    base = base.replace("python -m ranking_lib STEP", "python -m ranking_lib all", 1)
    rows = "; ".join(f"**{r['name']}** `{' '.join(override_flags(r['overrides']) + model_flag(r)) or '(none)'}`"
                     for r in results["rows"])
    out = [f"Commands. Every reduced-budget row is `{base} --run-dir runs/ablation/ROW` plus its flags: {rows}."]
    if results.get("val_rows"):
        out.append("Full-budget val rows: " + "; ".join(f"**{r['name']}** `{r['command']}`"
                                                        for r in results["val_rows"]) + ".")
    return "\n\n".join(out)


def model_flag(r: dict) -> list[str]:
    """``--model baseline`` for a row that evaluated the untrained network (`EXTRA_ROWS`)."""
    return ["--model", r["model"]] if r.get("model", "trained") != "trained" else []


def row(results: dict, name: str, key: str = "rows") -> dict | None:
    return next((r for r in results.get(key, []) if r["name"] == name), None)


def val_table(results: dict):
    """pandas DataFrame of the full-budget val rows (None when there are none): metrics in %,
    score@30 a count, training time in minutes (``train min``)."""
    import pandas as pd

    if not results.get("val_rows"):
        return None
    rows = [{"variant": r["name"], **{SHORT[c]: r["metrics"].get(c, np.nan) for c in _columns(results["val_rows"])},
             "train min": r["train_s"] / 60} for r in results["val_rows"]]
    return _with_machine(pd.DataFrame(rows).set_index("variant"), results["val_rows"], results.get("hardware"))


def out_of_class_curve(results: dict) -> list[tuple[float, float]]:
    """(out_of_class_fraction, precision@30) of the relevance rows, by fraction."""
    pts = [(float(r["overrides"]["out_of_class_fraction"]), r["metrics"]["precision@30"])
           for r in results["rows"] if r["name"].startswith("relevance-")]
    return sorted(pts)


def plot_out_of_class(results: dict, path=None):
    """Precision@30 against the share of out-of-class negatives (the paper's Fig. 6, redone)."""
    from ranking_lib.reporting.plots import finish, new_figure

    pts = out_of_class_curve(results)
    fig = new_figure((5.0, 3.2))
    ax = fig.add_subplot(111)
    if pts:
        x, y = zip(*pts)
        ax.plot(x, y, "o-", label="relevance-weighted sampling")
    for name, style in (("profile", "--"), ("course", ":")):
        r = row(results, name)
        if r:
            ax.axhline(r["metrics"]["precision@30"], ls=style, color="gray", label=f"{name} (uniform sampling)")
    ax.set_xlabel("share of out-of-class negatives")
    ax.set_ylabel(f"{results.get('split', 'tune')} precision@30 (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return finish(fig, path)


def findings(results: dict, per_row: bool = True) -> str:
    """Markdown sentences from the measured rows: each variant against the profile's row (a bullet
    per row; ``per_row=False`` leaves them to `trade_off_table` and keeps the verdicts)."""
    ref = row(results, "profile")
    if ref is None:
        return "The ablation has no `profile` row to compare against."
    split = results.get("split", "tune")
    p30 = ref["metrics"]["precision@30"]
    out = [f"Measured on {results.get('data', 'data not recorded')} ({results.get('budget', '')}; {split} split; "
           f"{results.get('hardware', 'hardware not recorded')}). Against the profile's "
           f"{split} precision@30 of {p30:.2f} %:"]
    if not per_row:
        out[0] = out[0].replace("Against the profile's", "The table below gives each option against the profile's")
        out[0] = out[0].rstrip(":") + (" on every axis (the profile's values, then each option's difference in points) "
                                       "and the figure places each on class precision against near-duplicate recall.")
    for r in results["rows"] if per_row else ():
        if r["name"] == "profile":
            continue
        d = r["metrics"]["precision@30"] - p30
        verdict = "better" if d > 0.5 else "worse" if d < -0.5 else "no clear difference"
        steps = f"{r['overrides']['steps']:,} steps, " if "steps" in r["overrides"] else ""
        where = (f" on {machine(r['hardware'])}" if r.get("hardware", results.get("hardware")) != results.get("hardware")
                 else "")
        graded = "; ".join(f"{SHORT[c]} {r['metrics'][c] - ref['metrics'][c]:+.2f}" for c in SEMANTIC
                           if c in r["metrics"] and c in ref["metrics"])
        out.append(f"* **{r['name']}** ({describe(r['name'])}): {r['metrics']['precision@30']:.2f} % "
                   f"({d:+.2f} points, {verdict}; {steps}{r['wall_s'] / 60:.1f} min{where})"
                   + (f"; beyond the label: {graded} points." if graded else "."))
    best = max(results["rows"], key=lambda r: r["metrics"]["precision@30"])
    lead = best["metrics"]["precision@30"] - p30
    if lead > 0.5:
        out.append(f"\nBest at this budget: **{best['name']}**.")
    else:
        out.append(f"\nNo variant beats the profile by more than half a point at this budget "
                   f"(highest: {best['name']}, {lead:+.2f} points): the profile keeps its recipe.")
    axes = [c for c in SEMANTIC if sum(c in r["metrics"] for r in results["rows"]) > 1]
    if axes:
        wins = []
        for c in axes:
            top = max((r for r in results["rows"] if c in r["metrics"]), key=lambda r: r["metrics"][c])
            wins.append(f"{SHORT[c]}: **{top['name']}** ({top['metrics'][c]:.2f} %)")
        out.append("Highest on each axis beyond the label (" + split + "): " + "; ".join(wins) + ".")
    val = {r["name"]: r for r in results.get("val_rows", [])}
    if val:
        parts = [f"**{n}** {r['metrics']['precision@30']:.2f} % ({r['train_s'] / 60:.0f} min of training"
                 + (f", {machine(r['hardware'])})" if r.get("hardware") else ")") for n, r in val.items()]
        out.append(f"\nAt the full budget ({results.get('val_budget', 'the profile as it is')}), val precision@30, "
                   f"measured once per row: " + "; ".join(parts) + ".")
        if "profile" in val and "course" in val:
            gain = val["profile"]["metrics"]["precision@30"] - val["course"]["metrics"]["precision@30"]
            out.append(f"Batch-hard mining adds {gain:+.2f} points of val precision@30 over the course's recipe.")
    return "\n".join(out)


def every_axis(results: dict) -> str:
    """Markdown: which row is highest on each axis (class-level precision@30 and `SEMANTIC`), on
    the tuning split (``rows``) and on val (``tuned_val_rows``: the same run dirs evaluated with val
    on, once), then each row against the profile's row on val, axis by axis."""
    axes = ("precision@30", *SEMANTIC)
    out = [f"Every axis, one sweep ({results.get('budget', 'budget not recorded')}; "
           f"{results.get('hardware', 'hardware not recorded')}; the same run dirs on tune and, once, on val):"]
    for key, split in (("rows", "tune"), ("tuned_val_rows", "val")):
        rows = results.get(key) or []
        wins = []
        for c in axes:
            have = [r for r in rows if c in r["metrics"]]
            best = max((r["metrics"][c] for r in have), default=None)
            tied = [r["name"] for r in have if r["metrics"][c] == best]
            if len(have) > 1 and len(tied) < len(have):  # all equal: no winner on that axis
                wins.append(f"{SHORT[c]} **{' = '.join(tied)}** ({best:.2f})")
        if wins:
            out.append(f"* highest on {split}: " + "; ".join(wins) + ".")
    ref = row(results, "profile", "tuned_val_rows")
    for r in results.get("tuned_val_rows") or []:
        if ref is None or r is ref:
            continue
        deltas = "; ".join(f"{SHORT[c]} {r['metrics'][c] - ref['metrics'][c]:+.2f}" for c in axes
                           if c in r["metrics"] and c in ref["metrics"])
        out.append(f"* **{r['name']}** minus the profile, val: {deltas} points ({describe(r['name'])}).")
    return "\n".join(out)
