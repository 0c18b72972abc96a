"""The report's wording: which sentences the report writes for which numbers.

`RunRecord.load(cfg)` reads what a run wrote (config.json, metrics_*.json, train_summary.json,
loss_log.csv, query_examples.json, class_counts.csv); each function below turns it into one
section of Markdown (the method section, from the config alone: `method`). Every number is
formatted from those files, never typed by hand; notebook ``05_report`` only calls these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ranking_lib.core import fileio
from ranking_lib.core.config import RunConfig
from ranking_lib.core.names import MODELS
from ranking_lib.core.errors import RankingError
from ranking_lib.core.paths import FIGURES
from ranking_lib.reporting import kept
from ranking_lib.reporting.method import method  # noqa: F401 - report.method: the notebook's section

COURSE_TARGET = 60.0  # % validation precision@30


@dataclass
class RunRecord:
    cfg: RunConfig
    metrics: dict[str, dict]
    """{model: {split: {metric: value}}}"""
    summary: dict
    loss: pd.DataFrame
    queries: list[dict]
    counts: pd.DataFrame

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunRecord":
        run = Path(run_dir)

        def read_json(name):
            return fileio.read_json(run / name, "run file", " (run the notebooks 01-04 first)")

        cfg = RunConfig.from_dict(read_json("config.json"))
        metrics = {m: read_json(f"metrics_{m}.json") for m in MODELS}
        for name in ("loss_log.csv", "class_counts.csv"):
            if not (run / name).is_file():
                raise RankingError(f"{run / name} not found (run the notebooks 01-04 first)")
        return cls(cfg, metrics, read_json("train_summary.json"), pd.read_csv(run / "loss_log.csv"),
                   read_json("query_examples.json"), pd.read_csv(run / "class_counts.csv"))

    # ---- numbers -------------------------------------------------------------------------
    def value(self, model: str, split: str, key: str) -> float:
        return float(self.metrics[model][split][key])

    def pct(self, model: str, split: str, key: str) -> str:
        """Formatted exactly like the precision table."""
        return f"{self.value(model, split, key):.2f}%"

    def gain(self, key: str, split: str = "val") -> float:
        return self.value("trained", split, key) - self.value("baseline", split, key)

    @property
    def k_mid(self) -> int:
        return self.cfg.ks[min(1, len(self.cfg.ks) - 1)]

    @property
    def k_max(self) -> int:
        return max(self.cfg.ks)

    def loss_ends(self) -> tuple[float, float, int]:
        """Mean loss over the first and the last 10 % of steps, and that window's length."""
        n = max(1, len(self.loss) // 10)
        return float(self.loss["loss"].iloc[:n].mean()), float(self.loss["loss"].iloc[-n:].mean()), n

    def loss_still_falling(self) -> bool:
        """The last 10 % of steps average at least 5 % below the 10 % before them."""
        _, _, n = self.loss_ends()
        tail = self.loss["loss"].iloc[-2 * n:]
        return len(tail) >= 2 * n and tail.iloc[n:].mean() < 0.95 * tail.iloc[:n].mean()

    def train_val_gap(self, key: str = "precision@1") -> float:
        return self.value("trained", "train", key) - self.value("trained", "val", key)


# ---- sections ------------------------------------------------------------------------------
def summary(r: RunRecord) -> str:
    k, km = r.k_mid, r.k_max
    final = r.value("trained", "val", f"precision@{km}")
    verdict = "meets" if final >= COURSE_TARGET else "misses"
    return (
        f"**Summary.** On {len(r.counts)} classes ({int(r.counts['train'].sum())} training and "
        f"{int(r.counts['val'].sum())} validation images), {r.summary['steps']} training steps of the ranking "
        f"network raised the validation precision@1 from {r.pct('baseline', 'val', 'precision@1')} (untrained "
        f"backbone) to {r.pct('trained', 'val', 'precision@1')}, precision@{k} from "
        f"{r.pct('baseline', 'val', f'precision@{k}')} to {r.pct('trained', 'val', f'precision@{k}')} and MAP@R from "
        f"{r.pct('baseline', 'val', 'map@r')} to {r.pct('trained', 'val', 'map@r')}; "
        f"{r.pct('trained', 'val', 'triplet_acc')} of the validation triplets are ranked correctly. The course's "
        f"accuracy measure, validation precision@{km}, went from {r.pct('baseline', 'val', f'precision@{km}')} to "
        f"**{r.pct('trained', 'val', f'precision@{km}')}**, which {verdict} the target of {COURSE_TARGET:.0f}%."
    )


def training(r: RunRecord) -> str:
    first, last, _ = r.loss_ends()
    s = r.summary
    resumed = ""
    if s.get("resumed_from"):
        resumed = f" (resumed at step {s['resumed_from']}; the time and rate are those of the last part)"
    return (f"Training ran {s['steps']} steps; the last call ran {s.get('steps_run', s['steps'])} of them in "
            f"{s['wall_s']:.0f} s ({s['triplets_per_s']:.1f} triplets/s){resumed}. The mean loss fell from "
            f"{first:.3f} over the first 10% of steps to {last:.3f} over the last 10% (gap $g$ = {r.cfg.gap:g}: the "
            "loss of an embedding that cannot tell positives from negatives).")


def precision(r: RunRecord) -> str:
    k = r.k_mid
    return (f"On validation, ranking training changed precision@1 by {r.gain('precision@1'):+.2f} points, "
            f"precision@{k} by {r.gain(f'precision@{k}'):+.2f}, MAP@R by {r.gain('map@r'):+.2f} and triplet accuracy by "
            f"{r.gain('triplet_acc'):+.2f} points over the baseline. On the training set the trained network reaches "
            f"precision@1 {r.pct('trained', 'train', 'precision@1')} and MAP@R {r.pct('trained', 'train', 'map@r')} "
            f"(validation: {r.pct('trained', 'val', 'precision@1')} and {r.pct('trained', 'val', 'map@r')}).")


def query_counts(q: dict) -> tuple[int, int]:
    """How many of the top-k and of the bottom-k results share the query's class."""
    return (int(np.sum(np.asarray(q["top_labels"]) == q["query_label"])),
            int(np.sum(np.asarray(q["bottom_labels"]) == q["query_label"])))


def query_caption(i: int, q: dict) -> str:
    st, sb = query_counts(q)
    return (f"Query {i}: {q['query_path'].split('/')[-1]}, class {q['query_class']}. {st} of the top-"
            f"{len(q['top_labels'])} and {sb} of the bottom-{len(q['bottom_labels'])} training images are of the "
            f"query's class; distances range from d={min(q['top_distances']):.3f} (nearest) to "
            f"d={max(q['bottom_distances']):.3f} (farthest). Green frame: same class; red: another class.")


def discussion(r: RunRecord) -> str:
    k = r.k_mid
    gap = r.train_val_gap()
    tops, bottoms = zip(*(query_counts(q) for q in r.queries)) if r.queries else ((0,), (0,))
    return "\n".join([
        f"* **Effect of ranking training.** Validation MAP@R went from {r.pct('baseline', 'val', 'map@r')} to "
        f"{r.pct('trained', 'val', 'map@r')} ({r.gain('map@r'):+.2f} points) and precision@1 from "
        f"{r.pct('baseline', 'val', 'precision@1')} to {r.pct('trained', 'val', 'precision@1')}: "
        + ("the triplet loss adapted the pretrained features to this dataset's notion of similarity."
           if r.gain("map@r") > 0 else "the short training did not improve on the pretrained features; see the "
                                       "improvements below."),
        f"* **Generalisation.** Train precision@1 is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} "
        "validation " + ("(a large gap: the network starts to memorise the training images)." if gap > 10
                         else "(a small gap: little overfitting at this budget)."),
        f"* **Triplets vs. retrieval.** {r.pct('trained', 'val', 'triplet_acc')} of random validation triplets are "
        f"ordered correctly, but precision@{k} is {r.pct('trained', 'val', f'precision@{k}')}: random out-of-class "
        "negatives are mostly easy, while retrieval must rank the query's class above *every* other image, "
        "including the most similar other classes.",
        f"* **Query examples.** Over the {len(r.queries)} queries, on average {np.mean(tops):.1f} of the "
        f"top-{r.cfg.top_k_show} and {np.mean(bottoms):.1f} of the bottom-{r.cfg.top_k_show} images are of the "
        "query's class.",
    ])


LEVERS = FIGURES / "levers.json"


def measured_levers(path: str | Path = LEVERS) -> list[dict] | None:
    """The recipes measured on full Tiny ImageNet (precision@30 against wall-clock minutes,
    tuning split and val), each point's numbers read from its kept card in ``docs/runs/``
    (`kept.levers_points`), or None when `path` is absent."""

    if path is None or not Path(path).is_file():
        return None
    path = Path(path)
    try:
        return kept.levers_points(path)
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, RankingError):
            raise
        raise RankingError(f"measured recipes {path} are unreadable ({type(e).__name__}: {e})") from None


def improvements(r: RunRecord, measured: dict | None = None, every_axis: dict | None = None) -> str:
    """What to try next. With `measured` (the ablation results, `ranking_lib.reporting.ablation.load`) the
    paper's ideas are given as the measured rows, not described in words; with `every_axis` (a sweep
    with val-once rows, ``tuned_val_rows``) also which option wins on which kind of similarity."""
    cfg, gap = r.cfg, r.train_val_gap()
    if measured is not None:
        from ranking_lib.reporting import ablation

        head = ("1. **The paper's method, measured** (relevance-weighted sampling with in-class negatives, "
                "online triplet buffers, the multiscale network; other runs on full Tiny ImageNet, tables and figure under 'Reference results from kept cards' below). "
                + ablation.findings(measured, per_row=False).replace("\n", "\n   "))
        if every_axis is not None:
            head += "\n\n   " + ablation.every_axis(every_axis).replace("\n", "\n   ")
        return "\n".join([head, _third(r, cfg, gap).replace("3. ", "2. ", 1)])
    first = ("1. **In-class negatives and online triplet sampling** (as in the paper). All pre-sampled negatives here "
             f"are out-of-class, so {r.pct('trained', 'train', 'triplet_acc')} of the training triplets end up ranked "
             "correctly and give little gradient. "
             + ("This run already adds the hardest out-of-class negative of each batch (`miner: batch_hard`); the "
                "paper's in-class negatives, ranked by a pairwise relevance score, and hard negatives mined from the "
                "whole database between epochs are the next step." if cfg.miner == "batch_hard" else
                "Mining hard negatives online from the current embedding (`miner: batch_hard`), and in-class "
                "negatives ranked by a pairwise relevance score, would teach the fine-grained differences that "
                "precision@1 measures."))
    second = ("2. **Multiscale network.** The paper adds two shallow, low-resolution convolutional paths to the deep "
              "network and concatenates their embeddings, keeping colour and texture detail that the deep path "
              f"discards; with 64-pixel images this is cheap. Likewise a larger input size than {cfg.input_size} "
              "pixels or a stronger backbone.")
    return "\n".join([first, second, _third(r, cfg, gap)])


def _third(r: RunRecord, cfg, gap: float) -> str:
    if r.loss_still_falling():
        third = ("3. **Longer training.** The loss was still falling over the last 10% of steps, so more steps "
                 f"(than {cfg.steps}) or more triplets (than {cfg.num_triplets}) should help.")
    elif gap > 10:
        third = (f"3. **Regularisation.** The train-validation gap of {gap:.2f} points in precision@1 calls for "
                 "stronger augmentation or fewer epochs over the same triplets.")
    else:
        third = ("3. **More data per step.** The loss has levelled off; larger batches (more negatives per query for "
                 "mining) and a lower final learning rate are the next knobs.")
    return third


# ---- similarity beyond the label -----------------------------------------------------------
def semantic(r: RunRecord) -> str:
    """Similarity beyond the label (`retrieval.semantic`): the WordNet-graded metrics and
    near-duplicate recall of the trained network against the baseline, tune and val; the note of
    a run measured without WordNet; nothing measured: one sentence saying so."""
    k = r.k_max
    info = r.metrics["trained"].get("semantic") or {}
    out = []
    for split in ("tune", "val"):
        t, b = r.metrics["trained"].get(split), r.metrics["baseline"].get(split)
        if not t or not b:
            continue
        name = "validation" if split == "val" else "tuning-split"
        if f"wup@{k}" in t and f"wup@{k}" in b:
            out.append(
                f"On the {name} queries the mean Wu–Palmer similarity of the {k} nearest training images' classes to "
                f"the query's class (1 for its own class) is {t[f'wup@{k}']:.2f}% for the trained network and "
                f"{b[f'wup@{k}']:.2f}% for the baseline. Over the *wrong* neighbours only (mistake severity; "
                f"higher = milder mistakes) it is {t[f'mistake_wup@{k}']:.2f}% against {b[f'mistake_wup@{k}']:.2f}%, "
                f"where random mistakes would score {t['mistake_wup_chance']:.2f}%. Of {t['semantic_triplets']} "
                f"WordNet triplets (positive and negative both of other classes, the positive's class nearer the "
                f"query's), the trained network ranks {t['semantic_triplet_acc']:.2f}% correctly, the baseline "
                f"{b['semantic_triplet_acc']:.2f}%.")
        if "near_dup_recall@1" in t and "near_dup_recall@1" in b:
            out.append(
                f"Near-duplicates ({name}): {t['near_dup_queries']} images under crop-and-rescale, colour jitter, "
                f"blur and JPEG re-encoding, searched among {t['near_dup_database']} images (database and "
                f"originals), find their original first in {t['near_dup_recall@1']:.2f}% of cases (within 10: "
                f"{t['near_dup_recall@10']:.2f}%) with the trained network, {b['near_dup_recall@1']:.2f}% "
                f"({b['near_dup_recall@10']:.2f}%) with the baseline.")
        if "near_dup_held_out_recall@1" in t and "near_dup_held_out_recall@1" in b:
            out.append(
                f"Under the held-out transforms, which no training augmentation makes (small rotation, aspect "
                f"change, overlaid text, gamma, partial occlusion), the original comes first in "
                f"{t['near_dup_held_out_recall@1']:.2f}% of cases (within 10: {t['near_dup_held_out_recall@10']:.2f}%) "
                f"with the trained network, {b['near_dup_held_out_recall@1']:.2f}% "
                f"({b['near_dup_held_out_recall@10']:.2f}%) with the baseline.")
    if info.get("note"):
        out.append(f"*{info['note']}.*")
    if not out:
        return "Similarity beyond the label was not measured in this run (`semantic_metrics` off)."
    return " ".join(out)


def wrong_neighbours(r: RunRecord, model: str = "trained") -> str:
    """One query's wrong neighbours with their WordNet relation to its class ("German shepherd
    <- dog -> golden retriever, Wu–Palmer 0.80"), from ``metrics_<model>.json``; "" without one."""
    ex = (r.metrics[model].get("semantic") or {}).get("example")
    if not ex:
        return ""
    q = ex["query_class"]
    where = f"{ex['query_path'].split('/')[-1]}, " if ex.get("query_path") else ""
    head = f"Query {where}class *{q}* ({'validation' if ex['split'] == 'val' else 'tuning split'}, {model} network):"
    if not ex["wrong"]:
        return f"{head} all of its {ex['k']} nearest training images are of its class."
    items = []
    for w in ex["wrong"]:
        rel = (f"{q} $\\leftarrow$ {w['lcs']} $\\rightarrow$ {w['class']}, Wu–Palmer {w['wup']:.2f}"
               if w.get("wup") is not None else f"{w['class']}, not in WordNet")
        items.append(f"* {w['class']}: {rel}")
    return (f"{head} {len(ex['wrong'])} of its {ex['k']} nearest training images are of other classes; each "
            "with the lowest WordNet hypernym it shares with the query's class:\n\n" + "\n".join(items))


# ---- reference results (other runs, from kept cards) ---------------------------------------------
def reference_intro() -> str:
    return ("*Not this run.* The figure and tables of this section are full Tiny ImageNet results of other runs "
            "(2 CPU cores), read from the run cards kept in `docs/runs/` and the benchmark results in `docs/figures/` "
            "(RESULTS.md has their context). A card marked *reconstructed* was assembled from what its run printed. "
            "Their commands are listed at the end, relative to the repository.")


def _wrapped(command: str, width: int = 88) -> str:
    """A command on lines of at most `width` characters, continued with a backslash."""
    toks, words = [], command.split()
    for w in words:  # a flag stays on the line of its value
        if toks and toks[-1].startswith("--") and " " not in toks[-1] and not w.startswith("-"):
            toks[-1] += " " + w
        else:
            toks.append(w)
    out, line = [], ""
    for tok in toks:
        if line and len(line) + 1 + len(tok) > width - 2:
            out.append(line + " \\")
            line = "    " + tok
        else:
            line = f"{line} {tok}" if line else tok
    return "\n".join(out + [line])


def reference_commands(measured: dict | None, levers: list[dict] | None = None) -> str:
    """Markdown: the commands of the reference results as one verbatim block, paths relative to the
    repository (the kept JSON holds them as they ran)."""
    from ranking_lib.reporting import ablation

    blocks = []
    for p in levers or []:
        command = kept.card(p["card"])["command"] if p.get("card") else p["command"]
        blocks.append(f"# {p['label']} ({p['split']}; docs/runs/{p['card']}/card.json)\n{_wrapped(kept.relative(command))}")
    if measured:
        base = kept.relative(measured.get("base_command", "python -m ranking_lib STEP ...").replace(" --quiet", ""))
        base = base.replace("python -m ranking_lib STEP", "python -m ranking_lib all", 1)
        rows = "\n".join(f"#   {r['name']}: {' '.join(ablation.override_flags(r['overrides'])) or '(none)'}"
                         for r in measured["rows"])
        blocks.append("# the paper's options: every reduced-budget row is this command plus its flags\n"
                      f"{_wrapped(base + ' --run-dir runs/ablation/ROW')}\n{rows}")
        for r in measured.get("val_rows", []):
            blocks.append(f"# full budget, val: {r['name']}\n{_wrapped(kept.relative(r['command']))}")
    if not blocks:
        return ""
    return "Commands of the reference results:\n\n```text\n" + "\n\n".join(blocks) + "\n```"
