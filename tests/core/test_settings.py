"""The one resolver (`ranking_lib.core.settings.resolve`): profile < ``--config FILE`` < flags,
and what a config file's ``run_dir`` says about the run a command works on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ranking_lib import cli
from ranking_lib.core import settings
from ranking_lib.core.config import RunConfig


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_partial_config_changes_only_the_fields_it_names(tmp_path):
    profile = settings.resolve("demo").config
    cfg = settings.resolve("demo", config_file=_write(tmp_path / "p.json", {"steps": 3})).config
    assert cfg.steps == 3
    # every other field is the profile's, not RunConfig's default
    differs = {k for k, v in profile.to_dict().items() if v != RunConfig.from_dict({}).to_dict()[k]}
    assert {"data_dir", "run_dir", "num_triplets"} <= differs
    assert {k: v for k, v in cfg.to_dict().items() if k != "steps"} == \
        {k: v for k, v in profile.to_dict().items() if k != "steps"}
    assert cfg.num_triplets == 4000 and cfg.data_dir == profile.data_dir and cfg.run_dir == profile.run_dir
    # flags still win over the file
    assert settings.resolve("demo", {"steps": 5}, config_file=tmp_path / "p.json").config.steps == 5


def test_config_steps_turn_an_inherited_budget_off_as_the_flag_does(tmp_path):
    assert settings.resolve("cpu").config.budgeted
    cfg = settings.resolve("cpu", config_file=_write(tmp_path / "p.json", {"steps": 30})).config
    assert cfg.steps == 30 and not cfg.budgeted


@pytest.mark.parametrize("data,msg", [({"stepz": 3}, "unknown config field(s): stepz"),
                                      ({"steps": "many"}, "config field steps expects int"),
                                      ([1, 2], "must hold a JSON object")])
def test_bad_partial_config_is_one_line_naming_the_file(tmp_path, data, msg):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="config file") as e:
        settings.resolve("demo", config_file=path)
    assert msg in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_copied_runs_config_says_which_run_it_works_on(tmp_path, capsys):
    a = tmp_path / "A"
    a.mkdir()
    RunConfig.from_dict({"run_dir": str(a), "data_dir": str(tmp_path / "nodata")}).save(a / "config.json")
    b = Path(shutil.copytree(a, tmp_path / "B"))
    s = settings.resolve(None, config_file=b / "config.json")
    assert s.config.run_dir == str(a)
    assert len(s.notes) == 1 and f"sets run_dir {a}, not the folder it is in ({b})" in s.notes[0]
    assert f"--run-dir {b}" in s.notes[0]
    own = settings.resolve(None, config_file=a / "config.json").notes
    assert own == [f"run directory {a} (from --config {a / 'config.json'})"]
    assert settings.resolve(None, {"run_dir": str(b)}, config_file=b / "config.json").notes == []
    # the command line prints it before any work (here the data dir is missing: one error line after it)
    assert cli.main(["prepare", "--config", str(b / "config.json")]) == 2
    out = capsys.readouterr()
    assert out.out.startswith(f"note: --config {b / 'config.json'} sets run_dir {a}")
