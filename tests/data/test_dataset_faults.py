"""The dataset and its caches (`ranking_lib.data`) under faults and hostile input: damaged image
caches, data that crosses splits (val annotations outside val, a val link to a training image, a
file in both splits, adversarial names), classes without training images, orphaned stage features
and images too large to decode.

Each case asserts the one-line message, the exit status and that nothing was written.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from faults import data, demo_data, demo_dirs, embedded  # noqa: F401 (fixtures, requested by name)
from faults import data_flags, files_in, logged, rewrite_annotations, run_cli_out

from ranking_lib.core.errors import DatasetError
from ranking_lib.data import TinyImageNet, load_image_rgb, load_or_build_cache
from ranking_lib.data.decode import MAX_PIXELS


def test_damaged_image_cache_is_rebuilt_and_named(demo_dirs, tmp_path, caplog):
    ds = TinyImageNet(demo_dirs["data"])
    cache = load_or_build_cache(ds, "train", tmp_path, progress=False)
    good = np.array(cache.images)
    path = cache.cache_file
    del cache
    with open(path, "r+b") as f:  # overwrite pixels in the middle; shape and header stay valid
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 500)
    with caplog.at_level("WARNING"):
        again = load_or_build_cache(ds, "train", tmp_path, progress=False)
    assert any(str(path) in r.getMessage() and "damaged or was modified" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(again.images), good)


def _first_train_image(data: Path) -> str:
    wnid = (data / "wnids.txt").read_text().split()[0]
    name = sorted((data / "train" / wnid / "images").iterdir())[0].name
    return f"{wnid}/images/{name}"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "subfolder", "dot"])
def test_val_annotation_outside_val_images_is_refused_naming_the_line(data, kind, tmp_path, capsys):
    train_img = _first_train_image(data)
    bad = {"dotdot": f"../../train/{train_img}", "absolute": str(data / "train" / train_img),
           "subfolder": "sub/val_0.JPEG", "dot": ".."}[kind]

    def edit(lines):
        f = lines[2].split("\t")
        lines[2] = "\t".join([bad] + f[1:])
        return lines

    rewrite_annotations(data, edit)
    run, cache = tmp_path / "run", tmp_path / "cache"
    rc, err, _ = run_cli_out(["prepare"] + data_flags(data, run, cache), capsys)
    assert rc == 2 and len(err) == 1, err
    assert "val_annotations.txt line 3: file name" in err[0] and "inside val/images/" in err[0], err
    assert files_in(cache) == set() and not (run / "config.json").exists()


def test_val_link_to_a_training_image_is_refused(data, tmp_path, capsys):
    target = data / "train" / _first_train_image(data)
    val0 = data / "val" / "images" / "val_0.JPEG"
    val0.unlink()
    val0.symlink_to(target)
    rc, err, _ = run_cli_out(["prepare"] + data_flags(data, tmp_path / "run", tmp_path / "cache"), capsys)
    assert rc == 2 and len(err) == 1 and "is a link to" in err[0] and "outside val/images/" in err[0], err
    assert files_in(tmp_path / "cache") == set()


def test_a_file_in_both_splits_is_refused_and_identical_pixels_are_reported(data, tmp_path, capsys, caplog):
    run, cache = tmp_path / "run", tmp_path / "cache"
    rc, err, out = run_cli_out(["prepare"] + data_flags(data, run, cache), capsys)
    assert rc == 0 and "train/val: no file in both splits, no val image with the pixels of a training image" in out
    # a copy of a training image as a val image: same pixels, other file -> reported
    target = data / "train" / _first_train_image(data)
    shutil.copyfile(target, data / "val" / "images" / "val_1.JPEG")
    caplog.set_level("WARNING")
    rc, err, out = run_cli_out(["prepare"] + data_flags(data, run, cache), capsys)
    assert rc == 0, err
    err = logged(caplog)
    dup = [ln for ln in err if "have the same decoded pixels as a training image" in ln]
    assert len(dup) == 1 and "val/images/val_1.JPEG = train/" in dup[0], err
    # the same file (a hard link) in both splits -> refused
    (data / "val" / "images" / "val_2.JPEG").unlink()
    os.link(target, data / "val" / "images" / "val_2.JPEG")
    rc, err, _ = run_cli_out(["prepare"] + data_flags(data, run, cache), capsys)
    warned = logged(caplog)  # the val cache is rebuilt (the split changed): a warning line beside the refusal
    assert any("building val image cache" in w for w in warned), warned
    err = [ln for ln in err if ln not in warned]
    assert rc == 2 and len(err) == 1 and "both a val (query) and a train (database) image" in err[0], err


ATOMS = ["..", ".", "", "/", "\\", "val_0.JPEG", "images", "train", "val", "~", "x.JPEG", " ", "%2e%2e",
         "\x00", "\t", "n0", "..\\..", "//", "./"]


def _adversarial_names(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        parts = [rng.choice(ATOMS) for _ in range(rng.randint(1, 6))]
        name = rng.choice(["", "/", "../", "./"]) + rng.choice(["/", "", "\\"]).join(parts)
        out.append(name.replace("\t", ""))
    return out


def test_property_prepare_never_lets_a_path_escape_its_split_folder(data):
    """Seeded adversarial names in val_annotations.txt and wnids.txt: the index either refuses
    them (one line) or every path it returns resolves inside its split's own folder."""
    # decoys an escaping name could reach, so an unchecked name would be accepted
    (data / "val" / "x.JPEG").write_bytes(b"decoy")
    (data / "x.JPEG").write_bytes(b"decoy")
    (data / "train" / "x.JPEG").write_bytes(b"decoy")
    ann = data / "val" / "val_annotations.txt"
    good = ann.read_text()
    wnids = (data / "wnids.txt").read_text().split()
    val_real = os.path.realpath(data / "val" / "images") + os.sep
    rng = random.Random(1234)
    refused = accepted = 0
    for name in _adversarial_names(rng, 300):
        ann.write_text(good + f"{name}\t{wnids[0]}\t0\t0\t64\t64\n")
        try:
            items = TinyImageNet(data).items("val")
        except DatasetError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        accepted += 1
        for rel, _ in items:
            assert rel.startswith("val/images/") and os.path.realpath(data / rel).startswith(val_real), (name, rel)
    assert refused > 200  # the generator does produce hostile names
    ann.write_text(good)
    train_real = os.path.realpath(data / "train") + os.sep
    for name in _adversarial_names(random.Random(99), 100):
        (data / "wnids.txt").write_text("\n".join(wnids + [name]) + "\n")
        try:
            ds = TinyImageNet(data)
            items = ds.items("train")
        except DatasetError as e:
            assert "\n" not in str(e)
            continue
        for rel, _ in items:
            assert os.path.realpath(data / rel).startswith(train_real), (name, rel)


def test_class_without_training_images_is_named_and_counted(data, tmp_path, capsys, caplog):
    wnid = (data / "wnids.txt").read_text().split()[-1]
    for f in (data / "train" / wnid / "images").iterdir():
        f.unlink()
    flags = data_flags(data, tmp_path / "run", tmp_path / "cache")
    caplog.set_level("WARNING")
    rc, err, _ = run_cli_out(["prepare"] + flags, capsys)
    assert rc == 0, err
    warn = [ln for ln in logged(caplog) if wnid in ln]
    assert len(warn) == 1 and f"class {wnid} has no train images: its 5 val queries" in warn[0], err
    for step in (["sample"], ["embed", "--model", "baseline"]):
        assert run_cli_out(step + flags, capsys)[0] == 0
    rc, err, out = run_cli_out(["evaluate", "--model", "baseline"] + flags, capsys)
    assert rc == 0, err
    assert "note: 5 val queries have no image of their class in the database" in out
    metrics = json.loads((tmp_path / "run" / "metrics_baseline.json").read_text())
    assert metrics["val"]["queries_without_match"] == 5 and metrics["train"].get("queries_without_match") is None


def test_cache_rebuild_removes_stage_files_of_the_old_cache_and_prepare_names_strays(data, tmp_path, capsys,
                                                                                     caplog):
    from types import SimpleNamespace

    from ranking_lib.models.stage_cache import stage_features_file

    run, cache_dir = tmp_path / "run", tmp_path / "cache"
    flags = data_flags(data, run, cache_dir)
    assert run_cli_out(["prepare"] + flags, capsys)[0] == 0
    cache = load_or_build_cache(TinyImageNet(data), "train", cache_dir, progress=False)
    net = SimpleNamespace(backbone_name="efficientnet_lite0", input_size=32, freeze_stages=7)
    current = stage_features_file(cache, net, True)
    np.save(current, np.zeros((2, 2), np.float16))
    current.with_suffix(".json").write_text(json.dumps({"source": str(cache.cache_file)}))
    golden = cache_dir / current.name.replace("stage_", "golden_")
    np.save(golden, np.zeros((2, 2), np.float16))
    notes = cache_dir / "notes.txt"
    notes.write_text("mine")
    caplog.set_level("WARNING")
    caplog.clear()
    rc, err, _ = run_cli_out(["prepare"] + flags, capsys)
    assert rc == 0
    err = logged(caplog)
    stray = [ln for ln in err if "not computed from the current caches" in ln]
    assert len(stray) == 1 and stray[0].startswith("1 file(s)") and "notes.txt" in stray[0], err  # current ones pass
    # a training image changes: the train cache is rebuilt and what was computed from it goes
    img = sorted((data / "train").rglob("*.JPEG"))[0]
    os.utime(img, (time.time() + 5, time.time() + 5))
    rc, err, _ = run_cli_out(["prepare"] + flags, capsys)
    assert rc == 0, err
    err = logged(caplog)
    assert not current.exists() and not current.with_suffix(".json").exists() and not golden.exists()
    assert any("removed 2 file(s) computed from the old train cache" in ln for ln in err), err
    assert notes.exists() and (cache_dir / "val_64px_images.npy").exists()
    # a stage file left by an earlier cache (its key no longer matches): named, left alone
    old = current.with_name(current.name[:-20] + "0123456789abcdef.npy")
    np.save(old, np.zeros((2, 2), np.float16))
    rc, err, _ = run_cli_out(["prepare"] + flags, capsys)
    err = logged(caplog)
    stray = [ln for ln in err if "not computed from the current caches" in ln]
    assert rc == 0 and len(stray) == 1 and stray[0].startswith("2 file(s)") and old.exists(), err


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_huge_image_is_refused_above_the_stated_size(embedded, tmp_path, capsys):
    big = tmp_path / "big.png"
    _png_header_only(big, 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no decompression-bomb warning either
        with pytest.raises(DatasetError, match=r"10000 x 10000 pixels \(100.0 megapixels\), above the 50 megapixels"):
            load_image_rgb(big)
    assert MAX_PIXELS == 50_000_000
    run, flags = embedded
    rc, err, _ = run_cli_out(["query", "--model", "baseline", "--image", big] + flags, capsys)
    assert rc == 2 and len(err) == 1 and "above the 50 megapixels" in err[0], err
