"""Checkpoints and resume (`training.checkpoint`) under faults: changed settings on resume,
--no-resume, hostile and empty checkpoints, and Ctrl-C during training.

Each case asserts the one-line message, the exit status and that the last good file is intact.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from faults import demo_data, demo_dirs, embedded  # noqa: F401 (fixtures, requested by name)
from faults import copy_run, data_flags, demo_cfg, demo_flags, prepared, run_cli, run_cli_out, signalled_training

from ranking_lib import cli, workflow
from ranking_lib.core.errors import CheckpointError
from ranking_lib.training.checkpoint import FORMAT, read_checkpoint, save_checkpoint


def test_no_resume_really_starts_fresh(demo_dirs, capsys, tmp_path):
    run, flags = prepared(demo_dirs, capsys, tmp_path, ("prepare", "sample", "train", "embed", "evaluate"))
    rc, err = run_cli(["train", "--no-resume"] + demo_flags(demo_dirs, run, steps=2, lr=0.02), capsys)
    assert rc == 0, err
    cfg = demo_cfg(demo_dirs, run, steps=2, lr=0.02)
    assert list(workflow.load_loss_log(cfg)["step"]) == [0, 1]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert json.loads((run / "train_summary.json").read_text())["steps_history"] == [[0, 2]]
    # the old run's embeddings and metrics are gone, not passed off as the new run's
    assert not (run / "embeddings_trained_val.npz").exists() and not (run / "metrics_trained.json").exists()


def test_resume_refuses_changed_settings_and_records_extensions(demo_dirs, capsys, tmp_path):
    run, flags = prepared(demo_dirs, capsys, tmp_path, ("prepare", "sample", "train"))
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    config_before = (run / "config.json").read_text()
    for change, shown in [({"lr": 0.02}, "lr=0.01 (now 0.02)"), ({"batch_size": 8}, "batch_size=4 (now 8)"),
                          ({"optimizer": "adamw"}, "optimizer='sgd' (now 'adamw')"),
                          ({"freeze_stages": 3}, "freeze_stages=0 (now 3)"),
                          ({"steps": 3}, "is at step 4, past steps=3")]:
        rc, err = run_cli(["train"] + demo_flags(demo_dirs, run, **change), capsys)
        assert rc == 2 and len(err) == 1, (change, err)
        assert shown in err[0] and "--no-resume" in err[0], err[0]
    assert ckpt.read_bytes() == good and (run / "config.json").read_text() == config_before
    # triplets re-sampled behind the checkpoint's back (same settings, other content)
    trip = np.load(run / "triplets_train.npy")
    from ranking_lib.triplets.samplers import save_triplets
    save_triplets(run / "triplets_train.npy", trip[::-1].copy(), {"split": "train"})
    rc, err = run_cli(["train"] + demo_flags(demo_dirs, run, steps=6), capsys)
    assert rc == 2 and "was trained on other triplets" in err[0]
    save_triplets(run / "triplets_train.npy", trip, {"split": "train"})
    # more steps: allowed, and recorded honestly
    assert run_cli(["train"] + demo_flags(demo_dirs, run, steps=6), capsys)[0] == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps_history"] == [[0, 4], [4, 6]] and summary["resumed_from"] == 4
    assert summary["steps_run"] == 2
    # already there: nothing to run; the summary of the run that trained stays, and the result
    # reports the last logged loss, not NaN
    result = workflow.train(demo_cfg(demo_dirs, run, steps=6), progress=False)
    assert result.steps_run == 0 and result.steps == 6 and result.final_loss == pytest.approx(
        float(workflow.load_loss_log(demo_cfg(demo_dirs, run))["loss"].iloc[-1]))
    assert json.loads((run / "train_summary.json").read_text()) == summary


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_checkpoint_runs_no_code(demo_dirs, capsys, tmp_path):
    run, flags = prepared(demo_dirs, capsys, tmp_path)
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"format": FORMAT, "step": 1, "model": {}, "payload": _Evil(marker)}, ckpt)
    for step in ("train", "embed"):
        rc, err = run_cli([step] + flags, capsys)
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: refusing to load {ckpt}: it holds objects other than tensors")
    with pytest.raises(CheckpointError, match="could run code"):
        read_checkpoint(ckpt)
    assert not marker.exists()
    # a real checkpoint (model + optimizer state + config) still loads under weights_only
    save_checkpoint(tmp_path / "ok.pt", {"step": 3, "config": {"ks": [1, 2]}, "model": {"w": torch.ones(2)},
                                         "optimizer": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1,
                                                                      momentum=0.9).state_dict()})
    assert read_checkpoint(tmp_path / "ok.pt")["step"] == 3


def test_empty_checkpoint_is_named(embedded, tmp_path, capsys):
    run, flags = copy_run(embedded, tmp_path)
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes(b"")
    for cmd in (["train"], ["embed"]):
        rc, err, _ = run_cli_out(cmd + flags, capsys)
        assert rc == 2 and len(err) == 1 and f"checkpoint {ckpt} is empty (0 bytes" in err[0], err
    assert ckpt.read_bytes() == b""
    ckpt.write_bytes(b"PK\x03\x04")  # a truncated file: says it is damaged, not a bare "EOFError:"
    rc, err, _ = run_cli_out(["train"] + flags, capsys)
    assert rc == 2 and len(err) == 1 and "not a checkpoint file, or damaged (" in err[0], err


def test_ctrl_c_during_train_is_one_line_and_the_next_train_resumes_where_it_says(demo_data, tmp_path, capsys):
    # as from a terminal: a suite started in the background (nohup, `&`) has SIGINT ignored, and
    # the child would inherit that
    run, cache, proc, stderr = signalled_training(demo_data, tmp_path, capsys, signal.SIGINT, rows=8,
                                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 130 and len(err) == 1, stderr
    assert err[0].startswith("error: interrupted: train stopped after step ") and "Traceback" not in stderr
    said = int(err[0].split("resumes from step ")[1].split(" ")[0].replace(",", ""))
    from ranking_lib.training.checkpoint import read_checkpoint

    assert said >= 3 and said % 3 == 0 and read_checkpoint(run / "checkpoints" / "last.pt")["step"] == said
    cfg = cli.config_from_args(cli.build_parser().parse_args(["train"] + data_flags(demo_data, run, cache, steps=said + 1,
                                                                                   checkpoint_every=3)))
    result = workflow.train(cfg, progress=False)
    assert result.resumed_from == said and result.steps == said + 1
