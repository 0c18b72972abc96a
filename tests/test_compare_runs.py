"""`tools/compare_runs.py` finds a run equal to its copy elsewhere and names what differs."""

import json
import shutil

import numpy as np
import torch

from ranking_lib.training.checkpoint import save_checkpoint
from tools import compare_runs


def _run(d, weight=1.0, loss="0.5", p30=61.0):
    (d / "checkpoints").mkdir(parents=True)
    save_checkpoint(d / "checkpoints" / "last.pt", {"model": {"w": torch.full((3,), weight)}, "step": 10,
                                                    "steps_history": [[0, 10]], "replans": [],
                                                    "config": {"steps": 10, "run_dir": str(d)}})
    (d / "loss_log.csv").write_text(f"step,loss,lr,elapsed_s\n0,{loss},0.001,{np.random.rand():.3f}\n")
    np.savez(d / "embeddings_trained_val.npz", embeddings=np.ones((4, 2), np.float32), paths=np.array([str(d)] * 4))
    (d / "metrics_trained.json").write_text(json.dumps({"val": {"precision@30": p30}, "run_dir": str(d),
                                                        "embed_s": np.random.rand()}))
    return d


def test_a_copy_is_equal_and_each_kind_of_difference_is_named(tmp_path, capsys):
    a = _run(tmp_path / "a")
    assert compare_runs.main([str(a), str(_run(tmp_path / "b"))]) == 0  # only paths and times differ
    assert "4 of 4 files equal" in capsys.readouterr().out
    for name, kwargs, says in (("w", {"weight": 2.0}, "1 of 1 tensors differ (first w)"),
                               ("l", {"loss": "0.6"}, "loss_log.csv: row 0 differs"),
                               ("m", {"p30": 60.0}, "metrics_trained.json: differs")):
        assert compare_runs.main([str(a), str(_run(tmp_path / name, **kwargs))]) == 1
        assert says in capsys.readouterr().out
    c = tmp_path / "c"
    shutil.copytree(a, c)
    (c / "embeddings_trained_val.npz").unlink()
    assert compare_runs.main([str(a), str(c)]) == 1
    assert "embeddings_trained_val.npz: missing in" in capsys.readouterr().out
    assert compare_runs.main([str(a), str(tmp_path / "none")]) == 2
    capsys.readouterr()
    (c / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")  # damaged: one line, exit 2
    assert compare_runs.main([str(a), str(c)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read checkpoint") and err.count("\n") == 1
