"""The benchmark scripts run and their outputs say what they claim (small sizes, not timings)."""

import importlib.util
import json

import pytest

from benchmark_card import card_name, write_benchmark_card
from conftest import REPO, SMALL_CLASSES
from ranking_lib.core import paths


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_search_exact_methods_agree(tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("sklearn")
    out = tmp_path / "search.json"
    assert load_script("bench_search").main(["--n", "3000", "--q", "64", "--k", "10", "--dims", "16",
                                             "--clusters", "20", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    exact = [r for r in rows if "same_set" in r]
    approx = [r for r in rows if "recall@k" in r]
    assert {r["method"] for r in exact} >= {"EmbeddingIndex torch", "EmbeddingIndex faiss",
                                             "faiss IndexFlatL2 (raw)", "sklearn NearestNeighbors brute"}
    assert all(r["same_set"] == 1.0 for r in exact)
    assert len(approx) == 2 and all(0.9 <= r["recall@k"] <= 1.0 for r in approx)
    assert all(r["search_s"] > 0 for r in rows)


def test_bench_search_scale_rows(tmp_path):
    """Every index kind gets its rows; recall is against the exact top-k (probing every list makes
    IVF-Flat exact, the exact re-rank never loses to the PQ codes alone); the HNSW row past the
    build cap is marked as an estimate."""
    pytest.importorskip("faiss")
    out = tmp_path / "scale.json"
    script = load_script("bench_search_scale")
    assert script.main(["--n", "6000", "12000", "--dims", "16", "--q", "50", "--k", "10", "--nlist", "16",
                        "--train-per-list", "700", "--nprobe", "1", "16", "--clusters", "50",
                        "--hnsw-max-n", "6000", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    by = {(r["n"], r["method"]): r for r in rows}
    for n in (6000, 12000):
        assert by[(n, "exact (faiss.knn = IndexFlatL2)")]["recall@10"] == 1.0
        assert by[(n, "IVF16_HNSW32,Flat nprobe=16")]["recall@10"] == 1.0
        assert by[(n, "IVF16_HNSW32,Flat nprobe=1")]["recall@10"] < 1.0
        pq, refined = by[(n, "IVF16_HNSW32,PQ4 nprobe=16")], by[(n, "IVF16_HNSW32,PQ4 nprobe=16 + exact re-rank of 4k")]
        assert refined["recall@10"] >= pq["recall@10"] and pq["bytes_per_vector"] == 4 + 8
    assert by[(6000, "HNSW32,Flat efSearch=64")]["recall@10"] > 0.9
    assert by[(12000, "HNSW32,Flat (not built)")]["estimate"] is True
    with pytest.raises(SystemExit):
        script.main(["--n", "0"])
    # the data are seeded and L2-normalised
    a, qa = script.synthetic(100, 5, 8, 3, seed=1)
    b, _ = script.synthetic(100, 5, 8, 3, seed=1)
    assert (a == b).all() and abs(float((qa ** 2).sum(1).max()) - 1) < 1e-5


@pytest.mark.slow
def test_bench_quality_time_curves(sample_dir, small_cache_dir, tmp_path):
    out = tmp_path / "quality_time.json"
    assert load_script("bench_quality_time").main([
        "--data-dir", str(sample_dir), "--max-classes", str(SMALL_CLASSES), "--cache-dir", str(small_cache_dir),
        "--profile", "sample", "--input-size", "64", "--budget-min", "0.05", "--eval-every-min", "0.02",
        "--val-queries", "60", "--db-per-class", "30", "--probe-steps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    curves = {c["name"]: c for c in res["curves"]}
    assert set(curves) == {"profile", "full"}
    assert res["info"]["input_size"] == 64
    assert res["info"]["val_queries"] == 60 and res["info"]["db_images"] == 30 * SMALL_CLASSES
    for c in curves.values():
        pts = c["points"]
        assert len(pts) >= 2 and pts[0]["step"] == 0 and pts[-1]["step"] == c["steps_done"] > 0
        # precision@30 of 60 queries: a count of same-class hits out of 60 x 30
        assert all(abs(p["precision@30"] * 18 - round(p["precision@30"] * 18)) < 1e-6 for p in pts), pts
        mins = [p["train_min"] for p in pts]
        assert mins == sorted(mins)
    # the profile's clock starts after its frozen-stage pass; the full fine-tune's at zero
    assert curves["profile"]["points"][0]["train_min"] == pytest.approx(curves["profile"]["stage_pass_s"] / 60)
    assert curves["full"]["points"][0]["train_min"] == 0
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_bench_step_cost_and_the_equal_time_steps_it_gives(sample_dir, small_cache_dir, tmp_path):
    """Rows train in their own run dirs; the profile's ratio is 1 and every row's is its seconds
    per step over the profile's; bench_ablation's equal-time steps follow that ratio."""
    out = tmp_path / "step_cost.json"
    assert load_script("bench_step_cost").main([
        "--data-dir", str(sample_dir), "--max-classes", str(SMALL_CLASSES), "--cache-dir", str(small_cache_dir),
        "--profile", "sample",
        "--input-size", "64", "--steps", "3", "--holdout-per-class", "10", "--rows", "multiscale",
        "--out-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    by = {r["name"]: r for r in res["rows"]}
    assert list(by) == ["profile", "multiscale"]  # the profile is always measured, first
    assert by["profile"]["ratio_to_profile"] == 1.0
    ms = by["multiscale"]
    assert ms["ratio_to_profile"] == round(ms["s_per_step"] / by["profile"]["s_per_step"], 3) > 0
    assert ms["overrides"] == {"architecture": "multiscale"}
    cfg = json.loads((tmp_path / "runs" / "multiscale" / "config.json").read_text())
    assert cfg["architecture"] == "multiscale" and cfg["steps"] == 3 and cfg["input_size"] == 64
    assert cfg["max_classes"] == SMALL_CLASSES
    bench = load_script("bench_ablation")
    assert bench.equal_time_steps(3000, {"train_s": 300.0}, {"train_s": 411.0}) == 2190
    assert bench.equal_time_steps(3000, {"train_s": 300.0}, {"train_s": 463.0},
                                  {"name": "online", "ratio_to_profile": 1.02}) == 2941


def test_bench_ablation_rows_record_commands_another_checkout_can_type():
    """A row's command names the run dir it really used and the paths relative to the checkout
    (the kept sweep once said runs/ablation/ROW and /home/... for runs/ablation-fine/ROW)."""
    from ranking_lib.core.runcard import REPO

    bench = load_script("bench_ablation")
    cmd = bench.shown("all", ["--data-dir", str(REPO / "data" / "tiny"), "--quiet", "--cache-dir",
                              str(REPO.parent / "shared" / "c"), "--run-dir", str(REPO / "runs" / "ablation-fine" / "x"),
                              "--lr", "0.1"])
    assert cmd == ("python -m ranking_lib all --data-dir data/tiny --cache-dir ../shared/c "
                   "--run-dir runs/ablation-fine/x --lr 0.1")


def test_bench_budget_load_pins_a_load_that_ends_by_itself():
    import os
    import time

    bench = load_script("bench_budget_load")
    t0 = time.perf_counter()
    proc = bench.start_load(core=0, seconds=1.5)
    time.sleep(0.5)
    assert proc.poll() is None
    if hasattr(os, "sched_getaffinity"):
        assert os.sched_getaffinity(proc.pid) == {0}
    assert proc.wait(timeout=10) == 0 and time.perf_counter() - t0 < 10
    with pytest.raises(SystemExit):
        bench.main(["--load-at", "1.5"])


def test_bench_step_levers_times_the_profiles_step_and_each_lever(tmp_path, capsys):
    bench = load_script("bench_step_levers")
    out = tmp_path / "levers.json"
    assert bench.main(["--levers", "fused-adamw", "no-channels-last", "--images", "32", "--warmup", "1",
                       "--steps", "1", "--rounds", "1", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [r["lever"] for r in d["rows"]] == ["profile", "fused-adamw", "no-channels-last"]  # profile first
    assert all(r["steps_per_s"] > 0 for r in d["rows"]) and d["rows"][0]["x_profile"] == 1.0
    assert d["top_ops_profile"] and 0 < d["top_ops_profile"][0]["share_pct"] <= 100
    assert d["input_size"] == 192 and d["freeze_stages"] == 7 and d["isa"] == "native"
    assert (tmp_path / "levers.card.json").is_file()
    # a fused optimiser keeps the two parameter groups and their learning-rate scales
    trainer = bench.trainer_for("fused-adamw", bench.resolve("cpu", {"data_dir": "unused"}).config, 8, str(tmp_path / "t"))
    assert trainer.optimizer.defaults["fused"] and [g["lr_scale"] for g in trainer.optimizer.param_groups] == [1.0, 1.0]
    with pytest.raises(SystemExit):
        bench.main(["--steps", "0"])


def test_bench_views_measures_the_cached_views_against_the_stage_pass(sample_dir, sample_cache_dir, tmp_path):
    out = tmp_path / "views.json"
    assert load_script("bench_views").main([
        "--data-dir", str(sample_dir), "--cache-dir", str(sample_cache_dir), "--profile", "sample", "--images", "12",
        "--views", "3", "--live-batch", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["metrics"]
    assert m["stage_bytes_per_image"] == 2 * 192 * 6 * 6  # float16 maps of stages [0, 7) at 192 px
    full = m["full_data_extrapolated"]
    assert full["views_extra_gib"] == pytest.approx(3 * full["stage_cache_gib"])  # K views: K x the disk
    assert m["view_pass_over_stage_pass"] == pytest.approx(m["per_image"]["view_pass_ms"] / m["per_image"]["stage_pass_ms"])
    assert res["machine"]["cpu_flags"] is not None and res["config"]["images"] == 12
    assert (tmp_path / "views.card.json").is_file()
    assert load_script("bench_views").main(["--data-dir", str(sample_dir), "--images", "0"]) == 2


def test_benchmark_card_beside_its_results_and_kept_only_when_asked(tmp_path, monkeypatch):
    results = tmp_path / "bench.json"
    results.write_text('{"rows": []}\n')
    card = write_benchmark_card("bench_x", results, ["--n", "3"])
    assert card == tmp_path / "bench.card.json"
    c = json.loads(card.read_text())
    assert c["command"] == "python benchmarks/bench_x.py --n 3" and c["results"] == "bench.json"
    assert not (paths.KEPT_RUNS / "bench_x").exists()  # results outside benchmarks/results stay put
    keep = tmp_path / "kept"
    write_benchmark_card("bench_x", results, [], keep=keep)
    assert (keep / "bench.json").read_text() == results.read_text() and (keep / "card.json").is_file()
    # the default folder (ignored by git) is never the only copy
    monkeypatch.setattr(paths, "BENCH_RESULTS", tmp_path)
    monkeypatch.setattr(paths, "KEPT_RUNS", tmp_path / "runs")
    write_benchmark_card("bench_x", results, [])
    assert (tmp_path / "runs" / "bench_x" / "bench.json").is_file()


@pytest.mark.parametrize("script,results,name", [
    ("bench_ablation", "benchmarks/results/ablation.json", "bench_ablation"),
    ("bench_ablation", "benchmarks/results/ablation_fine.json", "bench_ablation-fine"),
    ("bench_step_cost", "out/step_cost_backbone.json", "bench_step_cost-backbone"),
    ("bench_step_levers", "step_levers_avx2.json", "bench_step_levers-avx2"),
    ("bench_budget_load", "budget_quiet.json", "bench_budget_load-budget-quiet"),
])
def test_one_script_keeps_a_card_per_results_file(script, results, name):
    assert card_name(script, results) == name
