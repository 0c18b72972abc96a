"""The benchmark scripts run and their outputs say what they claim (small sizes, not timings)."""

import importlib.util
import json

import pytest

from conftest import REPO


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


@pytest.mark.slow
def test_bench_quality_time_curves(sample_dir, sample_cache_dir, tmp_path):
    out = tmp_path / "quality_time.json"
    assert load_script("bench_quality_time").main([
        "--data-dir", str(sample_dir), "--max-classes", "20", "--cache-dir", str(sample_cache_dir),
        "--profile", "sample", "--budget-min", "0.05", "--eval-every-min", "0.02",
        "--val-queries", "60", "--db-per-class", "30", "--probe-steps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    curves = {c["name"]: c for c in res["curves"]}
    assert set(curves) == {"profile", "full"}
    assert res["info"]["val_queries"] == 60 and res["info"]["db_images"] == 600
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
