import pytest

from ranking_lib.core.fileio import atomic_path


def test_replaces_on_success_and_keeps_suffix(tmp_path):
    target = tmp_path / "sub" / "a.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".npy") and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["a.npy"]


def test_failure_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_read_json_one_line_errors(tmp_path):
    from ranking_lib.core.errors import RankingError
    from ranking_lib.core.fileio import read_json, write_json

    write_json(tmp_path / "ok.json", {"a": [1, 2]})
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    assert read_json(tmp_path / "none.json", missing_ok=True) is None
    with pytest.raises(RankingError, match=r"^metrics .*none\.json not found \(run it\)$"):
        read_json(tmp_path / "none.json", "metrics", " (run it)")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RankingError, match=r"^config file .*bad\.json is not valid JSON \(.+\)$") as e:
        read_json(tmp_path / "bad.json", "config file")
    assert "\n" not in str(e.value)
