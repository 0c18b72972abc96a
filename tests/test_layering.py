"""The library's shape as docs/DESIGN.md states it: imports point down its layers only, every
module has its row, and the README's layout table names what the tree holds."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ranking_lib"
DESIGN = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")


def layers() -> list[set[str]]:
    """DESIGN.md's chain ``a`` < ``b``, ``c`` < ...: sets of folders / top-level modules, lowest first."""
    sentence = DESIGN[DESIGN.index("Imports point down only"):]
    chain = re.search(r"`[\w.]+`(?:\s*[<,]\s*`[\w.]+`)+", sentence).group(0)
    return [set(re.findall(r"`([\w.]+)`", group)) for group in chain.split("<")]


def unit(path: Path) -> str:
    """The layer unit of a module: its folder under ranking_lib/, or the top-level module's name."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_units(source: str, package: tuple[str, ...]) -> set[tuple[str, int]]:
    """(unit, line) of every ranking_lib import in a module of `package` (``("ranking_lib",
    "core")``), those inside functions included."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the module's own package
                base = ".".join(package[:len(package) - node.level + 1] + ((base,) if base else ()))
            names = [f"{base}.{a.name}" for a in node.names] if base == "ranking_lib" else [base]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ranking_lib" and len(parts) > 1:
                out.add((parts[1], node.lineno))
    return out


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_design_places_every_folder_and_top_module_in_one_layer():
    placed = [u for layer in layers() for u in layer]
    assert len(placed) == len(set(placed)), "a name is in two layers of DESIGN.md"
    units = {unit(p) for p in modules()}
    assert units - set(placed) == set(), "folders/modules missing from DESIGN.md's import order"
    assert set(placed) - units == set(), "DESIGN.md's import order names what the tree lacks"


def test_imports_point_down_only():
    rank = {u: i for i, layer in enumerate(layers()) for u in layer}
    wrong = []
    for path in modules():
        me = unit(path)
        package = path.relative_to(ROOT).with_suffix("").parts[:-1]
        for target, line in imported_units(path.read_text(encoding="utf-8"), package):
            if target != me and rank.get(target, -1) >= rank[me]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({me}) imports {target}")
    assert not wrong, "imports that do not point down (docs/DESIGN.md):\n" + "\n".join(sorted(wrong))


def test_the_config_stops_at_the_workflow_boundary():
    """Below `run_files` / `run_settings` (the layers that turn a `RunConfig` into plain arguments)
    nothing reads a config: data, models, triplets, training, retrieval and collection never import
    `core.config`, nor does `core` beyond the config itself and its one resolver (`core.plan`'s
    estimate reads a plain `Workload`). `reporting` describes a finished run's config.json and may."""
    below = {"data", "models", "triplets", "training", "retrieval", "collection", "core"}
    allowed = {PACKAGE / "core" / "config.py", PACKAGE / "core" / "settings.py"}
    wrong = []
    for path in modules():
        if unit(path) not in below or path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if "ranking_lib.core.config" in names:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # nor is one handed in untyped
                params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                wrong += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({a.arg})" for a in params
                          if a.arg == "cfg" or (a.annotation is not None and "RunConfig" in ast.unparse(a.annotation))]
    assert not wrong, "a config read below the workflow boundary: " + ", ".join(wrong)


def test_the_check_sees_every_shape_of_an_import():
    """Absolute, from the package, inside a function, relative: all are seen."""
    src = ("from ranking_lib.models.backbones import BACKBONES\n"
           "def f():\n    from ranking_lib import workflow\n    import ranking_lib.retrieval.index\n"
           "from ..training import trainer\nfrom . import errors\nimport numpy\n")
    found = {t for t, _ in imported_units(src, ("ranking_lib", "core"))}
    assert found == {"models", "workflow", "retrieval", "training", "core"}


def test_design_has_a_row_for_every_module_and_none_for_a_missing_one():
    table = [ln for ln in DESIGN.splitlines() if ln.startswith("| `")]
    named = {m for ln in table for m in re.findall(r"`([\w/]+\.py)`", ln.split("|")[1])}
    present = {str(p.relative_to(PACKAGE)) for p in modules() if p.name != "__init__.py"}
    assert present - named == set(), "modules without a row in docs/DESIGN.md"
    assert named - present == set(), "rows of docs/DESIGN.md for modules the tree lacks"
    rows = [ln.split("|")[1].strip() for ln in table]
    assert len(rows) == len(set(rows)), "a module has two rows in docs/DESIGN.md"
    for folder in ("report", "benchmarks", "scripts", "cluster", "data_scripts"):
        assert f"`{folder}/`" in DESIGN, folder


def test_readme_layout_names_every_folder_benchmark_and_script():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 1)]
    row = {ln.split("|")[1].strip(" `"): ln for ln in layout.splitlines() if ln.startswith("| `")}
    for folder in ("ranking_lib/", "notebooks/", "data_scripts/", "report/", "benchmarks/", "scripts/", "cluster/",
                   "tests/", "tools/"):
        assert folder in row, folder
    missing = [p.name for p in sorted((ROOT / "benchmarks").glob("bench_*.py")) if f"`{p.name}`" not in row["benchmarks/"]]
    missing += [p.name for p in sorted((ROOT / "scripts").iterdir()) if p.is_file() and f"`{p.name}`" not in row["scripts/"]]
    missing += [p.name for p in sorted((ROOT / "tools").glob("*.py")) if f"`{p.name}`" not in row["tools/"]]
    assert not missing, "not in the README's layout table"
    for path in modules():
        rel = path.relative_to(PACKAGE)
        folder = f"`{rel.parts[0]}/`" if len(rel.parts) > 1 else None
        if folder and path.stem != "__init__":
            assert re.search(rf"{re.escape(folder)} \([^)]*\b{path.stem}\b", row["ranking_lib/"]), rel
        elif not folder:
            assert f"`{path.stem}`" in row["ranking_lib/"], rel


def test_test_folders_mirror_the_package():
    """``tests/<folder>/`` holds the tests of ``ranking_lib/<folder>/``: every test folder is a
    package folder, and no test file sits deeper than one folder."""
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders and folders <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}, folders
    assert not [p for p in tests.glob("*/*/test_*.py")]
    assert {"core", "training", "retrieval"} <= folders


def test_no_library_module_is_over_450_lines():
    """A module a maintainer reads in one sitting: split by concept past 450 lines."""
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, long
