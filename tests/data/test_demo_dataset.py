"""Tests for data_scripts/make_demo_dataset.py and data_scripts/download_tiny_imagenet.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_scripts import download_tiny_imagenet as dl
from data_scripts.make_demo_dataset import make_demo_dataset
from ranking_lib.data import TinyImageNet, load_or_build_cache
from ranking_lib.core.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]
DL_SCRIPT = REPO / "data_scripts" / "download_tiny_imagenet.py"
DEMO_SCRIPT = REPO / "data_scripts" / "make_demo_dataset.py"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "d", num_classes=4,
                             train_per_class=6, val_per_class=3, seed=0)


def test_demo_layout_and_counts(demo):
    ds = TinyImageNet(demo)
    assert ds.wnids == ["d0000001", "d0000002", "d0000003", "d0000004"]
    assert all(len(n.split()) >= 3 for n in ds.class_names)  # e.g. "red striped disks"
    assert len(set(ds.class_names)) == 4
    train, val = ds.items("train"), ds.items("val")
    assert len(train) == 24 and len(val) == 12
    assert np.bincount([lab for _, lab in train]).tolist() == [6] * 4
    assert np.bincount([lab for _, lab in val]).tolist() == [3] * 4
    assert train[0][0] == "train/d0000001/images/d0000001_0.JPEG"
    boxes = (demo / "train" / "d0000001" / "d0000001_boxes.txt").read_text().splitlines()
    assert len(boxes) == 6 and boxes[0].split("\t")[0] == "d0000001_0.JPEG"
    assert all(0 <= int(v) <= 63 for v in boxes[0].split("\t")[1:])
    ann = (demo / "val" / "val_annotations.txt").read_text().splitlines()
    assert len(ann) == 12 and all(len(line.split("\t")) == 6 for line in ann)
    # shuffled across classes: val_0..val_11 are not grouped by class
    classes_in_file_order = [line.split("\t")[1] for line in ann]
    assert classes_in_file_order != sorted(classes_in_file_order)
    modes = [Image.open(demo / p).mode for p, _ in train]
    assert modes.count("L") == 2 and modes.count("RGB") == 22
    with Image.open(demo / val[0][0]) as im:
        assert im.size == (64, 64) and im.format == "JPEG"


def test_demo_deterministic_and_seed_dependent(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", num_classes=4, train_per_class=6, val_per_class=3, seed=0)
    assert _files(again) == _files(demo)
    other = make_demo_dataset(tmp_path / "other", num_classes=4, train_per_class=6, val_per_class=3, seed=1)
    a, b = _files(demo), _files(other)
    assert a.keys() == b.keys()  # same layout and file names
    common = [k for k in a if k.endswith(".JPEG") and k in b]
    assert common and sum(a[k] != b[k] for k in common) == len(common)


def test_demo_cache_and_class_signal(demo, tmp_path):
    """Decodes through the cache; class means differ (classes carry signal), images vary."""
    ds = TinyImageNet(demo)
    cache = load_or_build_cache(ds, "train", cache_dir=tmp_path, progress=False)
    x = np.asarray(cache.images, dtype=np.float64)
    assert x.shape == (24, 64, 64, 3)
    assert x.std(axis=0).mean() > 20  # images within the set vary (random pose, background)
    # grayscale files come back as RGB with equal channels
    gi = [i for i, p in enumerate(cache.paths) if Image.open(demo / p).mode == "L"]
    assert len(gi) == 2 and all(np.array_equal(x[i, ..., 0], x[i, ..., 2]) for i in gi)


def test_demo_cli_and_overwrite_guard(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, str(DEMO_SCRIPT), "--out", str(out), "--classes", "3",
                        "--train-per-class", "2", "--val-per-class", "1", "--seed", "5"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ds = TinyImageNet(out)
    assert len(ds.items("train")) == 6 and len(ds.items("val")) == 3
    # regenerating into the same folder replaces the old demo data (no stale extra images)
    make_demo_dataset(out, num_classes=3, train_per_class=1, val_per_class=1, seed=5)
    assert len(TinyImageNet(out).items("train")) == 3
    # never clobbers a folder that is not a demo dataset
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_demo_dataset(foreign, num_classes=2, train_per_class=1, val_per_class=1)
    assert (foreign / "keep.txt").exists()


def test_demo_default_size(tmp_path):
    out = make_demo_dataset(tmp_path / "full")
    ds = TinyImageNet(out)
    assert ds.num_classes == 10 and len(ds.items("train")) == 1000 and len(ds.items("val")) == 200


# ----------------------------------------------------------------------------- download script
def _run_dl(*args, cwd):
    return subprocess.run([sys.executable, str(DL_SCRIPT), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def test_download_from_valid_dir_symlinks(demo, tmp_path):
    r = _run_dl("--out", tmp_path / "data", "--from", demo, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    target = tmp_path / "data" / "tiny-imagenet-200"
    assert target.is_symlink() and target.resolve() == demo.resolve()
    assert len(TinyImageNet(target).items("train")) == 24
    # idempotent
    assert _run_dl("--out", tmp_path / "data", "--from", demo, cwd=tmp_path).returncode == 0


def test_ingest_copy(demo, tmp_path):
    target = dl.ingest(demo, tmp_path / "data", copy=True)
    assert target.is_dir() and not target.is_symlink()
    assert _files(target) == _files(demo)
    with pytest.raises(DatasetError, match="already exists"):
        dl.ingest(demo, tmp_path / "data")


def test_download_from_missing_dir_fails_cleanly(tmp_path):
    r = _run_dl("--out", tmp_path / "data", "--from", tmp_path / "missing", cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]
    assert "Traceback" not in r.stderr


def test_download_from_invalid_dir_fails_cleanly(tmp_path):
    bad = tmp_path / "bad"
    (bad / "train").mkdir(parents=True)
    (bad / "wnids.txt").write_text("n1\n")
    r = _run_dl("--out", tmp_path / "data", "--from", bad, cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "train class folder missing" in lines[0]
    assert not (tmp_path / "data" / "tiny-imagenet-200").exists()


def test_download_unreachable_url(tmp_path):
    url = "http://127.0.0.1:9/x.zip"
    r = _run_dl("--out", tmp_path / "data", "--url", url, cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: could not download {url}")
    assert "--from" in lines[0] and "internet" in lines[0]
    assert not list((tmp_path / "data").glob("*.part"))


def test_download_and_extract_local_zip(demo, tmp_path):
    """The whole download path (stream, verify, extract) on a local file:// archive."""
    import hashlib
    import zipfile

    zpath = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(demo.rglob("*")):
            if p.is_file():
                zf.write(p, "tiny-imagenet-200/" + p.relative_to(demo).as_posix())
    md5 = hashlib.md5(zpath.read_bytes()).hexdigest()
    out = tmp_path / "out"
    with pytest.raises(dl.DownloadError, match="MD5"):
        dl.download(zpath.as_uri(), out, size=None, md5="0" * 32)
    target = dl.download(zpath.as_uri(), out, size=zpath.stat().st_size, md5=md5)
    assert target == out / "tiny-imagenet-200"
    assert _files(target) == _files(demo)
    assert not list(out.glob("*.zip*")) and not list(out.glob(".extract-*"))


def test_published_constants():
    assert dl.TINY_IMAGENET_URL == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert dl.TINY_IMAGENET_SIZE == 248100043
    assert dl.TINY_IMAGENET_MD5 == "90528d7ca1a48142e341f4ef8d21d0de"


def test_demo_profile_with_a_data_dir_that_holds_other_files_is_one_line(tmp_path, capsys):
    """``make report DATA=data``: the folder the download script fills, not the dataset inside it."""
    from ranking_lib.cli import main

    data = tmp_path / "data"
    (data / "tiny-imagenet-200").mkdir(parents=True)
    (data / "tiny-imagenet-200.zip").write_bytes(b"zip")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    capsys.readouterr()
    assert main(["prepare", "--profile", "demo", "--data-dir", str(data), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: data_dir {data} is a folder with files but no wnids.txt")
    assert "--out" not in err[0] and "e.g. data/tiny-imagenet-200" in err[0]
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    from ranking_lib.data.demo import ensure_demo_dataset

    with pytest.raises(DatasetError, match="is not a folder"):
        ensure_demo_dataset(data / "tiny-imagenet-200.zip", quiet=True)
