"""The report's wording rules (`ranking_lib.reporting.report`): each sentence follows the run's numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ranking_lib.reporting import report
from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError


def _metrics(**over):
    base = {"triplet_acc": 90.0, "precision@1": 60.0, "precision@10": 58.0, "precision@30": 55.0, "map@r": 40.0}
    return {**base, **over}


def _record(loss=None, trained_val=None, trained_train=None, miner="none", steps=100):
    cfg = RunConfig(steps=steps, miner=miner, ks=(1, 10, 30))
    metrics = {
        "trained": {"train": _metrics(**(trained_train or {})), "val": _metrics(**(trained_val or {}))},
        "baseline": {"train": _metrics(**{"precision@1": 50.0, "map@r": 30.0, "precision@30": 38.0}),
                     "val": _metrics(**{"precision@1": 49.0, "map@r": 29.0, "precision@30": 38.06,
                                        "triplet_acc": 84.0})},
    }
    loss = np.linspace(1.0, 0.2, 100) if loss is None else np.asarray(loss)
    queries = [{"query_path": "val/images/val_7.JPEG", "query_class": "goldfish", "query_label": 1,
                "top_labels": [1, 1, 2], "bottom_labels": [3, 1, 4], "top_distances": [0.1, 0.2, 0.3],
                "bottom_distances": [1.5, 1.7, 1.9]}]
    return report.RunRecord(cfg, metrics, {"steps": steps, "wall_s": 12.0, "triplets_per_s": 5.0, "steps_run": steps},
                            pd.DataFrame({"step": range(len(loss)), "loss": loss}), queries,
                            pd.DataFrame({"train": [500, 500], "val": [50, 50]}))


def test_summary_states_the_target_verdict_from_the_number():
    hit = report.summary(_record(trained_val={"precision@30": 62.35}))
    miss = report.summary(_record(trained_val={"precision@30": 59.99}))
    assert "**62.35%**, which meets the target of 60%" in hit
    assert "**59.99%**, which misses the target of 60%" in miss
    assert "from 38.06% to" in hit and "1000 training and 100 validation images" in hit


def test_improvements_follow_the_loss_curve_and_the_gap():
    falling = report.improvements(_record(loss=np.linspace(1, 0.1, 100)))
    assert "3. **Longer training.**" in falling
    flat_gap = report.improvements(_record(loss=np.full(100, 0.3), trained_train={"precision@1": 85.0},
                                           trained_val={"precision@1": 62.0}))
    assert "3. **Regularisation.** The train-validation gap of 23.00 points" in flat_gap
    flat = report.improvements(_record(loss=np.full(100, 0.3)))
    assert "3. **More data per step.**" in flat
    assert "already adds the hardest out-of-class negative" in report.improvements(_record(miner="batch_hard"))
    assert "Mining hard negatives online" in report.improvements(_record(miner="none"))


def test_discussion_and_query_caption_count_same_class_results():
    r = _record(trained_train={"precision@1": 85.0}, trained_val={"precision@1": 62.0})
    text = report.discussion(r)
    assert "23.00 points above validation (a large gap" in text
    assert "on average 2.0 of the top-10 and 1.0 of the bottom-10" in text
    cap = report.query_caption(3, r.queries[0])
    assert cap.startswith("Query 3: val_7.JPEG, class goldfish. 2 of the top-3 and 1 of the bottom-3")
    assert "d=0.100 (nearest) to d=1.900 (farthest)" in cap


def test_training_sentence_says_when_a_run_was_resumed():
    r = _record()
    assert "(resumed" not in report.training(r)
    r.summary.update(resumed_from=40, steps_run=60)
    assert "the last call ran 60 of them" in report.training(r) and "resumed at step 40" in report.training(r)


def test_method_text_follows_the_config():
    cfg = RunConfig(freeze_stages=7, cache_stage_features=True, head_init="classifier", squared_distance=True)
    text = report.method(cfg)
    assert "first 7 backbone stages" in text and "computed once" in text and "classifier's rows" in text
    assert "squared Euclidean distance" in text
    assert "first" not in report.method(RunConfig()).split("**Ranking layer.**")[0].split("share all weights")[1]


def test_load_names_the_missing_file(tmp_path):
    RunConfig(run_dir=str(tmp_path)).save(tmp_path / "config.json")
    with pytest.raises(RankingError, match="metrics_trained.json not found"):
        report.RunRecord.load(tmp_path)
    for m in report.MODELS:
        (tmp_path / f"metrics_{m}.json").write_text(json.dumps({"train": _metrics(), "val": _metrics()}))
    with pytest.raises(RankingError, match="loss_log.csv not found"):
        report.RunRecord.load(tmp_path)


def _ablation_results():
    def row(name, p30, over):
        return {"name": name, "overrides": over, "wall_s": 600.0, "train_s": 500.0, "command": f"cmd {name}",
                "metrics": {"precision@1": p30 + 1, "precision@10": p30, "precision@30": p30, "map@r": 30.0,
                            "any_hit@30": 85.0, "triplet_acc": 93.0, "score_at_top_30": 400}}
    return {"split": "tune", "hardware": "2 cores, test CPU", "data": "tiny-imagenet-200, 200 classes", "budget": "cpu profile at 128 px, 3000 steps",
            "rows": [row("profile", 50.0, {}), row("relevance-0.2", 47.0, {"out_of_class_fraction": 0.2}),
                     row("relevance-1.0", 50.2, {"sampler": "relevance", "out_of_class_fraction": 1.0}),
                     row("multiscale", 52.5, {"architecture": "multiscale"})]}


def test_improvements_are_written_from_the_measured_ablation(tmp_path):
    from ranking_lib.reporting import ablation

    res = _ablation_results()
    text = ablation.findings(res)
    assert "relevance-0.2" in text and "47.00 %" in text and "-3.00 points, worse" in text
    assert "+2.50 points, better" in text and "no clear difference" in text
    assert "Best at this budget: **multiscale**" in text
    assert "Measured on tiny-imagenet-200, 200 classes (cpu profile at 128 px, 3000 steps; tune split" in text
    # the report gives the verdicts; the rows are its table, not a bullet each
    text = report.improvements(_record(), res)
    assert "Best at this budget: **multiscale**" in text and "The table below gives each option" in text
    assert "-3.00 points, worse" not in text and "* **relevance-0.2**" not in text
    assert "would teach" not in text  # the words-only version is gone once rows are measured
    trade = ablation.trade_off_table(res)
    assert list(trade.index) == ["profile", "relevance-0.2", "relevance-1.0", "multiscale"]
    assert trade.loc["profile", "P@30"] == "50.00" and trade.loc["relevance-0.2", "P@30"] == "-3.00"
    assert trade.loc["multiscale", "P@30"] == "+2.50" and trade.loc["profile", "min"] == "10.0"
    assert ablation.trade_off_table({**res, "rows": res["rows"][1:]}) is None  # no profile row: no table
    assert ablation.out_of_class_curve(res) == [(0.2, 47.0), (1.0, 50.2)]
    res_close = {**res, "rows": res["rows"][:3]}  # without the multiscale row: nothing clearly ahead
    assert "No variant beats the profile by more than half a point" in ablation.findings(res_close)
    assert "(highest: relevance-1.0, +0.20 points)" in ablation.findings(res_close)
    t = ablation.table(res)
    assert list(t.index) == ["profile", "relevance-0.2", "relevance-1.0", "multiscale"]
    assert t.loc["multiscale", "P@30"] == 52.5 and t.loc["profile", "min"] == 10.0
    ablation.plot_out_of_class(res, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    dup = {**res, "rows": [{**r, "metrics": {**r["metrics"], "near_dup_recall@1": 60.0 + i}}
                           for i, r in enumerate(res["rows"])]}
    fig = ablation.plot_trade_off(dup, tmp_path / "t.png")
    assert len(fig.axes[0].collections) == 4 and (tmp_path / "t.png").stat().st_size > 1000
    assert len(ablation.plot_trade_off(res).axes[0].collections) == 0  # rows without near-dup recall: no points

    path = tmp_path / "a.json"
    path.write_text(json.dumps(res))
    assert ablation.load(path) == res and ablation.load(tmp_path / "none.json") is None
    path.write_text("{")
    with pytest.raises(RankingError, match="not valid JSON"):
        ablation.load(path)


def test_equal_time_and_full_budget_val_rows_in_table_and_findings():
    from ranking_lib.reporting import ablation

    res = _ablation_results()
    slow = {**ablation.row(res, "multiscale"), "name": "multiscale@equal-time", "metrics": {
        **ablation.row(res, "multiscale")["metrics"], "precision@30": 49.0}, "overrides": {
        "architecture": "multiscale", "steps": 2187}}
    res["rows"].append(slow)
    assert ablation.val_table(res) is None
    val = lambda name, p30, minutes: {"name": name, "overrides": {}, "train_s": 60.0 * minutes, "wall_s": None,
                                      "command": f"cmd {name}", "metrics": {"precision@30": p30, "precision@1": 1.0}}
    res["val_rows"] = [val("course", 60.25, 40), val("profile", 67.5, 44)]
    res["val_budget"] = "cpu profile: 192 px, 12,000 steps, 200 classes"
    text = ablation.findings(res)
    assert "**multiscale@equal-time** (the multiscale network (two shallow 4:1 and 8:1 paths), steps cut to the " \
           "profile's training time): 49.00 % (-1.00 points, worse; 2,187 steps" in text
    assert "**course** 60.25 % (40 min of training); **profile** 67.50 % (44 min of training)" in text
    assert "Batch-hard mining adds +7.25 points of val precision@30" in text
    t = ablation.val_table(res)
    assert list(t.index) == ["course", "profile"] and t.loc["profile", "train min"] == 44.0
    assert t.loc["course", "P@30"] == 60.25 and np.isnan(t.loc["course", "MAP@R"])
    assert "on" not in t.columns and "on" not in ablation.table(res).columns  # one machine

    # rows measured on another machine than the sweep's say which, in the tables and the sentences
    res["hardware"] = "2 cores, AMD EPYC"
    res["val_rows"][0]["hardware"] = "2 cores, Intel(R) Xeon(R) Processor"
    slow["hardware"] = "2 cores, Intel(R) Xeon(R) Processor"
    text = ablation.findings(res)
    assert "**course** 60.25 % (40 min of training, 2 cores, Intel Xeon); **profile** 67.50 % (44 min of " \
           "training)" in text
    assert f"2,187 steps, {slow['wall_s'] / 60:.1f} min on 2 cores, Intel Xeon)." in text
    assert list(ablation.val_table(res)["on"]) == ["Xeon", "EPYC"]
    assert ablation.table(res)["on"].tolist()[-1] == "Xeon"
    assert set(ablation.table(res)["on"].tolist()[:-1]) == {"EPYC"}


def test_ablation_commands_name_every_row():
    from ranking_lib.reporting import ablation

    res = _ablation_results()
    res["base_command"] = "python -m ranking_lib STEP --profile cpu --steps 3000 --quiet"
    res["rows"].append({**ablation.row(res, "multiscale"), "name": "multiscale@equal-time",
                        "overrides": {"architecture": "multiscale", "steps": 2120}})
    text = ablation.commands(res)
    assert text.startswith("Commands. Every reduced-budget row is `python -m ranking_lib all --profile cpu "
                           "--steps 3000 --run-dir runs/ablation/ROW` plus its flags:")
    for r in res["rows"]:
        assert f"**{r['name']}** `" in text
    assert "**multiscale@equal-time** `--architecture multiscale --steps 2120`" in text
    assert "**profile** `(none)`" in text and "Full-budget" not in text
    res["val_rows"] = [{"name": "course", "command": "python -m ranking_lib all --miner none"}]
    assert text + "\n\nFull-budget val rows: **course** `python -m ranking_lib all --miner none`." == \
        ablation.commands(res)
    assert ablation.override_flags({"flip_tta": True, "bf16_cpu": False, "steps": 5}) == \
        ["--flip-tta", "--no-bf16-cpu", "--steps", "5"]


def _section(cfg, name):
    """One bold-headed paragraph of `report.method(cfg)`."""
    text = report.method(cfg)
    return text.split(f"**{name}.**")[1].split("\n\n")[0]


@pytest.mark.parametrize("over,section,present,absent", [
    ({}, "Triplet sampling", ["sampled once before training", "drawn uniformly", "all negatives out-of-class"],
     ["online", "in-class negatives, images", "relevance"]),
    ({"sampler": "relevance"}, "Triplet sampling", ["in proportion to its total relevance", "$T_p$ = 0.6",
                                                   "all negatives out-of-class"], ["drawn uniformly"]),
    ({"out_of_class_fraction": 0.2, "relevance_tr": 0.15}, "Triplet sampling",
     ["out-of-class for 20% of the triplets", "the other 80% are in-class negatives", "$T_r$ = 0.15",
      "total relevance"], ["all negatives out-of-class"]),
    ({"triplet_source": "online", "buffer_size": 16, "buffer_refresh_steps": 25}, "Triplet sampling",
     ["online sampling", "buffers of 16 images", "rebuilt every 25 steps"], ["sampled once", "triplets_train.npy"]),
    ({"instance_fraction": 0.25}, "Triplet sampling",
     ["25% of the triplets are instance triplets", "view of the query's own image", "made afresh at every step",
      "another image of the query's class"], ["batch's closest other image", "frozen stages"]),
    ({"instance_fraction": 0.5, "views_per_image": 3, "freeze_stages": 7, "cache_stage_features": True,
      "miner": "batch_hard"}, "Triplet sampling",
     ["50% of the triplets", "one of 3 views of every training image", "batch's closest other image"], ["afresh"]),
    ({}, "Triplet sampling", ["sampled once"], ["instance triplets"]),
    ({"distill_weight": 2.0}, "Ranking layer", ["distillation term with weight 2", "frozen pretrained network"], []),
    ({}, "Ranking layer", ["hinge loss"], ["distillation", "graded by relevance"]),
    ({"graded_margin": 0.5}, "Ranking layer", ["graded by relevance", "g + 0.5", "Wu–Palmer"], []),
    ({"architecture": "multiscale"}, "Network", ["two shallow paths", "4:1 and 8:1"], []),
    ({}, "Network", ["ImageNet-pretrained `efficientnet_lite0` backbone followed by"], ["shallow paths"]),
    ({"pretrained": False}, "Network", ["randomly initialised"], ["ImageNet-pretrained"]),
    ({"bf16_cpu": True, "device": "cpu"}, "Network", ["bf16 autocast on a CPU that computes bf16 natively"], ["CUDA"]),
    ({"amp": False, "bf16_cpu": False}, "Network", ["float32 throughout"], ["bf16"]),
    ({"amp": True, "bf16_cpu": False}, "Network", ["bf16 autocast on a CUDA GPU, in float32 on the CPU"], []),
    ({"steps": 321}, "Ranking layer", ["Training ran 321 steps"], ["budget"]),
    ({"steps": 321, "train_minutes": 7.5}, "Ranking layer", ["budget of 7.5 minutes", "at 321 steps"], []),
    ({"steps": 321, "budget_minutes": 85.0}, "Ranking layer",
     ["whole run had a budget of 85 minutes", "estimated cost", "at 321 steps"], ["at most"]),
    ({}, "Inference", ["(exact search)"], ["approximate"]),
    ({"search_backend": "faiss-ivf", "index_nlist": 64, "index_nprobe": 8}, "Inference",
     ["approximate search", "IVF-Flat) of 64 lists, 8 of them searched"], ["(exact search)"]),
    ({"search_backend": "faiss-ivfpq", "index_pq_m": 16, "index_refine": 4}, "Inference",
     ["IVF-PQ", "16-byte codes", "4 x k best candidates are re-ranked"], ["(exact search)"]),
    ({"search_backend": "faiss-ivfpq", "index_refine": 1}, "Inference", ["estimated from the codes"], ["re-ranked"]),
    ({"search_backend": "faiss-hnsw", "index_hnsw_m": 16}, "Inference", ["HNSW, M = 16"], ["(exact search)"]),
])
def test_method_describes_each_option_of_the_run(over, section, present, absent):
    if "train_minutes" in over and "train_minutes" not in RunConfig.__dataclass_fields__:
        pytest.skip("RunConfig has no train_minutes")
    text = _section(RunConfig(**over), section)
    for phrase in present:
        assert phrase in text, (phrase, text)
    for phrase in absent:
        assert phrase not in text, (phrase, text)


def test_method_differs_per_option():
    options = [{"sampler": "relevance"}, {"out_of_class_fraction": 0.5}, {"triplet_source": "online"},
               {"architecture": "multiscale"}, {"search_backend": "faiss-hnsw"}, {"bf16_cpu": True},
               {"train_minutes": 3.0}, {"budget_minutes": 80.0}]
    texts = {report.method(RunConfig(**o)) for o in options} | {report.method(RunConfig())}
    assert len(texts) == len(options) + 1


def _with_semantic(r, note=None):
    """`r` with the similarity-beyond-the-label keys on val (trained, baseline) and an example."""
    graded = {"trained": {"wup@30": 72.5, "mistake_wup@30": 51.25, "mistake_wup_chance": 40.0,
                          "semantic_triplet_acc": 61.0, "semantic_triplets": 900,
                          "near_dup_recall@1": 80.0, "near_dup_recall@10": 95.5, "near_dup_queries": 100,
                          "near_dup_database": 1100},
              "baseline": {"wup@30": 60.0, "mistake_wup@30": 48.0, "mistake_wup_chance": 40.0,
                           "semantic_triplet_acc": 57.5, "semantic_triplets": 900,
                           "near_dup_recall@1": 88.0, "near_dup_recall@10": 99.0, "near_dup_queries": 100,
                           "near_dup_database": 1100}}
    for model, m in graded.items():
        r.metrics[model]["val"].update(m)
    r.metrics["trained"]["semantic"] = {"note": note, "example": {
        "split": "val", "query_index": 3, "query_path": "val/images/val_3.JPEG", "query_class": "German shepherd",
        "k": 10, "wrong": [{"class": "golden retriever", "lcs": "dog", "wup": 0.8},
                           {"class": "school bus", "lcs": "whole", "wup": 0.3636}]}}
    return r


def test_semantic_section_and_wrong_neighbours_follow_the_numbers():
    from ranking_lib.reporting import tables

    r = _with_semantic(_record())
    text = report.semantic(r)
    assert "is 72.50% for the trained network and 60.00% for the baseline" in text
    assert "it is 51.25% against 48.00%, where random mistakes would score 40.00%" in text
    assert "Of 900 WordNet triplets" in text and "ranks 61.00% correctly, the baseline 57.50%" in text
    assert "first in 80.00% of cases (within 10: 95.50%) with the trained network, 88.00% (99.00%)" in text
    assert "tuning-split" not in text  # no tune split in this run
    ex = report.wrong_neighbours(r)
    assert "Query val_3.JPEG, class *German shepherd*" in ex and "2 of its 10 nearest" in ex
    assert "German shepherd $\\leftarrow$ dog $\\rightarrow$ golden retriever, Wu–Palmer 0.80" in ex
    assert "school bus, Wu–Palmer 0.36" in ex
    t = tables.semantic_table({(m, s): r.metrics[m][s] for m in ("trained", "baseline") for s in ("train", "val")})
    assert list(t.index) == [("trained", "val"), ("baseline", "val")]  # train has none of the keys
    assert t.loc[("trained", "val"), "mistake WuP@30"] == 51.25 and t.loc[("baseline", "val"), "near-dup R@1"] == 88.0
    # the table notebooks 03 and 05 show, from the models' metrics as their files hold them
    shown = tables.model_semantic_table(r.metrics)
    assert list(shown.index) == [("trained", "val"), ("baseline", "val")] and shown.equals(t)
    # without WordNet: the near-duplicate sentence stays, the note says what was left out
    r = _record()
    r.metrics["trained"]["semantic"] = {"note": "WordNet not found (apt-get install wordnet-base)", "example": None}
    text = report.semantic(r)
    assert "Wu–Palmer" not in text and "apt-get install wordnet-base" in text
    assert report.wrong_neighbours(r) == ""
    assert "not measured" in report.semantic(_record())
    assert tables.semantic_table({("trained", "val"): _metrics()}) is None


def test_held_out_near_duplicates_in_the_text_and_per_transform_table():
    from ranking_lib.reporting import tables

    r = _with_semantic(_record())
    assert "held-out transforms" not in report.semantic(r)  # a run from before them: the text as it was
    r.metrics["trained"]["val"].update({"near_dup_held_out_recall@1": 41.5, "near_dup_held_out_recall@10": 70.25})
    r.metrics["baseline"]["val"].update({"near_dup_held_out_recall@1": 66.0, "near_dup_held_out_recall@10": 90.0})
    text = report.semantic(r)
    assert ("held-out transforms, which no training augmentation makes (small rotation, aspect change, overlaid "
            "text, gamma, partial occlusion), the original comes first in 41.50% of cases (within 10: 70.25%) with "
            "the trained network, 66.00% (90.00%) with the baseline") in text
    t = tables.semantic_table({("trained", "val"): r.metrics["trained"]["val"]})
    assert t.loc[("trained", "val"), "held-out dup R@1"] == 41.5
    families = {"standard": ["crop", "jpeg"], "held_out": ["rotate", "text"]}
    per = tables.near_dup_transform_table(
        {("trained", "val"): {"near_dup_recall@1_crop": 90.0, "near_dup_recall@1_jpeg": 80.0,
                              "near_dup_recall@1_rotate": 30.0, "near_dup_recall@10_rotate": 50.0},
         ("baseline", "val"): None}, families)
    assert list(per.index) == [("trained", "val")]  # a row without any: left out
    assert list(per.columns) == [("standard", "crop"), ("standard", "jpeg"), ("held_out", "rotate"), ("held_out", "text")]
    assert per.loc[("trained", "val"), ("held_out", "rotate")] == 30.0 and np.isnan(per.loc[("trained", "val"), ("held_out", "text")])
    assert tables.near_dup_transform_table({("trained", "val"): {}}, families) is None


def test_ablation_gains_the_semantic_columns_and_says_who_wins_each_axis():
    from ranking_lib.reporting import ablation

    res = _ablation_results()
    assert "WuP@30" not in ablation.table(res).columns  # rows measured before: the table as it was
    for r, (wup, dup) in zip(res["rows"], [(70.0, 90.0), (74.5, 85.0), (71.0, 91.0), (69.0, 97.25)]):
        r["metrics"].update({"wup@30": wup, "mistake_wup@30": wup - 20, "semantic_triplet_acc": 60.0,
                             "near_dup_recall@1": dup, "near_dup_recall@10": 99.0})
    res["rows"].append({"name": "frozen", "overrides": {}, "model": "baseline", "wall_s": 60.0, "train_s": 0.0,
                        "metrics": {"precision@30": 40.0, "wup@30": 60.0, "near_dup_recall@1": 98.5}})
    t = ablation.table(res)
    assert {"WuP@30", "mistake WuP", "sem. trip", "dup R@1", "dup R@10"} <= set(t.columns)
    assert t.loc["relevance-0.2", "WuP@30"] == 74.5 and np.isnan(t.loc["frozen", "sem. trip"])
    text = ablation.findings(res)
    assert "**relevance-0.2** (relevance-weighted, 20 % out-of-class (the paper's best)): 47.00 % (-3.00 points, " \
           "worse; 10.0 min); beyond the label: WuP@30 +4.50; mistake WuP +4.50; sem. trip +0.00; dup R@1 -5.00; " \
           "dup R@10 +0.00 points." in text
    assert "**frozen** (the frozen pretrained backbone" in text
    assert "WuP@30: **relevance-0.2** (74.50 %)" in text and "dup R@1: **frozen** (98.50 %)" in text
    assert "**frozen** `--model baseline`" in ablation.commands(res)


def test_method_names_the_query_time_reranking():
    from ranking_lib.core.config import RunConfig
    from ranking_lib.reporting.report import method

    assert "re-ranked" not in method(RunConfig())
    assert "chosen on the tuning split" in method(RunConfig(rerank="auto", holdout_per_class=5))
    assert "(aqe, k = 20)" in method(RunConfig(rerank="aqe", rerank_k=20))


def test_every_axis_names_the_winner_per_axis_on_tune_and_val_and_each_row_against_the_profile():
    from ranking_lib.reporting import ablation

    def row(name, p30, dup1, model="trained"):
        return {"name": name, "overrides": {}, "model": model, "command": f"cmd {name}",
                "metrics": {"precision@30": p30, "map@r": 20.0, "wup@30": 70.0 + p30 / 10, "mistake_wup@30": 58.0,
                            "semantic_triplet_acc": 60.0, "near_dup_recall@1": dup1, "near_dup_recall@10": dup1 + 10}}
    res = {"budget": "cpu profile at 128 px, 3000 steps", "hardware": "2 cores, test CPU",
           "rows": [row("frozen", 37.5, 85.0, "baseline"), row("profile", 52.0, 64.0), row("multiscale", 52.3, 64.6)],
           "tuned_val_rows": [row("frozen", 38.0, 84.0, "baseline"), row("profile", 52.2, 64.4),
                              row("multiscale", 52.0, 65.1)]}
    text = ablation.every_axis(res)
    assert "(cpu profile at 128 px, 3000 steps; 2 cores, test CPU;" in text
    assert "* highest on tune: P@30 **multiscale** (52.30); WuP@30 **multiscale** (75.23)" in text
    assert "* highest on val: P@30 **profile** (52.20); WuP@30 **profile** (75.22)" in text
    assert "dup R@1 **frozen** (84.00); dup R@10 **frozen** (94.00)." in text
    assert "mistake WuP" not in text.split("* highest on val")[1].split("\n")[0]  # a tie on every row: no winner named
    assert "* **frozen** minus the profile, val: P@30 -14.20; WuP@30 -1.42; mistake WuP +0.00" in text
    assert "dup R@1 +19.60; dup R@10 +19.60 points" in text
    assert "* **multiscale** minus the profile, val: P@30 -0.20" in text and "**profile** minus" not in text
    assert ablation.every_axis({**res, "tuned_val_rows": []}).count("* highest on") == 1
    improved = report.improvements(_record(), _ablation_results(), res)
    assert "Every axis, one sweep" in improved and improved.index("Every axis") > improved.index("Measured on")
    assert "Every axis" not in report.improvements(_record(), _ablation_results())


def test_trade_off_labels_do_not_overlap():
    """Points a label's width apart and a little above one another (the measured sweep had two such
    pairs): every label is drawn, none overlaps another or sits on another point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ranking_lib.reporting import ablation

    spots = {"profile": (52.0, 63.5), "instance-0.2": (50.0, 79.9), "instance-0.2+distill-5": (48.1, 84.7),
             "instance-0.2+distill-5+graded-0.5": (48.0, 82.7), "instance-0.5": (42.7, 91.2),
             "instance-0.5+distill-5": (43.4, 92.1), "distill-1": (51.9, 66.9)}
    res = {"split": "tune", "rows": [{"name": n, "metrics": {"precision@30": x, "near_dup_recall@1": y}}
                                     for n, (x, y) in spots.items()]}
    ax = ablation.plot_trade_off(res).axes[0]
    renderer = FigureCanvasAgg(ax.figure).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(spots)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
