"""benchmarks/bench_gpu_synthetic.py at tiny size on the CPU: the JSON has every measurement,
each positive, the card sits beside it, and the device search finds the same top-30 sets as
`EmbeddingIndex`. Sizes here are far from the GPU run's (100,000 images, 200 classes); these
numbers are not timings to keep."""

import json

import numpy as np
import pytest

from test_benchmarks import load_script


@pytest.mark.slow
def test_bench_gpu_synthetic_measures_training_embedding_and_search(tmp_path, capsys):
    out = tmp_path / "gpu_synthetic.json"
    bench = load_script("bench_gpu_synthetic")
    assert bench.main(["--images", "400", "--classes", "8", "--seconds", "1", "--device", "cpu", "--input-size", "32",
                       "--batch-size", "8", "--embed-batch-size", "128", "--queries", "50", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 400 and r["classes"] == 8 and r["batch_size"] == 8 and r["input_size"] == 32
    assert "no quality" in r["what"] and r["gpu"] is None and r["cudnn_benchmark"] == "n/a (CPU)"
    t, e, s = r["train"], r["embed"], r["search"]
    assert len(t["first_steps_s"]) == 3 and all(x > 0 for x in t["first_steps_s"])
    assert t["steps"] >= 1 and t["steps_per_s"] > 0 and abs(t["triplets_per_s"] - 8 * t["steps_per_s"]) < 0.1
    assert e["images"] == 400 and e["images_per_s"] > 0 and e["first_batch_s"] > 0
    assert s["database"] == 400 and s["queries"] == 50 and s["k"] == 30 and s["dim"] == 200
    assert s["device_torch_s"] > 0 and s["index_cpu_torch_s"] > 0 and s["same_topk_sets"] == 1.0
    card = json.loads((tmp_path / "gpu_synthetic.card.json").read_text())
    assert card["name"] == "bench_gpu_synthetic" and card["results"] == out.name
    assert set(card["phases"]) == {"generate", "train", "embed", "search"}
    assert "| training |" in capsys.readouterr().out


def test_synthetic_images_use_every_class_and_are_seeded():
    bench = load_script("bench_gpu_synthetic")
    a, la = bench.synthetic_images(100, 7, seed=3)
    b, lb = bench.synthetic_images(100, 7, seed=3)
    assert a.shape == (100, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la).tolist() == [15, 15] + [14] * 5


def test_too_few_images_is_one_line(tmp_path, capsys):
    bench = load_script("bench_gpu_synthetic")
    assert bench.main(["--images", "10", "--classes", "8", "--device", "cpu", "--out", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip() == "error: --images 10 must be at least twice --classes 8 (>= 2)"
