"""Tiny, fast runs for the tests that drive `ranking_lib.cli`: their flags, and a finished run
with embeddings for the explorer's tests."""

from __future__ import annotations

from pathlib import Path

TINY = dict(input_size=32, embedding_dim=16, batch_size=4, steps=4, num_triplets=64, val_triplets=20,
            checkpoint_every=2, log_every=1, train_eval_queries=20, embed_batch_size=32, lr=0.01,
            near_dup_queries=20)


def tiny_flags(data, run, cache, /, **over) -> list[str]:
    """``--quiet`` and ``--<field> value`` (``--<field>`` / ``--no-<field>`` for booleans) for a
    tiny run: `TINY` < `over`."""
    s = dict(data_dir=data, cache_dir=cache, run_dir=run, **TINY)
    s.update(over)
    out = ["--quiet"]
    for k, v in s.items():
        flag = k.replace("_", "-")
        out += [f"--{flag}" if v else f"--no-{flag}"] if isinstance(v, bool) else [f"--{flag}", str(v)]
    return out


def embedded_run(root, steps: int) -> Path:
    """A 4-class demo dataset under `root` and a run on it trained for `steps` steps with trained
    and baseline embeddings (no evaluate: the explorer needs embeddings only); returns the run dir."""
    from data_scripts.make_demo_dataset import make_demo_dataset
    from ranking_lib import cli

    data = make_demo_dataset(root / "data", num_classes=4, train_per_class=15, val_per_class=4, seed=1)
    run = root / "run"
    flags = ["--data-dir", str(data), "--run-dir", str(run), "--input-size", "32", "--embedding-dim", "8",
             "--steps", str(steps), "--batch-size", "4", "--num-triplets", "16", "--val-triplets", "8", "--quiet"]
    for step in (["prepare"], ["sample"], ["train"], ["embed", "--model", "trained"], ["embed", "--model", "baseline"]):
        assert cli.main([*step, *flags]) == 0, step
    return run
