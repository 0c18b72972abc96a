"""Null settings in a config file (`core.config`): one line naming the field unless its type
allows null.

Each case asserts the one-line message, the exit status and that nothing was written.
"""

from __future__ import annotations

import json

import pytest
from faults import run_cli_out


NULL_FIELDS = ["run_dir", "data_dir", "lr", "device", "seed", "ks", "steps", "pretrained", "augment",
               "squared_distance"]


@pytest.mark.parametrize("field", NULL_FIELDS)
def test_null_in_a_config_file_is_one_line_unless_the_type_allows_it(field, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({field: None}))
    rc, err, _ = run_cli_out(["sample", "--config", cfg, "--run-dir", tmp_path / "run"], capsys)
    assert rc == 2 and len(err) == 1 and f"config field {field} expects" in err[0] and "got null" in err[0], err
    assert not (tmp_path / "run").exists()


def test_null_where_the_type_allows_it_is_accepted():
    from ranking_lib.core.config import RunConfig

    cfg = RunConfig.from_dict({"max_classes": None, "cache_dir": None, "num_threads": None, "index_nlist": None})
    assert cfg.max_classes is None and cfg.cache_dir is None
