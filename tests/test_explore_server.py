"""The explorer's server settings without a server: which Host names it answers, which run
directories the page opens (under its root), and the one-line refusals of its command line.
The running server (token, Host, kernel cap and culling) is tested in a browser: test_browser.py."""

from __future__ import annotations

import json

import pytest

from ranking_lib.core.errors import RankingError
from ranking_lib.explore_server import host_allowed, inside_root, main


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("[::1]", True), ("localhost", True), ("LocalHost", True),
    ("rebind.example", False), ("0.0.0.0", False), ("10.0.0.5", False), ("[::]", False), ("", False),
    ("localhost.rebind.example", False),
])
def test_host_names_answered(host, allowed):
    assert host_allowed(host) is allowed


def test_extra_host_names():
    assert host_allowed("box.lan", ["localhost", "Box.LAN"]) and not host_allowed("other.lan", ["box.lan"])
    assert host_allowed("10.0.0.5", ["10.0.0.5"]) and host_allowed("[fd00::5]", ["fd00::5"])
    assert not host_allowed("10.0.0.6", ["10.0.0.5"])


def test_run_dirs_inside_the_root_only(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    assert inside_root("a", root) == (root / "a").resolve()  # relative: under the root
    assert inside_root(root / "a", root) == (root / "a").resolve()
    assert inside_root(root, root) == root.resolve()
    (root / "inner-link").symlink_to(root / "a")
    assert inside_root("inner-link", root) == (root / "a").resolve()
    (root / "escape").symlink_to(outside)
    for path in (outside, "../elsewhere", root / "a" / ".." / ".." / "elsewhere", "escape", "/"):
        with pytest.raises(RankingError, match=r"is outside .*runs, the only folder this explorer opens runs from"):
            inside_root(path, root)


def test_page_refuses_a_run_outside_its_root_before_reading_it(tmp_path):
    """A folder outside the root holding only a hand-written config.json (naming a dataset and a
    cache folder) is refused in one line on the page: nothing is decoded, no cache folder made."""
    pytest.importorskip("ipywidgets")
    from ranking_lib.explore import ExplorerApp

    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"data_dir": str(tmp_path / "data"),
                                                     "cache_dir": str(tmp_path / "chosen-cache")}))
    app = ExplorerApp(root=root)
    app.run_dir.value = str(outside)
    app.open.click()
    assert app.text == (f"error: {outside} is outside {root.resolve()}, the only folder this explorer opens runs "
                        "from (start it with make explore ROOT=... to serve another)")
    assert app.explorer is None and not (tmp_path / "chosen-cache").exists()
    app.run_dir.value = "missing-run"  # relative: under the root, then the usual one line
    app.open.click()
    assert app.text.startswith(f"error: no run at {root.resolve() / 'missing-run'}")


@pytest.mark.parametrize("args, message", [
    (["--run-dir", "{tmp}/none"], "error: no run at {tmp}/none ({tmp}/none/config.json not found)"),
    (["--run-dir", "{tmp}/runs/a", "--root", "{tmp}/other"], "error: {tmp}/runs/a is outside {tmp}/other, "),
    (["--run-dir", "{tmp}/runs/a", "--root", "{tmp}/missing"], "error: --root {tmp}/missing is not a directory"),
    (["--run-dir", "{tmp}/runs/a", "--max-kernels", "0"], "error: --max-kernels must be >= 1 (got 0)"),
    (["--run-dir", "{tmp}/runs/a", "--cull-idle-seconds", "0"], "error: --cull-idle-seconds must be >= 1 (got 0)"),
])
def test_command_line_refusals_are_one_line(tmp_path, capsys, args, message):
    tmp = tmp_path.resolve()
    (tmp / "runs" / "a").mkdir(parents=True)
    (tmp / "runs" / "a" / "config.json").write_text("{}")
    (tmp / "other").mkdir()
    assert main([a.format(tmp=tmp) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp)) and err.count("\n") == 1, err
