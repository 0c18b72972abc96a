"""The tables of RESULTS.md and the README, rendered from the kept run cards (``docs/runs/``) and
the benchmarks' JSON (``docs/figures/``); the prose around them stays hand-written.

A table sits between two markers, and only what is between them is rewritten::

    <!-- results:NAME -->
    | ... rendered ... |
    <!-- /results:NAME -->

``make results`` (``python tools/results.py``) rewrites every marked table and
draws the figures (``docs/figures/levers.png``, ``docs/figures/ablation_out_of_class.png``) from
the same files; ``--check`` only compares and exits 1 naming the first table that differs
(``tests/test_results.py`` runs it). Tables whose numbers have no card are not marked; RESULTS.md
says so above each of them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import write_text
from ranking_lib.core.paths import FIGURES, KEPT_RUNS, REPO
from ranking_lib.core.runcard import machine_class
from ranking_lib.reporting.kept import card, figure_json, levers_points, metrics, relative

RUNS = KEPT_RUNS
DOCS = ("README.md", "RESULTS.md")
MARKER = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)
DASH = "–"


# ---- formatting ----------------------------------------------------------------------------
def f2(v, digits: int = 2) -> str:
    return DASH if v is None else f"{float(v):.{digits}f}"


def n0(v) -> str:
    return DASH if v is None else f"{float(v):,.0f}"


def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header, align, rows) -> str:
    return "\n".join([row(header), "|" + "|".join(align) + "|", *(row(r) for r in rows)])


def score(m: dict) -> str:
    s, n = m.get("score_at_top_30"), m.get("score_at_top_30_counted")
    if s is None:
        return DASH
    return f"{s:,} of {n:,}" if n is not None else f"{s:,}"


def card_ref(name: str, c: dict) -> str:
    return f"[`{name}`](docs/runs/{name}/card.json)" + (" (reconstructed)" if c.get("reconstructed") else "")


# ---- tables --------------------------------------------------------------------------------
METRIC_COLS = ("triplet_acc", "precision@1", "precision@10", "precision@30", "any_hit@30", "r_precision", "map@r")
TITLES = {"triplet_acc": "triplet acc", "precision@1": "P@1", "precision@10": "P@10", "precision@30": "**P@30**",
          "any_hit@30": "any-hit@30", "r_precision": "R-precision", "map@r": "MAP@R"}


def _present(rows: list[dict], cols) -> list[str]:
    """The columns some row has (R-precision is absent from cards written before it existed)."""
    return [k for k in cols if any(k in m for m in rows)]


def split_table(c: dict, trained: str, baseline: str, with_score: bool) -> str:
    """model | split | metrics ... of a run's trained and baseline models on train and val."""
    entries = [(trained, "trained", "train"), (trained, "trained", "**val**"),
               (baseline, "baseline", "train"), (baseline, "baseline", "val")]
    ms = [metrics(c, model, split.strip("*")) for _, model, split in entries]
    cols = _present(ms, METRIC_COLS)
    header = ["model", "split", *(TITLES[k] for k in cols)] + (["score@top-30"] if with_score else [])
    rows = []
    for (label, _, split), m in zip(entries, ms):
        cells = [label, split, *(f"**{f2(m.get(k))}**" if k == "precision@30" and split == "**val**"
                                 else f2(m.get(k)) for k in cols)]
        rows.append(cells + ([score(m) if split != "train" else DASH] if with_score else []))
    return table(header, ["---"] * len(header), rows)


def t_cpu_final() -> str:
    return split_table(card("cpu-192-bf16-12k"), "ranking-trained (12,000 steps)", "frozen pretrained backbone, 192 px",
                       with_score=True)


BUDGET_CARD = "cpu-budget40-clean"
AVX2_CARD = "cpu-budget85-zen3"  # the profile's whole-pipeline budget, measured on an AVX2-only CPU


def budget_table(name: str, budget: str) -> str:
    """A budgeted `cpu` run (tuning split, re-ranking chosen on tune): trained and frozen
    networks on every split, with the query-time re-ranking each used."""
    c = card(name)
    steps = (c.get("train_summary") or {}).get("steps")
    entries = [(f"ranking-trained ({steps:,} steps, {budget})", "trained", s) for s in ("train", "tune", "val")]
    entries += [("frozen pretrained backbone, 192 px", "baseline", s) for s in ("tune", "val")]
    ms = [metrics(c, model, split) for _, model, split in entries]
    cols = _present(ms, METRIC_COLS)
    header = ["model", "split", "search", *(TITLES[k] for k in cols), "score@top-30"]
    rows = []
    for (label, model, split), m in zip(entries, ms):
        val_p30 = model == "trained" and split == "val"
        rows.append([label, f"**{split}**" if val_p30 else split, m.get("rerank") or "exact",
                     *(f"**{f2(m.get(k))}**" if k == "precision@30" and val_p30 else f2(m.get(k)) for k in cols),
                     score(m) if split != "train" else DASH])
    return table(header, ["---"] * len(header), rows)


def t_cpu_budget() -> str:
    return budget_table(BUDGET_CARD, "budget 40 min")


def t_cpu_budget_avx2() -> str:
    return budget_table(AVX2_CARD, "budget 85 min end to end")


XEON_CARD = "cpu-budget85-xeon-quiet"  # the profile as committed, whole-pipeline budget, native-bf16 Xeon, alone
LOADED_CARD = "cpu-budget85-xeon-loaded"  # the same with a known load (one core, 10 min) started half-way
LITE2_CARD = "cpu-budget85-lite2-epyc"  # the capacity sweep's best backbone (Lite2) at the full budget, val once
LITE2_REPLAN_CARD = "cpu-budget85-lite2-replan-epyc"  # the same recipe again, the plan scaled by Lite2's measured costs


def t_cpu_budget_xeon() -> str:
    return budget_table(XEON_CARD, "budget 85 min end to end")


def t_budget_check() -> str:
    """The whole-pipeline budget against what each kept run took: end to end, the training loop
    against its plan, the evaluation against its estimate, and the schedule's moves."""
    rows = []
    for name, label in ((XEON_CARD, "`cpu`, native-bf16 Xeon, quiet"),
                        (LOADED_CARD, "`cpu`, native-bf16 Xeon, one core taken for 10 min half-way"),
                        (LITE2_CARD, "`cpu` + Lite2 backbone, native-bf16 EPYC, quiet, the plan at Lite0's costs"),
                        (LITE2_REPLAN_CARD, "`cpu` + Lite2 backbone, native-bf16 EPYC, quiet, the plan at Lite2's measured "
                                            "costs (same recipe, second run)"),
                        (FINE_CARD, "`cpu` + instance-0.2 + distill-5, native-bf16 Xeon, not alone")):
        c = card(name)
        b = c.get("budget_check")
        if not b:
            raise RankingError(f"run card {name} has no budget_check (a card from before the budget was checked)")
        over = 100 * (b["wall_s"] - b["budget_s"]) / b["budget_s"]
        rows.append([label, f"{b['budget_s'] / 60:.0f} min", f"{b['wall_s'] / 60:.1f} min ({over:+.1f} %)",
                     f"{b['training_loop_s']:,.0f} s of {b['training_planned_s']:,.0f} s",
                     f"{b['evaluation_s']:,.0f} s of {b['evaluation_estimate_s']:,.0f} s",
                     n0(b.get("replans")), card_ref(name, c)])
    header = ["run (full data, from an empty cache)", "budget", "end to end", "training loop (planned)",
              "evaluation (estimate)", "re-plans", "card"]
    return table(header, ["---", "---:", "---:", "---:", "---:", "---:", "---"], rows)


def t_semantic_budget(name: str = BUDGET_CARD) -> str:
    """Every axis of a budgeted `cpu` run: class-level P@30 and the similarity beyond the label."""
    c = card(name)
    cols = [("precision@30", "P@30"), ("wup@30", "WuP@30"), ("mistake_wup@30", "mistake WuP@30"),
            ("mistake_wup_chance", "chance"), ("semantic_triplet_acc", "WordNet triplet acc"),
            ("near_dup_recall@1", "near-dup R@1"), ("near_dup_recall@10", "near-dup R@10")]
    rows = []
    for label, model in (("ranking-trained (cpu profile)", "trained"), ("frozen pretrained backbone", "baseline")):
        for split in ("tune", "val"):
            m = metrics(c, model, split)
            rows.append([label, split, m.get("rerank") or "exact", *(f2(m.get(k)) for k, _ in cols)])
    return table(["model", "split", "P@30 search", *(t for _, t in cols)], ["---", "---", "---"] + ["---:"] * len(cols), rows)


FINE_CARD = "cpu-budget85-inst02-distill5"  # the fine-grained sweep's chosen point at the full budget (#33)
FINE_FULL = ((BUDGET_CARD, "`cpu` profile, training 40 min (native bf16 EPYC)"),
             (AVX2_CARD, "`cpu` profile, budget 85 min end to end (AVX2-only EPYC)"),
             (XEON_CARD, "`cpu` profile, budget 85 min end to end (native bf16 Xeon)"),
             (LOADED_CARD, "`cpu` profile, budget 85 min end to end, a 10-min load half-way (native bf16 Xeon)"),
             (FINE_CARD, "`cpu` + instance-0.2 + distill-5, budget 85 min end to end (native bf16 Xeon)"))
CEILING_FULL = ((BUDGET_CARD, "`cpu` profile (Lite0), training 40 min (native bf16 EPYC)"),
                (XEON_CARD, "`cpu` profile (Lite0), budget 85 min end to end (native bf16 Xeon)"),
                (LOADED_CARD, "`cpu` profile (Lite0), budget 85 min, a 10-min load half-way (native bf16 Xeon)"),
                (LITE2_CARD, "`cpu` + `--set backbone=efficientnet_lite2`, budget 85 min end to end (native bf16 EPYC)"),
                (LITE2_REPLAN_CARD, "the same, its plan at Lite2's measured costs (native bf16 EPYC; the recipe's "
                                    "second run, a timing check)"))


def t_fine_full(rows=FINE_FULL) -> str:
    """Val, full data, every axis: the profile's budgeted runs and the fine-grained option chosen on
    tune, each at its full budget, and the frozen backbone of the option's run."""
    cols = [("precision@30", "P@30"), ("near_dup_recall@1", "near-dup R@1"),
            ("near_dup_held_out_recall@1", "held-out R@1"), ("semantic_triplet_acc", "WordNet triplet acc"),
            ("mistake_wup@30", "mistake WuP@30")]
    out = []
    for name, label in rows:
        c = card(name)
        steps = (c.get("train_summary") or {}).get("steps")
        m = metrics(c, "trained", "val")
        out.append([label, f"{steps:,}" if steps else DASH, _wall(c), m.get("rerank") or "exact",
                    *(f2(m.get(k)) for k, _ in cols), card_ref(name, c)])
    c = card(rows[-1][0])
    m = metrics(c, "baseline", "val")
    out.append(["frozen pretrained backbone (of the run above)", DASH, DASH, m.get("rerank") or "exact",
                *(f2(m.get(k)) for k, _ in cols), card_ref(rows[-1][0], c)])
    header = ["run (val)", "steps", "end to end", "P@30 search", *(t for _, t in cols), "card"]
    return table(header, ["---", "---:", "---:", "---"] + ["---:"] * len(cols) + ["---"], out)


def t_ceiling_full() -> str:
    return t_fine_full(CEILING_FULL)


def t_cpu_earlier() -> str:
    return split_table(card("cpu-128-fp32-20k"), "ranking-trained (20,000 steps)",
                       "frozen pretrained backbone (1280-d pooled)", with_score=False)


def _wall(c: dict) -> str:
    s = c["wall_s"]
    cache = ", from an empty cache" if c.get("empty_cache") else ""
    return f"{s / 60:.0f} min ({s:,.0f} s{cache})"


def t_headline() -> str:
    """The README's results table: val metrics of the headline runs, each with its card."""
    final, earlier, course = card("cpu-192-bf16-12k"), card("cpu-128-fp32-20k"), card("course-192-bf16-12k")
    budget, avx2, xeon, lite2 = card(BUDGET_CARD), card(AVX2_CARD), card(XEON_CARD), card(LITE2_CARD)
    lite2b = card(LITE2_REPLAN_CARD)
    spec = [
        ("frozen pretrained backbone, 128 px", "– (no training), 2-core CPU", DASH, earlier, "baseline", "cpu-128-fp32-20k"),
        ("frozen pretrained backbone, 192 px", "– (no training), 2-core CPU", DASH, final, "baseline", "cpu-192-bf16-12k"),
        ("ranking-trained, 128 px fp32, 20,000 steps", "earlier `cpu` profile, 2-core CPU", _wall(earlier), earlier,
         "trained", "cpu-128-fp32-20k"),
        ("ranking-trained, 192 px bf16, 12,000 steps, course recipe (no mining)",
         "`cpu --miner none`, 2-core CPU (Intel Xeon)", _wall(course), course, "trained", "course-192-bf16-12k"),
        ("ranking-trained, 192 px bf16, 12,000 steps", "earlier `cpu` (no tuning split, exact search), 2-core CPU",
         _wall(final), final, "trained", "cpu-192-bf16-12k"),
        (f"ranking-trained, 192 px bf16, budget 40 min ({budget['train_summary']['steps']:,} steps), "
         f"re-ranked ({metrics(budget, 'trained', 'val').get('rerank')}, chosen on tune)",
         "earlier `cpu` (training 40 min), 2-core CPU (AMD EPYC, native bf16)", _wall(budget),
         budget, "trained", BUDGET_CARD),
        (f"ranking-trained, 192 px fp32 (OpenVINO frozen pass), budget 85 min end to end "
         f"({avx2['train_summary']['steps']:,} steps), re-ranked ({metrics(avx2, 'trained', 'val').get('rerank')}, "
         f"chosen on tune)", "**`cpu`**, 2-core CPU (AMD EPYC Zen 3, AVX2 only)",
         f"**{_wall(avx2).replace(' (', '** (', 1)}", avx2, "trained", AVX2_CARD),
        (f"ranking-trained, 192 px bf16, budget 85 min end to end ({xeon['train_summary']['steps']:,} steps), "
         f"re-ranked ({metrics(xeon, 'trained', 'val').get('rerank')}, chosen on tune)",
         "**`cpu`**, 2-core CPU (Intel Xeon with AMX, native bf16)",
         f"**{_wall(xeon).replace(' (', '** (', 1)}", xeon, "trained", XEON_CARD),
        (f"ranking-trained, **EfficientNet-Lite2**, 192 px bf16, budget 85 min end to end "
         f"({lite2['train_summary']['steps']:,} steps), re-ranked ({metrics(lite2, 'trained', 'val').get('rerank')}, "
         f"chosen on tune)", "`cpu --set backbone=efficientnet_lite2`, 2-core CPU (AMD EPYC, native bf16)",
         _wall(lite2), lite2, "trained", LITE2_CARD),
        (f"the same, its plan at Lite2's measured costs ({lite2b['train_summary']['steps']:,} steps), re-ranked "
         f"({metrics(lite2b, 'trained', 'val').get('rerank')}, chosen on tune)",
         "`cpu --set backbone=efficientnet_lite2`, 2-core CPU (AMD EPYC, native bf16)",
         _wall(lite2b), lite2b, "trained", LITE2_REPLAN_CARD),
    ]
    ms = [metrics(c, model, "val") for *_, c, model, _ in spec]
    cols = _present(ms, ("precision@1", "precision@10", "precision@30", "any_hit@30", "r_precision", "map@r"))
    val_titles = {"precision@1": "val P@1", "precision@10": "val P@10", "precision@30": "**val P@30**",
                  "any_hit@30": "any-hit@30", "r_precision": "R-precision", "map@r": "MAP@R"}
    header = ["model", "profile, hardware", "wall time end to end", *(val_titles[k] for k in cols),
              "val triplet acc", "card"]
    rows = []
    for (label, prof, wall, c, model, name), m in zip(spec, ms):
        vals = [f"**{f2(m.get(k))}**" if k == "precision@30" and name in (AVX2_CARD, XEON_CARD, LITE2_CARD, LITE2_REPLAN_CARD) and model == "trained"
                else f2(m.get(k)) for k in cols]
        rows.append([label, prof, wall, *vals, f2(m.get("triplet_acc")), card_ref(name, c)])
    return table(header, ["---"] * len(header), rows)


def t_steps() -> str:
    """Val precision@30 against steps of the earlier profile's recipe."""
    earlier, eight, search = card("cpu-128-fp32-20k"), card("cpu-128-fp32-8k"), card("recipe-search")
    by_run = {r["run"]: r for r in search["rows"]}
    header = ["steps", "lr", "val P@30", "val P@1", "val any-hit@30", "val MAP@R", "val triplet acc", "train P@30", "card"]
    rows = []
    base = metrics(earlier, "baseline", "val")
    rows.append(["0 (frozen backbone)", DASH, f2(base.get("precision@30")), f2(base.get("precision@1")),
                 f2(base.get("any_hit@30")), f2(base.get("map@r")), f2(base.get("triplet_acc")),
                 f2(metrics(earlier, "baseline", "train").get("precision@30")), card_ref("cpu-128-fp32-20k", earlier)])
    for run, lr in (("clsinit_adam1e4_g05_hard", "1e-4"), ("clsinit_adam3e4_g05_hard", "3e-4")):
        r = by_run[run]
        m = r["metrics"]
        rows.append([f"{r['steps']:,} †", lr, f2(m["precision@30"]), DASH, f2(m["any_hit@30"]), f2(m["map@r"]),
                     f2(m["triplet_acc"]), DASH, card_ref("recipe-search", search)])
    for name, c, bold in (("cpu-128-fp32-8k", eight, False), ("cpu-128-fp32-20k", earlier, True)):
        m, t = metrics(c, "trained", "val"), metrics(c, "trained", "train")
        p30 = f2(m.get("precision@30"))
        rows.append([f"{c['train_summary']['steps'] if c.get('train_summary') else c['recipe']['steps']:,}", "3e-4",
                     f"**{p30}**" if bold else p30, f2(m.get("precision@1")), f2(m.get("any_hit@30")),
                     f2(m.get("map@r")), f2(m.get("triplet_acc")), f2(t.get("precision@30")), card_ref(name, c)])
    return table(header, ["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---"], rows)


def t_recipe_search() -> str:
    c = card("recipe-search")
    header = ["run", "head init", "optimiser, lr", "gap", "negatives", "steps", "train s", "P@1", "P@10", "P@30",
              "any-hit@30", "MAP@R", "val triplet acc"]
    rows = []
    for r in c["rows"]:
        m = r["metrics"]
        rows.append([r["run"], r["head_init"], r["optimizer"], r["gap"], r["negatives"], r["steps"],
                     f"{r['train_s']}{'*' if r.get('shared') else ''}",
                     *(f2(m[k]) for k in ("precision@1", "precision@10", "precision@30", "any_hit@30", "map@r",
                                          "triplet_acc"))])
    return table(header, ["---"] * len(header), rows)


def t_tuning() -> str:
    header = ["input", "model", "tune P@1", "tune P@10", "**tune P@30**", "tune MAP@R", "tune any-hit@30",
              "tune triplet acc", "frozen-stage pass", "training", "whole command", "card"]
    rows = []
    for name, size in (("tune-128-bf16-4k", 128), ("tune-192-bf16-4k", 192), ("tune-192-bf16-12k", 192)):
        c = card(name)
        steps = c["train_summary"]["steps"]
        for model in ("baseline", "trained"):
            m = metrics(c, model, "tune")
            if not m:
                continue
            label = "frozen backbone" if model == "baseline" else (
                "ranking-trained" if steps == 4000 else f"ranking-trained, **{steps:,} steps**")
            vals = [f2(m.get(k)) for k in ("precision@1", "precision@10")] + [f"**{f2(m.get('precision@30'))}**"] + \
                   [f2(m.get(k)) for k in ("map@r", "any_hit@30", "triplet_acc")]
            if model == "baseline":
                rows.append([f"{size} px", label, *vals, "", "", "", card_ref(name, c)])
                continue
            ts = c["train_summary"]
            stitched = "wall_s" in c.get("stitched", [])
            stage = "reused" if stitched else f"{c['phases']['stage_pass']:,} s"
            note = f"; {c['shared_cpu']}" if stitched and c.get("shared_cpu") else ""
            train = f"{ts['train_s']:,} s ({ts['triplets_per_s']} triplets/s{note})"
            whole = DASH if stitched else f"{c['wall_s'] / 60:.1f} min"
            rows.append([f"{size} px", label, *vals, stage, train, whole, card_ref(name, c)])
    return table(header, ["---", "---", *["---:"] * 9, "---"], rows)


def t_quality_time() -> str:
    d = figure_json("quality_time.json")
    curves = {c["name"]: c for c in d["curves"]}
    pts = []
    for name in ("profile", "full"):
        for p in curves[name]["points"]:
            pts.append((p["train_min"], name, p))
    pts.sort(key=lambda t: (round(t[0], 1), t[1] != "profile"))
    rows = []
    for minute, name, p in pts:
        cell = f"{f2(p['precision@30'])} ({p['step']:,})"
        rows.append([f"{minute:.1f}", cell if name == "profile" else DASH, cell if name == "full" else DASH])
    return table(["minutes from the start", "`cpu` profile P@30 (step)", "full fine-tune P@30 (step)"],
                 ["---:", "---", "---"], rows)


def _ablation_hw(r: dict, default: str | None) -> str:
    from ranking_lib.reporting.ablation import machine

    hw = r.get("hardware")
    return f" ({machine(hw).replace('2 cores, ', '')})" if hw and hw != default else ""


def t_ablation() -> str:
    from ranking_lib.reporting.ablation import override_flags

    d = figure_json("ablation.json")
    header = ["row", "overrides", "tune P@1", "tune P@10", "**tune P@30**", "MAP@R", "any-hit@30", "triplet acc",
              "score@top-30", "train s", "wall min"]
    rows = []
    for r in d["rows"]:
        m = r["metrics"]
        rows.append([r["name"] + _ablation_hw(r, d.get("hardware")), f"`{' '.join(override_flags(r['overrides'])) or DASH}`",
                     f2(m["precision@1"]), f2(m["precision@10"]), f"**{f2(m['precision@30'])}**", f2(m["map@r"]),
                     f2(m["any_hit@30"]), f2(m["triplet_acc"]), f"{m['score_at_top_30']:,}", n0(r["train_s"]),
                     f2(r["wall_s"] / 60, 1)])
    return table(header, ["---", "---", *["---:"] * 9], rows)


def t_ablation_semantic() -> str:
    """The ablation rows measured with the similarity beyond the label (`ablation.SEMANTIC`)."""
    from ranking_lib.reporting.ablation import SEMANTIC, SEMANTIC_TITLES, measured_columns

    d = figure_json("ablation.json")
    cols = measured_columns(SEMANTIC, d["rows"])
    rows = [[r["name"] + _ablation_hw(r, d.get("hardware")), f"**{f2(r['metrics']['precision@30'])}**",
             *(f2(r["metrics"].get(k)) for k in cols)]
            for r in d["rows"] if any(k in r["metrics"] for k in cols)]
    return table(["row", "**tune P@30**", *(SEMANTIC_TITLES[k] for k in cols)], ["---", *["---:"] * (1 + len(cols))], rows)



def t_ablation_every_axis(name: str = "ablation_avx2.json") -> str:
    """One sweep's rows on every axis: each row's tuning-split metrics (``rows``) and the same run
    dirs re-embedded and evaluated with val on, once (``tuned_val_rows``)."""
    from ranking_lib.reporting.ablation import (SEMANTIC, SEMANTIC_TITLES, measured_columns, model_flag, override_flags,
                                                row as named)

    d = figure_json(name)
    cols = measured_columns(SEMANTIC, d.get("rows", []) + d.get("tuned_val_rows", []))
    rows = []
    for key, split in (("rows", "tune"), ("tuned_val_rows", "val")):
        for r in d.get(key, []):
            m = r["metrics"]
            flags = override_flags(r["overrides"]) + model_flag(named(d, r["name"]) or r)  # the tune row's model
            rows.append([r["name"], split, f"**{f2(m['precision@30'])}**", f2(m["map@r"]),
                         *(f2(m.get(k)) for k in cols), f"`{' '.join(flags) or DASH}`"])
    return table(["row", "split", "**P@30**", "MAP@R", *(SEMANTIC_TITLES[k] for k in cols), "row flags"],
                 ["---", "---", *["---:"] * (2 + len(cols)), "---"], rows)


def t_ablation_val() -> str:
    from ranking_lib.reporting.ablation import machine

    d = figure_json("ablation.json")
    header = ["row", "command", "machine", "val P@1", "val P@10", "**val P@30**", "MAP@R", "any-hit@30", "triplet acc",
              "score@top-30", "train s", "wall min", "card"]
    cards = {"course": "course-192-bf16-12k", "profile": "cpu-192-bf16-12k"}
    rows = []
    for r in d["val_rows"]:
        m = r["metrics"]
        name = cards.get(r["name"])
        label = {"course": "course (no mining)"}.get(r["name"], r["name"])
        c = card(name) if name else None
        command = c.get("row_command", c["command"]) if c else relative(r["command"])
        counted = {**m, **metrics(c, "trained", "val")} if c else m  # the card keeps the count scored
        rows.append([label, f"`{command}`", machine(r.get("hardware")).replace("2 cores, ", ""),
                     f2(m["precision@1"]), f2(m["precision@10"]), f"**{f2(m['precision@30'])}**", f2(m["map@r"]),
                     f2(m["any_hit@30"]), f2(m["triplet_acc"]), score(counted), n0(r["train_s"]),
                     f2(r["wall_s"] / 60, 1), card_ref(name, c) if c else DASH])
    return table(header, ["---", "---", "---", *["---:"] * 9, "---"], rows)


def t_step_cost() -> str:
    d = figure_json("step_cost.json")
    rows = [[r["name"], f"{1000 * r['s_per_step']:.0f}", f"{r['ratio_to_profile']:.3f}"] for r in d["rows"]]
    return table(["row", "ms per step", "× profile"], ["---", "---:", "---:"], rows)


def t_search_scale() -> str:
    d = figure_json("search_scale.json")
    header = ["n", "d", "method", "build s", "search ms/query", "recall@30", "RSS growth MiB", "bytes/vector"]
    rows = []
    for r in d["results"]:
        est = r.get("estimate")
        build = f"~{r['build_s']:.0f} (estimate)" if est else f"{r['build_s']:.1f}"
        ms = r.get("search_ms_per_query")
        rec = r.get("recall@30")
        rss = r.get("rss_delta_mib")
        rows.append([f"{r['n']:,}", r["dim"], r["method"], build, "" if ms is None else f"{ms:.3f}",
                     "" if rec is None else f"{rec:.4f}", "" if rss is None else f"{rss:,.0f}",
                     f"{r['bytes_per_vector']:.0f}"])
    return table(header, ["---:", "---:", "---", "---:", "---:", "---:", "---:", "---:"], rows)


GPU_CARD = "gpu-h200-sample"  # the gpu profile's CUDA path, on the 20-class sample


def t_gpu_check() -> str:
    """The gpu profile on one GPU (the real 20-class sample): its speed, then its metrics."""
    c = card(GPU_CARD)
    ts, m = c["train_summary"], c["machine"]
    budget = ts.get("budget") or {}
    speed = table(["GPU, precision (torch)", "batch", "input", "steps (budget)", "steps/s", "triplets/s", "training", "whole run"],
                  ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"],
                  [[f"{machine_class(c)} (torch {m.get('torch')})",
                    c["config"]["batch_size"], f"{c['config']['input_size']} px",
                    f"{ts['steps']:,} ({budget.get('train_minutes', DASH)} min)",
                    f"{ts['steps'] / ts['wall_s']:.1f}", f"{ts['triplets_per_s']:,.0f}",
                    f"{ts['wall_s']:.0f} s", f"{c['wall_s']:.0f} s"]])
    return speed + "\n\n" + split_table(c, f"ranking-trained ({ts['steps']:,} steps)",
                                         "frozen pretrained backbone, 192 px", with_score=True)


GPU_OPTION_CARDS = {"multiscale network from frozen-stage features": "gpu-h200-multiscale-150",
                    "online triplets (class buffers)": "gpu-h200-online-150",
                    "relevance sampling, 80 % in-class negatives": "gpu-h200-relevance-150"}


def t_gpu_options() -> str:
    """The paper's options, 150 steps each on the GPU (functional checks on the 20-class sample)."""
    rows = []
    for option, name in GPU_OPTION_CARDS.items():
        c = card(name)
        tr, base = metrics(c, "trained", "val"), metrics(c, "baseline", "val")
        rows.append([option, card_ref(name, c), f"{c['train_summary']['steps']:,}", f"{c['wall_s']:.0f} s",
                     f2(tr.get("precision@30")), f2(base.get("precision@30"))])
    return table(["option (gpu profile otherwise)", "card", "steps", "whole run", "val P@30 trained", "val P@30 frozen"],
                 ["---", "---", "---:", "---:", "---:", "---:"], rows)


def t_trade_off(name: str = "ablation_fine.json") -> str:
    """A sweep's rows against its profile row (`ablation.trade_off_table`: the report's
    Improvements table): the profile's values, then each row's signed difference."""
    from ranking_lib.reporting.ablation import trade_off_table

    df = trade_off_table(figure_json(name))
    return table(["option", *df.columns], ["---", *["---:"] * len(df.columns)],
                 [[option, *values] for option, values in zip(df.index, df.values.tolist())])


def t_backbones(name: str = "ablation_backbone.json", cost: str = "step_cost_backbone.json") -> str:
    """The capacity sweep on the tuning split: larger EfficientNet-Lite backbones and one more
    trained stage, each at the profile's training time (steps cut by its measured time per step),
    beside the profile's row, on every axis."""
    from ranking_lib.reporting.ablation import SEMANTIC, SEMANTIC_TITLES, measured_columns, override_flags, row as named

    d, c = figure_json(name), figure_json(cost)
    cols = measured_columns(SEMANTIC, d["rows"])
    rows = []
    for r in d["rows"]:
        base = r["name"].split("@")[0]
        step = named(c, base)
        if step is None:
            raise RankingError(f"{cost} has no step cost of row {base!r}")
        m, over = r["metrics"], {k: v for k, v in r["overrides"].items() if k != "steps"}
        rows.append([r["name"], f"`{' '.join(override_flags(over)) or DASH}`", n0(r["overrides"].get("steps", d["steps"])),
                     f"{1000 * step['s_per_step']:.0f}", f"{step['ratio_to_profile']:.2f}",
                     f"**{f2(m['precision@30'])}**", f2(m["map@r"]), *(f2(m.get(k)) for k in cols)])
    # the steps carry the equal time (from the quiet step costs); the rows' own wall times shared the CPU
    return table(["row", "flags", "steps", "ms/step", "× profile", "**tune P@30**", "MAP@R",
                  *(SEMANTIC_TITLES[k] for k in cols)], ["---", "---", *["---:"] * (5 + len(cols))], rows)


def t_step_levers(names=("step_levers.json", "step_levers_avx2.json")) -> str:
    """The profile's training step and what each faster-step lever gives, natively and with the
    kernels held to AVX2 (`benchmarks/bench_step_levers.py`), one column pair per measurement."""
    runs = [figure_json(n) for n in names if (FIGURES / n).is_file()]
    if not runs:
        raise RankingError(f"none of {', '.join(names)} in {FIGURES}")
    levers = list(dict.fromkeys(r["lever"] for d in runs for r in d["rows"]))
    header, align = ["lever"], ["---"]
    for d in runs:
        what = "AVX2 kernels, fp32" if d["isa"] == "avx2" else f"native{', bf16' if d['bf16'] else ''}"
        header += [f"steps/s ({what})", "× profile"]
        align += ["---:", "---:"]
    rows = []
    for lever in levers:
        cells = [lever]
        for d in runs:
            r = next((r for r in d["rows"] if r["lever"] == lever), None)
            cells += [f2(r["steps_per_s"]), f2(r["x_profile"])] if r else [DASH, DASH]
        rows.append(cells)
    return table(header, align, rows)


TABLES: dict[str, Callable[[], str]] = {
    "headline": t_headline, "cpu-budget": t_cpu_budget, "cpu-budget-avx2": t_cpu_budget_avx2,
    "cpu-budget-xeon": t_cpu_budget_xeon, "budget-check": t_budget_check,
    "semantic-budget": t_semantic_budget, "semantic-budget-avx2": lambda: t_semantic_budget(AVX2_CARD), "cpu-final": t_cpu_final, "cpu-earlier": t_cpu_earlier, "steps": t_steps,
    "recipe-search": t_recipe_search, "tuning": t_tuning, "quality-time": t_quality_time, "ablation": t_ablation, "ablation-semantic": t_ablation_semantic,
    "ablation-every-axis": t_ablation_every_axis, "ablation-fine": lambda: t_ablation_every_axis("ablation_fine.json"),
    "ablation-fine-trade-off": t_trade_off, "fine-full": t_fine_full, "ceiling-full": t_ceiling_full,
    "ablation-val": t_ablation_val, "step-cost": t_step_cost, "search-scale": t_search_scale, "gpu-check": t_gpu_check,
    "gpu-options": t_gpu_options, "backbones": t_backbones, "step-levers": t_step_levers,
}


# ---- documents and figures -----------------------------------------------------------------
def render_text(text: str, where: str = "document") -> str:
    """`text` with every marked table replaced by its rendering."""
    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise RankingError(f"{where}: unknown results table {name!r} (known: {', '.join(sorted(TABLES))})")
        return f"{m.group(1)}{TABLES[name]()}\n{m.group(4)}"

    return MARKER.sub(sub, text)


def marked(text: str) -> list[str]:
    return [m.group(2) for m in MARKER.finditer(text)]


def draw_figures(figures: Path = FIGURES) -> list[Path]:
    from ranking_lib.reporting import ablation
    from ranking_lib.reporting.plots import plot_precision_vs_minutes

    plot_precision_vs_minutes(levers_points(), figures / "levers.png")
    ablation.plot_out_of_class(figure_json("ablation.json"), figures / "ablation_out_of_class.png")
    return [figures / "levers.png", figures / "ablation_out_of_class.png"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/results.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare only; exit 1 when a committed table differs")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    args = p.parse_args(argv)
    try:
        for name in DOCS:
            path = REPO / name
            text = path.read_text(encoding="utf-8")
            new = render_text(text, name)
            if new == text:
                continue
            if args.check:
                changed = next(t for t in marked(text) if f"results:{t} -->\n{TABLES[t]()}\n<!--" not in text)
                print(f"error: {name}: table {changed!r} differs from what its cards render (run make results)",
                      file=sys.stderr)
                return 1
            write_text(path, new)
            print(f"rewrote the tables of {name}")
        if not args.check and not args.no_figures:
            for f in draw_figures():
                print(f"drew {f.relative_to(REPO)}")
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
