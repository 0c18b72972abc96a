"""Carrying a dataset in chunks (data_scripts/pack_chunks.py, unpack_chunks.py, chunks.py).

A GPU machine that receives at most 64 MiB per transfer gets Tiny ImageNet as chunks of under
60 MiB plus a manifest; these tests pack the real 20-class sample (the demo data on a clone
without it) in 1 MiB chunks, so that files span chunk boundaries, and check that it comes back
bit-exact and that a missing, extra, short or damaged chunk, or a manifest with an unsafe path,
is refused in one line with nothing written into the destination.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_scripts import chunks, pack_chunks, unpack_chunks

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def packed(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("chunks")
    assert pack_chunks.main(["--data-dir", str(sample_dir), "--out", str(out), "--chunk-mib", "1", "--quiet"]) == 0
    return out


def fresh_copy(packed: Path, tmp_path: Path) -> Path:
    """A private copy of the chunk folder (the tests damage it)."""
    d = tmp_path / "chunks"
    d.mkdir()
    for p in packed.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    return d


def manifest_of(d: Path) -> tuple[Path, dict]:
    (path,) = d.glob("*.manifest.json")
    return path, json.loads(path.read_text())


def refused(capsys, chunk_dir: Path, out: Path) -> str:
    """Unpacking exits 2 with exactly one error line, and the destination holds nothing."""
    assert unpack_chunks.main(["--chunks", str(chunk_dir), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists() or list(out.iterdir()) == []  # no dataset, no temp folder left behind
    return err[0]


def test_round_trip_is_bit_exact(packed, sample_dir, tmp_path):
    path, m = manifest_of(packed)
    sizes = [c["size"] for c in m["chunks"]]
    assert len(sizes) >= 3 and all(s == 2**20 for s in sizes[:-1]) and 0 < sizes[-1] <= 2**20
    assert sum(sizes) == m["total_bytes"] == sum(f[1] for f in m["files"])
    # files are packed as they are: the chunks' stream is the files' bytes back to back
    stream = b"".join((packed / c["name"]).read_bytes() for c in m["chunks"])
    original = tree(sample_dir)
    assert stream == b"".join(original[f[0]] for f in m["files"])
    assert unpack_chunks.main(["--chunks", str(packed), "--out", str(tmp_path), "--quiet"]) == 0
    got = tree(tmp_path / sample_dir.name)
    assert got.pop(chunks.UNPACKED_MARK) and got == original
    assert any(p.endswith(".JPEG") for p in got) and "wnids.txt" in got
    # the same chunks again: the folder is recognised and kept
    before = (tmp_path / sample_dir.name / "wnids.txt").stat().st_mtime_ns
    assert unpack_chunks.main(["--chunks", str(packed), "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / sample_dir.name / "wnids.txt").stat().st_mtime_ns == before


def test_missing_chunk_is_refused(packed, tmp_path, capsys):
    d = fresh_copy(packed, tmp_path)
    _, m = manifest_of(d)
    (d / m["chunks"][1]["name"]).unlink()
    line = refused(capsys, d, tmp_path / "data")
    assert "incomplete" in line and m["chunks"][1]["name"] in line and f"1 of {m['chunk_count']}" in line


def test_damaged_chunk_is_refused(packed, tmp_path, capsys):
    d = fresh_copy(packed, tmp_path)
    _, m = manifest_of(d)
    victim = d / m["chunks"][-1]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    victim.write_bytes(bytes(data))
    line = refused(capsys, d, tmp_path / "data")
    assert "damaged" in line and victim.name in line


def test_short_chunk_is_refused(packed, tmp_path, capsys):
    d = fresh_copy(packed, tmp_path)
    _, m = manifest_of(d)
    victim = d / m["chunks"][0]["name"]
    victim.write_bytes(victim.read_bytes()[:-10])
    line = refused(capsys, d, tmp_path / "data")
    assert victim.name in line and "cut short" in line


def test_extra_chunk_is_refused(packed, tmp_path, capsys):
    d = fresh_copy(packed, tmp_path)
    _, m = manifest_of(d)
    (d / chunks.chunk_name(m["name"], m["chunk_count"])).write_bytes(b"left over from another packing")
    assert "does not list" in refused(capsys, d, tmp_path / "data")


@pytest.mark.parametrize("bad", ["../escape.JPEG", "/etc/passwd", "train/./x", ""])
def test_unsafe_manifest_path_is_refused(packed, tmp_path, capsys, bad):
    d = fresh_copy(packed, tmp_path)
    path, m = manifest_of(d)
    m["files"][0][0] = bad
    path.write_text(json.dumps(m))
    assert "unsafe file path" in refused(capsys, d, tmp_path / "data")


def test_manifest_that_is_not_one_is_refused(packed, tmp_path, capsys):
    d = fresh_copy(packed, tmp_path)
    path, _ = manifest_of(d)
    path.write_text("{\"format\": \"something else\"}")
    assert "not a chunk manifest" in refused(capsys, d, tmp_path / "data")
    path.write_text("{ truncated")
    assert "not valid JSON" in refused(capsys, d, tmp_path / "data")


def test_existing_other_destination_is_refused(packed, sample_dir, tmp_path, capsys):
    (tmp_path / sample_dir.name).mkdir()
    (tmp_path / sample_dir.name / "mine.txt").write_text("not from the chunks")
    assert unpack_chunks.main(["--chunks", str(packed), "--out", str(tmp_path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / sample_dir.name).iterdir()] == ["mine.txt"]


def test_pack_leaves_out_hidden_and_test_and_removes_stale_chunks(tmp_path):
    data = tmp_path / "tiny"
    for rel, body in {"wnids.txt": b"n1\n", "train/n1/images/a.JPEG": os.urandom(3000),
                      "test/images/t.JPEG": b"t", ".ranking_cache/x.npy": b"c", "train/.hidden": b"h"}.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    out = tmp_path / "c"
    small = chunks.pack(data, out, chunk_mib=1000 / 2**20, show_progress=False)
    assert [f[0] for f in json.loads(small.manifest.read_text())["files"]] == ["train/n1/images/a.JPEG", "wnids.txt"]
    assert len(small.chunks) == 4  # 3,003 bytes in 1,000-byte chunks
    big = chunks.pack(data, out, chunk_mib=1, include_test=True, show_progress=False)
    assert sorted(p.name for p in out.glob("*.chunk")) == [p.name for p in big.chunks] == ["tiny.000.chunk"]
    assert "test/images/t.JPEG" in [f[0] for f in json.loads(big.manifest.read_text())["files"]]


def test_pack_errors_are_one_line(tmp_path, capsys):
    assert pack_chunks.main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip() == f"error: dataset folder not found: {tmp_path / 'nope'}"
    assert pack_chunks.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "c"), "--chunk-mib", "0"]) == 2
    assert "chunk size must be positive" in capsys.readouterr().err


def test_scripts_run_from_the_checkout():
    for script in ("pack_chunks.py", "unpack_chunks.py"):
        r = subprocess.run([sys.executable, str(REPO / "data_scripts" / script), "--help"], capture_output=True,
                           text=True, cwd="/", timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("usage: ") and "--out" in r.stdout, r.stderr
