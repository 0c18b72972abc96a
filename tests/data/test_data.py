"""Tests for ranking_lib.data: dataset index, image decoding, decoded-image cache."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ranking_lib.data import decode as decode_mod
from ranking_lib.data import image_cache as cache_mod
from ranking_lib.data import (
    ImageCache,
    TinyImageNet,
    default_cache_dir,
    load_image_rgb,
    load_or_build_cache,
)
from ranking_lib.core.errors import CorruptImageError, DatasetError, RankingError

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "tiny-imagenet-sample"


# ----------------------------------------------------------------------------- helpers
def _write_jpeg(path: Path, seed: int, size: int = 64, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format="JPEG", quality=90)


def make_dataset(root: Path, wnids=("n002", "n001", "n003"), train_numbers=(0, 1, 2, 10),
                 val=None, words=True, trailing_newline=False) -> Path:
    """Small tiny-imagenet layout. ``val``: list of (val index, wnid); default 2 per class."""
    root.mkdir(parents=True, exist_ok=True)
    text = "\n".join(wnids[:1]) + "\n\n" + "\n".join(wnids[1:])  # includes a blank line
    (root / "wnids.txt").write_text(text + ("\n" if trailing_newline else ""))
    if words:
        lines = [f"{w}\tname of {w}, alias" for w in wnids[:-1]]  # last wnid has no entry
        lines.append("n999\tunrelated")
        (root / "words.txt").write_text("\n".join(lines) + "\n")
    seed = 0
    for w in wnids:
        for n in train_numbers:
            _write_jpeg(root / "train" / w / "images" / f"{w}_{n}.JPEG", seed)
            seed += 1
    if val is None:
        val = [(i, wnids[i % len(wnids)]) for i in range(2 * len(wnids))][::-1]
    ann = []
    for i, w in val:
        _write_jpeg(root / "val" / "images" / f"val_{i}.JPEG", 1000 + i)
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val").mkdir(parents=True, exist_ok=True)
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return root


@pytest.fixture
def ds_root(tmp_path):
    return make_dataset(tmp_path / "tin")


class DecodeCounter:
    def __init__(self, monkeypatch):
        self.n = 0
        real = decode_mod.load_image_rgb

        def counting(path, size=64):
            self.n += 1
            return real(path, size)

        monkeypatch.setattr(decode_mod, "load_image_rgb", counting)


# ----------------------------------------------------------------------------- index
def test_items_labels_and_order(ds_root):
    ds = TinyImageNet(ds_root)
    assert ds.root == ds_root.resolve()
    assert ds.wnids == ["n002", "n001", "n003"]  # file order, blank line skipped, no final newline
    assert ds.num_classes == 3
    assert ds.class_names == ["name of n002", "name of n001", "n003"]
    train = ds.items("train")
    assert len(train) == 12
    assert train[:4] == [(f"train/n002/images/n002_{n}.JPEG", 0) for n in (0, 1, 2, 10)]
    assert [lab for _, lab in train] == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.excluded("train") == 0
    assert ds.items("train") == train  # deterministic


def test_val_annotations(ds_root):
    ds = TinyImageNet(ds_root)
    val = ds.items("val")
    # val_i belongs to class i % 3; sorted by class then natural file number
    assert val == [
        ("val/images/val_0.JPEG", 0), ("val/images/val_3.JPEG", 0),
        ("val/images/val_1.JPEG", 1), ("val/images/val_4.JPEG", 1),
        ("val/images/val_2.JPEG", 2), ("val/images/val_5.JPEG", 2),
    ]
    assert ds.excluded("val") == 0


def test_natural_order_in_val(tmp_path):
    root = make_dataset(tmp_path / "t", wnids=("a", "b"), val=[(10, "a"), (2, "a"), (1, "b")])
    assert [p for p, _ in TinyImageNet(root).items("val")] == [
        "val/images/val_2.JPEG", "val/images/val_10.JPEG", "val/images/val_1.JPEG"]


def test_max_classes_excludes_and_counts(ds_root):
    import shutil

    shutil.rmtree(ds_root / "train" / "n003")  # classes beyond max_classes are never read
    ds = TinyImageNet(ds_root, max_classes=2)
    assert ds.wnids == ["n002", "n001"] and ds.num_classes == 2 and len(ds.class_names) == 2
    assert len(ds.items("train")) == 8
    assert {lab for _, lab in ds.items("val")} == {0, 1}
    assert len(ds.items("val")) == 4
    assert ds.excluded("val") == 2
    assert ds.excluded("train") == 0


def test_no_words_file_uses_wnids(tmp_path):
    root = make_dataset(tmp_path / "t", words=False, trailing_newline=True)
    ds = TinyImageNet(root)
    assert ds.class_names == ds.wnids == ["n002", "n001", "n003"]


# ----------------------------------------------------------------------------- errors
def _break(root: Path, how: str):
    if how == "missing_wnids":
        (root / "wnids.txt").unlink()
    elif how == "missing_train_folder":
        import shutil
        shutil.rmtree(root / "train" / "n001")
    elif how == "missing_val_ann":
        (root / "val" / "val_annotations.txt").unlink()
    elif how == "unknown_val_wnid":
        with open(root / "val" / "val_annotations.txt", "a") as fh:
            fh.write("val_0.JPEG\tn777\t0\t0\t1\t1\n")
    elif how == "missing_val_image":
        (root / "val" / "images" / "val_4.JPEG").unlink()
    elif how == "empty_train":
        for p in root.glob("train/*/images/*"):
            p.unlink()


@pytest.mark.parametrize("how, split, match", [
    ("missing_wnids", None, r"wnids\.txt not found"),
    ("missing_train_folder", "train", r"train class folder missing for class n001"),
    ("missing_val_ann", "val", r"val annotations not found: .*val_annotations\.txt"),
    ("unknown_val_wnid", "val", r"val annotation line 7 names unknown class n777"),
    ("missing_val_image", "val", r"val image missing: .*val_4\.JPEG"),
    ("empty_train", "train", r"split 'train' .* contains no images"),
])
def test_dataset_errors(ds_root, how, split, match):
    _break(ds_root, how)
    with pytest.raises(DatasetError, match=match) as info:
        TinyImageNet(ds_root).items(split) if split else TinyImageNet(ds_root)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, RankingError) and isinstance(info.value, ValueError)


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset directory not found: .*nowhere .*download_tiny_imagenet\.py.*--data-dir"):
        TinyImageNet(tmp_path / "nowhere")


@pytest.mark.parametrize("max_classes, match", [
    (0, "max_classes must be positive"), (-3, "max_classes must be positive"),
    (4, r"max_classes=4 exceeds the 3 classes"),
])
def test_bad_max_classes(ds_root, max_classes, match):
    with pytest.raises(DatasetError, match=match):
        TinyImageNet(ds_root, max_classes=max_classes)


def test_bad_split(ds_root, tmp_path):
    ds = TinyImageNet(ds_root)
    with pytest.raises(DatasetError, match=r"unknown split 'test'"):
        ds.items("test")
    with pytest.raises(DatasetError, match=r"unknown split 'tran'"):
        load_or_build_cache(ds, "tran", cache_dir=tmp_path / "c", progress=False)


# ----------------------------------------------------------------------------- decoding
def test_grayscale_and_other_modes_to_rgb(tmp_path):
    gray = tmp_path / "g.JPEG"
    _write_jpeg(gray, 1, mode="L")
    assert Image.open(gray).mode == "L"
    arr = load_image_rgb(gray)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert arr.std() > 10

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    for mode, fmt in (("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG")):
        p = tmp_path / f"x_{mode}.{fmt.lower()}"
        base.convert(mode).save(p, format=fmt)
        out = load_image_rgb(p)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8, mode
    # RGBA (lossless) converts back exactly
    assert np.array_equal(load_image_rgb(tmp_path / "x_RGBA.png"), np.asarray(base))


def test_resize_non_64(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(np.full((100, 80, 3), 200, np.uint8)).save(p)
    out = load_image_rgb(p)
    assert out.shape == (64, 64, 3) and int(out.min()) == 200 == int(out.max())
    assert load_image_rgb(p, size=32).shape == (32, 32, 3)


# EXIF orientation -> the stored pixels as the viewer shows them (the EXIF 2.3 definitions)
UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def _jpeg_with_orientation(path: Path, arr: np.ndarray, orientation: int | None) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation  # the Orientation tag, as a phone camera writes it
    Image.fromarray(arr).save(path, format="JPEG", quality=90, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    stored = load_image_rgb(_jpeg_with_orientation(tmp_path / "plain.jpg", arr, None))
    tagged = load_image_rgb(_jpeg_with_orientation(tmp_path / "phone.jpg", arr, orientation))
    assert not np.array_equal(tagged, stored)
    np.testing.assert_array_equal(tagged, UPRIGHT[orientation](stored))


def test_sideways_phone_photo_is_upright_in_the_cache(ds_root, tmp_path):
    """A landscape-stored photo tagged 'rotate 90 clockwise' (orientation 6) enters the decoded
    cache upright: its stored top (red) is on the right, its stored bottom (blue) on the left."""
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[:32, :, 0] = 255
    arr[32:, :, 2] = 255
    rel = "train/n001/images/n001_0.JPEG"
    _jpeg_with_orientation(ds_root / rel, arr, 6)
    cache = load_or_build_cache(TinyImageNet(ds_root), "train", cache_dir=tmp_path / "c", progress=False)
    img = np.asarray(cache.images[cache.paths.index(rel)], dtype=int)
    left, right = img[:, :24].mean(axis=(0, 1)), img[:, 40:].mean(axis=(0, 1))
    assert left[2] > 200 > 50 > left[0] and right[0] > 200 > 50 > right[2], (left, right)


def test_truncated_and_garbage_images_raise(tmp_path):
    good = tmp_path / "good.JPEG"
    _write_jpeg(good, 3)
    trunc = tmp_path / "trunc.JPEG"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptImageError, match=r"corrupt or truncated image: .*trunc\.JPEG \(.+\)"):
        load_image_rgb(trunc)
    junk = tmp_path / "junk.JPEG"
    junk.write_text("this is not an image")
    with pytest.raises(CorruptImageError, match=r"junk\.JPEG"):
        load_image_rgb(junk)
    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"empty\.JPEG"):
        load_image_rgb(empty)


def _corrupt(root: Path, rel: str) -> None:
    p = root / rel
    p.write_bytes(p.read_bytes()[:300])


def test_cache_raises_on_corrupt_by_default(ds_root, tmp_path):
    _corrupt(ds_root, "train/n001/images/n001_2.JPEG")
    ds = TinyImageNet(ds_root)
    with pytest.raises(CorruptImageError, match=r"n001_2\.JPEG"):
        load_or_build_cache(ds, "train", cache_dir=tmp_path / "c", progress=False)
    # nothing usable is left behind
    assert not (tmp_path / "c" / "train_64px_meta.json").exists()
    assert not list((tmp_path / "c").glob("*.tmp*"))


def test_skip_corrupt_records_and_warns(ds_root, tmp_path, caplog):
    rel = "train/n001/images/n001_2.JPEG"
    _corrupt(ds_root, rel)
    ds = TinyImageNet(ds_root)
    with caplog.at_level(logging.WARNING, logger="ranking_lib.data"):
        cache = load_or_build_cache(ds, "train", cache_dir=tmp_path / "c", skip_corrupt=True, progress=False)
    assert cache.skipped == [rel]
    assert len(cache) == 11 and cache.images.shape == (11, 64, 64, 3)
    assert rel not in cache.paths
    assert list(cache.labels) == [0] * 4 + [1] * 3 + [2] * 4
    warn = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert warn and "skipped 1 corrupt images (first: train/n001/images/n001_2.JPEG)" in warn[0]
    # images stay aligned with paths after skipping
    i = cache.paths.index("train/n003/images/n003_0.JPEG")
    assert np.array_equal(cache.images[i], load_image_rgb(ds_root / cache.paths[i]))
    # reusing that cache without skip_corrupt must not silently hide the corrupt file
    with pytest.raises(CorruptImageError, match=r"n001_2\.JPEG"):
        load_or_build_cache(ds, "train", cache_dir=tmp_path / "c", progress=False)
    again = load_or_build_cache(ds, "train", cache_dir=tmp_path / "c", skip_corrupt=True, progress=False)
    assert again.skipped == [rel]


# ----------------------------------------------------------------------------- cache
@pytest.mark.parametrize("split", ["train", "val"])
def test_cache_round_trip(ds_root, tmp_path, split):
    ds = TinyImageNet(ds_root)
    cache = load_or_build_cache(ds, split, cache_dir=tmp_path / "c", progress=False)
    assert isinstance(cache, ImageCache)
    items = ds.items(split)
    assert cache.paths == [p for p, _ in items]
    assert cache.labels.dtype == np.int64 and list(cache.labels) == [lab for _, lab in items]
    assert cache.images.dtype == np.uint8 and cache.images.shape == (len(items), 64, 64, 3)
    assert isinstance(cache.images, np.memmap)
    assert cache.wnids == ds.wnids and cache.class_names == ds.class_names
    assert cache.split == split and cache.skipped == [] and len(cache) == len(items)
    direct = np.stack([load_image_rgb(ds_root / p) for p, _ in items])
    assert np.array_equal(np.asarray(cache.images), direct)
    meta = json.loads((tmp_path / "c" / f"{split}_64px_meta.json").read_text())
    assert meta["complete"] is True and meta["paths"] == cache.paths


def test_cache_other_image_size(ds_root, tmp_path):
    ds = TinyImageNet(ds_root)
    cache = load_or_build_cache(ds, "val", cache_dir=tmp_path, image_size=32, progress=False)
    assert cache.images.shape == (6, 32, 32, 3)
    assert (tmp_path / "val_32px_images.npy").exists()


def test_cache_reused_without_decoding(ds_root, tmp_path, monkeypatch):
    ds = TinyImageNet(ds_root)
    first = load_or_build_cache(ds, "train", cache_dir=tmp_path, progress=False)

    def boom(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(decode_mod, "load_image_rgb", boom)
    second = load_or_build_cache(TinyImageNet(ds_root), "train", cache_dir=tmp_path, progress=False)
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert second.paths == first.paths


def test_cache_rebuilt_when_image_changes(ds_root, tmp_path, caplog):
    ds = TinyImageNet(ds_root)
    rel = "val/images/val_4.JPEG"
    first = load_or_build_cache(ds, "val", cache_dir=tmp_path, progress=False)
    i = first.paths.index(rel)
    old = np.array(first.images[i])
    _write_jpeg(ds_root / rel, 999)
    st = os.stat(ds_root / rel)
    os.utime(ds_root / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with caplog.at_level(logging.INFO, logger="ranking_lib.data"):
        second = load_or_build_cache(TinyImageNet(ds_root), "val", cache_dir=tmp_path, progress=False)
    assert any("fingerprint" in r.getMessage() for r in caplog.records)
    new = np.asarray(second.images[i])
    assert not np.array_equal(old, new)
    assert np.array_equal(new, load_image_rgb(ds_root / rel))


def test_cache_rebuilt_when_max_classes_changes(ds_root, tmp_path):
    a = load_or_build_cache(TinyImageNet(ds_root), "val", cache_dir=tmp_path, progress=False)
    b = load_or_build_cache(TinyImageNet(ds_root, max_classes=2), "val", cache_dir=tmp_path, progress=False)
    assert len(a) == 6 and len(b) == 4 and b.wnids == ["n002", "n001"]


def test_cache_rebuilt_when_meta_incomplete(ds_root, tmp_path, monkeypatch):
    ds = TinyImageNet(ds_root)
    load_or_build_cache(ds, "train", cache_dir=tmp_path, progress=False)
    meta_file = tmp_path / "train_64px_meta.json"
    meta = json.loads(meta_file.read_text())
    meta["complete"] = False
    meta_file.write_text(json.dumps(meta))
    counter = DecodeCounter(monkeypatch)
    cache = load_or_build_cache(ds, "train", cache_dir=tmp_path, progress=False)
    assert counter.n == 12 and len(cache) == 12
    assert json.loads(meta_file.read_text())["complete"] is True


def test_partial_cache_without_meta_rebuilt(ds_root, tmp_path, monkeypatch):
    ds = TinyImageNet(ds_root)
    # a half-written array from an interrupted run, and no meta file
    np.save(tmp_path / "train_64px_images.npy", np.zeros((5, 64, 64, 3), np.uint8))
    counter = DecodeCounter(monkeypatch)
    cache = load_or_build_cache(ds, "train", cache_dir=tmp_path, progress=False)
    assert counter.n == 12 and cache.images.shape == (12, 64, 64, 3)
    assert cache.images.any()


def test_cache_rebuilt_when_array_shape_disagrees(ds_root, tmp_path, monkeypatch):
    ds = TinyImageNet(ds_root)
    load_or_build_cache(ds, "train", cache_dir=tmp_path, progress=False)
    np.save(tmp_path / "train_64px_images.npy", np.zeros((3, 64, 64, 3), np.uint8))
    counter = DecodeCounter(monkeypatch)
    cache = load_or_build_cache(ds, "train", cache_dir=tmp_path, progress=False)
    assert counter.n == 12 and len(cache) == 12 and cache.images.shape[0] == 12


def test_pool_decoding_matches_single_process(ds_root, tmp_path, monkeypatch):
    ds = TinyImageNet(ds_root)
    single = load_or_build_cache(ds, "train", cache_dir=tmp_path / "a", progress=False, workers=1)
    monkeypatch.setattr(cache_mod, "_POOL_MIN_IMAGES", 1)
    pooled = load_or_build_cache(ds, "train", cache_dir=tmp_path / "b", progress=False, workers=2)
    assert pooled.paths == single.paths
    assert np.array_equal(np.asarray(pooled.images), np.asarray(single.images))


def test_default_cache_dir(ds_root, tmp_path, monkeypatch):
    assert default_cache_dir(ds_root) == ds_root.resolve() / ".ranking_cache"
    ro = make_dataset(tmp_path / "ro", wnids=("a", "b"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.chmod(ro, 0o555)
    try:
        d = default_cache_dir(ro)
        assert not (ro / ".ranking_cache").exists()
        assert d.parent == tmp_path / "home" / ".cache" / "ranking_lib" and len(d.name) == 12
        cache = load_or_build_cache(TinyImageNet(ro), "val", progress=False)
        assert len(cache) == 4 and cache.cache_file.parent == d
    finally:
        os.chmod(ro, 0o755)


def test_a_shared_cache_dir_says_it_held_another_dataset(ds_root, tmp_path, caplog):
    """Two datasets pointed at one --cache-dir: each build says whose cache it replaces; even a
    byte-identical copy elsewhere (same names, sizes, mtimes) is another dataset."""
    import shutil

    other = make_dataset(tmp_path / "other", wnids=("n007", "n008"))
    twin = Path(shutil.copytree(ds_root, tmp_path / "twin"))  # copy2: same sizes and mtimes
    shared = tmp_path / "shared"
    load_or_build_cache(TinyImageNet(ds_root), "val", cache_dir=shared, progress=False)
    for ds, was, n in ((other, ds_root, 6), (twin, other, 4), (ds_root, twin, 6)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ranking_lib.data"):
            cache = load_or_build_cache(TinyImageNet(ds), "val", cache_dir=shared, progress=False)
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(said) == 1 and f"it holds another dataset's images ({was.resolve()}, {n} images; this dataset " \
            f"is {ds.resolve()})" in said[0] and "give each its own --cache-dir" in said[0], said
        assert "changed" not in said[0]
        assert cache.wnids == TinyImageNet(ds).wnids and len(cache) == len(TinyImageNet(ds).items("val"))
        meta = json.loads((shared / "val_64px_meta.json").read_text())
        assert meta["root"] == str(ds.resolve())


# ----------------------------------------------------------------------------- real sample
def test_real_sample(tmp_path):
    if not (SAMPLE / "wnids.txt").is_file():
        pytest.skip(f"tiny-imagenet sample not found at {SAMPLE}")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in SAMPLE.rglob("*"))
    ds = TinyImageNet(SAMPLE)
    assert ds.num_classes == 20
    assert len(ds.items("train")) == 2000 and len(ds.items("val")) == 1000
    for split, n in (("train", 2000), ("val", 1000)):
        cache = load_or_build_cache(ds, split, cache_dir=tmp_path, progress=False)
        assert len(cache) == n and cache.images.shape == (n, 64, 64, 3)
        assert cache.images.dtype == np.uint8
        assert np.bincount(cache.labels, minlength=20).tolist() == [n // 20] * 20
        assert cache.skipped == []
    assert sorted((str(p), p.stat().st_mtime_ns) for p in SAMPLE.rglob("*")) == before  # nothing written there
