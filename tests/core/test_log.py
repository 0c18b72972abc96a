"""The library's one logger (`core.log`): its modules log; only the entry points print."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from ranking_lib.core import log

PACKAGE = Path(__file__).resolve().parents[2] / "ranking_lib"

# Where printing is the job: the command line and its commands' own output, the server's URL line,
# and the progress display (a bar's stand-in, not a message).
PRINTS = {
    "cli.py": None,  # the whole module is the command line
    "verify.py": {"main_verify"},
    "own_images.py": {"run_command"},
    "data/demo.py": {"main"},
    "explore_server.py": {"main", "_say_url"},
    "core/progress.py": {"_line"},
}


def _printing_functions(path: Path) -> set[str]:
    """The names of the functions in `path` that call print (`<module>` for top-level code)."""
    found: set[str] = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "print":
                found.add(where)
            visit(child, inner)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_only_the_entry_points_print():
    stray = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        where = _printing_functions(path)
        allowed = PRINTS.get(rel, set())
        if allowed is None:
            continue
        if where - allowed:
            stray[rel] = sorted(where - allowed)
    assert not stray, f"library code prints instead of logging (core.log): {stray}"
    assert _printing_functions(PACKAGE / "verify.py") == {"main_verify"}  # the scan sees prints


def test_shown_messages_are_bare_lines_info_on_stdout_warnings_on_stderr(capsys):
    log.show_messages()
    log.show_messages()  # once is enough; again adds no second handler
    root = logging.getLogger(log.ROOT)
    assert sum(type(h).__name__ == "_Console" for h in root.handlers) == 1
    child = logging.getLogger("ranking_lib.training.trainer")
    child.info("budget 6 s -> 12 steps")
    child.warning("skipped 1 corrupt image")
    child.debug("not shown")
    out, err = capsys.readouterr()
    assert out == "budget 6 s -> 12 steps\n"
    assert err == "skipped 1 corrupt image\n"


def test_messages_follow_the_current_stdout(capsys):
    log.show_messages()
    logging.getLogger("ranking_lib.workflow").info("first")
    assert capsys.readouterr().out == "first\n"
    logging.getLogger("ranking_lib.workflow").info("second")  # a new capture: written there, not to the old one
    assert capsys.readouterr().out == "second\n"
