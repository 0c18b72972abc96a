"""Stage features (`models.stage_cache`) damaged on disk: NaN written into them is caught,
logged naming the file, and the features are rebuilt bit-identical."""

from __future__ import annotations

import numpy as np
from faults import demo_dirs  # noqa: F401 (fixtures, requested by name)
from faults import demo_flags, run_cli


def test_nan_in_stage_features_is_caught_and_rebuilt(demo_dirs, capsys, tmp_path, caplog):
    run = tmp_path / "run"
    flags = demo_flags(demo_dirs, run, freeze_stages=7, cache_stage_features=True, cache_dir=tmp_path / "cache")
    for s in ("prepare", "sample", "train"):
        assert run_cli([s] + flags, capsys)[0] == 0
    stage = sorted((tmp_path / "cache").glob("stage_train_*.npy"))
    assert len(stage) == 1
    good = np.array(np.load(stage[0]))
    arr = np.load(stage[0], mmap_mode="r+")
    arr[3] = np.nan
    arr.flush()
    del arr
    with caplog.at_level("WARNING"):
        rc, err = run_cli(["train", "--no-resume"] + flags, capsys)
    assert rc == 0, err
    assert any(stage[0].name in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(stage[0]), good)
