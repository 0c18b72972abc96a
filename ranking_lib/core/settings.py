"""Profiles and overrides -> one `RunConfig` (+ the process environment): the one resolver used by
the CLI, the notebook runner and the benchmarks.

Order: ``profiles/<name>.yaml`` (shipped in the package: ``ranking_lib/profiles/``) <
``--config FILE`` (a saved ``config.json``) < explicit overrides. Relative paths (``data_dir``,
``run_dir``, ``cache_dir``) in a profile are relative to the source checkout the package runs
from (`paths.checkout_root`), or to the current directory when the package is installed; those
given on the command line or in a config file are relative to the current directory. All come
out absolute.

Notebooks resolve their parameters cell (``profile``, ``overrides`` and a few named knobs) with
:func:`notebook_config`, through the same :func:`resolve`, so a notebook, the CLI and the
runner give the same `RunConfig` for the same profile.

A profile may also hold the runner's keys: ``env`` (environment variables of the processes that
do the work, e.g. glibc allocator settings, which only act when set before a process starts:
:func:`apply_env` re-executes a command-line process once with them) and ``make_demo_data``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ranking_lib.core.log import show_messages
from ranking_lib.core.config import RETIRED_FIELDS, RunConfig, coerce_field
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import read_json

from ranking_lib.core.paths import PROFILE_DIR, base_dir

RUNNER_KEYS = frozenset({"make_demo_data", "env"})  # profile keys that are not RunConfig fields
PATH_KEYS = ("data_dir", "run_dir", "cache_dir")
BUDGET_KEYS = ("train_minutes", "budget_minutes")  # the time budget; explicit steps turn both off
_SCI = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_ENV_APPLIED = "RANKING_PROFILE_ENV_APPLIED"


def yaml_value(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string: such strings become floats."""
    return float(value) if isinstance(value, str) and _SCI.match(value) else value


def parse_yaml_scalar(text: str) -> Any:
    """A value written on a command line (``--set lr=3e-4 ks=[1,5]``), parsed as YAML."""
    import yaml

    try:
        return yaml_value(yaml.safe_load(text) if text.strip() else None)
    except yaml.YAMLError as e:
        raise RankingError(f"value {text!r} is not valid YAML ({getattr(e, 'problem', None) or e})") from None


def profile_path(name: str | Path) -> Path:
    name = str(name)
    return Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"


def load_profile(name: str | Path, _seen: tuple = ()) -> dict[str, Any]:
    """Settings of ``profiles/<name>.yaml`` (or of a .yaml path): RunConfig fields plus the
    runner's keys (:data:`RUNNER_KEYS`), values as written (paths not yet resolved).

    ``extends: OTHER`` starts from profile OTHER's settings (its ``env`` merged key by key)."""
    import yaml

    path = profile_path(name)
    if not path.is_file():
        avail = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise RankingError(f"profile not found: {path} (available: {avail})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RankingError(f"profile {path} is not valid YAML ({problem}{where})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RankingError(f"cannot read profile {path} ({e})") from None
    if not isinstance(data, dict):
        raise RankingError(f"profile {path} must be a mapping of settings")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise RankingError(f"profile {path}: env must be a mapping of VARIABLE: value")
    data = {k: yaml_value(v) for k, v in data.items()}
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if str(parent) in _seen + (str(name),):
        raise RankingError(f"profile {path}: 'extends: {parent}' makes a cycle")
    base = load_profile(parent, _seen + (str(name),))
    merged_env = {**(base.get("env") or {}), **env}
    out = {**base, **data}
    if "steps" in data and not {"train_minutes", "budget_minutes"} & set(data):
        for key in BUDGET_KEYS:  # a profile's own steps win over an inherited budget
            out.pop(key, None)
    if merged_env:
        out["env"] = merged_env
    return out


@dataclass
class Settings:
    """What a profile plus overrides resolve to."""

    config: RunConfig
    env: dict[str, str] = field(default_factory=dict)
    make_demo_data: bool = False
    explicit: frozenset = frozenset()
    """The RunConfig fields the profile, config file or overrides set (the rest are defaults)."""
    notes: list[str] = field(default_factory=list)
    """What the caller should say about the resolution (the run directory a config file chose)."""


def _absolute(value: Any, base: Path) -> Any:
    if value is None or not isinstance(value, (str, Path)) or not str(value).strip():
        return value
    return str((base / Path(value).expanduser()).resolve())


def resolve(profile: str | Path | None = None, overrides: dict[str, Any] | None = None,
            config_file: str | Path | None = None, cwd: str | Path | None = None) -> Settings:
    """Resolve settings (see the module docstring); every field validated (RankingError)."""
    cwd = Path(cwd or os.getcwd())
    values: dict[str, Any] = {}
    runner: dict[str, Any] = {}
    if profile:
        for k, v in load_profile(profile).items():
            if k in RUNNER_KEYS:
                runner[k] = v
            else:
                values[k] = _absolute(v, base_dir()) if k in PATH_KEYS else v
    notes = []
    if config_file:
        given = config_fields(config_file)
        values.update({k: _absolute(v, cwd) if k in PATH_KEYS else v for k, v in given.items()})
        if "steps" in given and not set(BUDGET_KEYS) & set(given):  # as --steps: the file's steps win
            values.update(dict.fromkeys(BUDGET_KEYS))
        if "run_dir" in given and "run_dir" not in (overrides or {}):
            notes.append(config_run_dir_note(config_file, values["run_dir"]))
    for k, v in (overrides or {}).items():
        if k in RUNNER_KEYS:
            runner[k] = v
        else:
            values[k] = _absolute(v, cwd) if k in PATH_KEYS else v
    if "steps" in (overrides or {}):  # steps given explicitly win over a time budget
        values.update(dict.fromkeys(BUDGET_KEYS))
    unknown = sorted(set(values) - set(RunConfig.field_names()))
    if unknown:
        raise RankingError(f"unknown setting(s): {', '.join(unknown)} (not RunConfig fields)")
    if "run_dir" not in values:
        name = Path(str(profile)).stem if profile else "default"
        values["run_dir"] = str((base_dir() / "runs" / name).resolve())
    env = runner.get("env") or {}
    if not isinstance(env, dict):
        raise RankingError("env must be a mapping of VARIABLE: value")
    if any(values.get(k) is not None for k in BUDGET_KEYS) and "steps" not in (overrides or {}):
        chosen = planned_steps(values["run_dir"], values.get("train_minutes"), values.get("budget_minutes"))
        if chosen is not None:  # after training: the steps this run's budget chose, not the profile's
            values["steps"] = chosen
    return Settings(RunConfig.from_dict(values), {str(k): str(v) for k, v in env.items()},
                    bool(runner.get("make_demo_data", False)), frozenset(values), notes)


def config_fields(path: str | Path) -> dict[str, Any]:
    """The fields a config file names, each typed (`coerce_field`; one line naming the file): a
    partial file changes only those (the profile's other settings stay), a run's ``config.json``
    all of them."""
    data = read_json(Path(path), "config file")
    if not isinstance(data, dict):
        raise RankingError(f"config file {path} must hold a JSON object of settings, not {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in RETIRED_FIELDS}
    unknown = sorted(set(data) - set(RunConfig.field_names()))
    if unknown:
        raise RankingError(f"config file {path}: unknown config field(s): {', '.join(unknown)}")
    try:
        typed = {k: coerce_field(k, v) for k, v in data.items()}
    except RankingError as e:
        raise RankingError(f"config file {path}: {e}") from None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in typed.items()}


def config_run_dir_note(path: str | Path, run_dir: str) -> str:
    """The line saying which run directory a config file's ``run_dir`` chose (another folder than
    the file's own: a copied run's config.json still names the original)."""
    here = Path(path).expanduser().resolve().parent
    if Path(run_dir) == here:
        return f"run directory {run_dir} (from --config {path})"
    return (f"--config {path} sets run_dir {run_dir}, not the folder it is in ({here}): this command works on "
            f"{run_dir}; pass --run-dir {here} to work on the copy")


def planned_steps(run_dir: str | Path, train_minutes: float | None, budget_minutes: float | None = None) -> int | None:
    """The steps the time budget (`train_minutes`, `budget_minutes`) chose for the run in
    `run_dir` (its ``config.json``, written when training started), or None when it has not been
    planned with that budget."""
    saved = read_json(Path(run_dir) / "config.json", "run config", missing_ok=True)
    if not isinstance(saved, dict) or all(saved.get(k) is None for k in BUDGET_KEYS):
        return None
    steps = saved.get("steps")
    if not same_budget(saved, {"train_minutes": train_minutes, "budget_minutes": budget_minutes}) \
            or isinstance(steps, bool) or not isinstance(steps, int):
        return None
    return steps


def same_budget(a: dict, b: dict) -> bool:
    """Whether two configs (as dicts) have the same time budget (`BUDGET_KEYS`)."""
    def minutes(v):
        return None if v is None else float(v)
    return all(minutes(a.get(k)) == minutes(b.get(k)) for k in BUDGET_KEYS)


def notebook_config(profile: str | Path | None = None, overrides: dict[str, Any] | None = None,
                    cwd: str | Path | None = None, **knobs: Any) -> RunConfig:
    """The `RunConfig` of a notebook's parameters cell: `profile` < `overrides` < the named
    `knobs` that are not None (``run_dir=..., steps=...``), resolved by :func:`resolve` exactly
    as the CLI resolves ``--profile P --<field> value`` (relative paths: relative to `cwd`, the
    notebook's folder by default). From then on the library's log lines show (`core.log`)."""
    show_messages()  # a notebook shows the library's log lines in its cells' output
    knobs = {k: v for k, v in knobs.items() if v is not None}
    both = sorted(set(knobs) & set(overrides or {}))
    if both:
        raise RankingError(f"notebook parameter(s) {', '.join(both)} set twice (as a parameter and in overrides)")
    return resolve(profile, {**(overrides or {}), **knobs}, cwd=cwd).config


def apply_env(env: dict[str, str], reexec_argv: list[str] | None = None) -> None:
    """Put `env` into this process's environment (children inherit it). With `reexec_argv`, a
    process started without it is replaced once by ``python <reexec_argv>`` with it set, so that
    settings read at process start (glibc's MALLOC_*) act on this process too."""
    missing = {k: v for k, v in env.items() if os.environ.get(k) != v}
    if not missing:
        return
    os.environ.update(missing)
    if reexec_argv is not None and os.environ.get(_ENV_APPLIED) != "1":
        os.environ[_ENV_APPLIED] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *reexec_argv], dict(os.environ))
