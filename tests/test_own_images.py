"""Your own images (`ranking_lib.own_images`): index a folder of mixed formats with broken files,
incremental reruns, kill -9 and resume, queries, near-duplicate groups, the exported network."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ranking_lib import cli
from ranking_lib.collection import store
from tests.tiny_runs import embedded_run

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "fault_child.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return embedded_run(tmp_path_factory.mktemp("own"), steps=2)


def _sources(run: Path, n: int) -> list[np.ndarray]:
    """`n` distinct demo training images (64 px RGB) of the run's dataset."""
    files = sorted(Path(run.parent / "data").glob("train/*/images/*.JPEG"))
    step = max(1, len(files) // n)
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[::step][:n]]


def _save(arr: np.ndarray, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **kw)
    return path


def _bomb_png(path: Path) -> Path:
    """A PNG whose header claims 8,000 x 8,000 pixels (64 megapixels: 192 MB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 8000, 8000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    return path


def mixed_folder(root: Path, run: Path) -> tuple[list[str], list[str]]:
    """Images in every format (modes RGB, RGBA, L, P, CMYK; a two-frame GIF) in subfolders, and
    broken files; returns (good paths, broken paths), relative."""
    a, b, c, d, e, f, g = _sources(run, 7)
    good = [_save(a, root / "a.jpg", "JPEG"), _save(b, root / "sub" / "b.png", "PNG"),
            _save(c, root / "sub" / "deep" / "c.webp", "WEBP"), _save(d, root / "d.BMP", "BMP")]
    Image.fromarray(e).convert("CMYK").save(root / "e_cmyk.tiff", format="TIFF")
    Image.fromarray(f).convert("L").save(root / "f_gray.png")
    Image.fromarray(f).convert("RGBA").save(root / "f_alpha.png")
    Image.fromarray(g).convert("P").save(root / "g_palette.png")
    frames = [Image.fromarray(g).convert("P"), Image.fromarray(a).convert("P")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored rotated, shown turned 90 degrees clockwise
    Image.fromarray(np.ascontiguousarray(b[:, 8:])).rotate(90, expand=True).save(root / "exif.jpg", exif=exif)
    good = [p.relative_to(root).as_posix() for p in good] + ["e_cmyk.tiff", "f_gray.png", "f_alpha.png",
                                                             "g_palette.png", "anim.gif", "exif.jpg"]
    full = (root / "a.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "not_an_image.png").write_text("hello")
    _bomb_png(root / "bomb.png")
    os.symlink("loop.jpg", root / "loop.jpg")
    (root / "notes.txt").write_text("not an image suffix: left out")
    return sorted(good), sorted(["truncated.jpg", "not_an_image.png", "bomb.png", "loop.jpg"])


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _index(run: Path, folder: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return _cli(["index", "--run-dir", str(run), "--images", str(folder), "--quiet", *extra], capsys)


def _load(run: Path, name: str) -> store.IndexData:
    return store.load_npz(run / "indexes" / name / "index.npz")


# ---------------------------------------------------------------------------------- index
def test_index_of_mixed_formats_lists_what_it_skipped(run, tmp_path, capsys):
    folder = tmp_path / "mixed"
    good, broken = mixed_folder(folder, run)
    rc, out, err = _index(run, folder, capsys)
    assert rc == 0, err
    data = _load(run, "mixed")
    assert data.paths == good
    assert data.embeddings.shape == (len(good), 8)
    assert f"{len(good)} images" in out and "4 skipped" in out
    skipped = {s["path"]: s["reason"] for s in data.meta["skipped"]}
    assert sorted(skipped) == broken
    assert "symlink loop" in skipped["loop.jpg"] and "megapixels" in skipped["bomb.png"]
    for b in broken:
        assert f"skipped: {b}: " in out
    assert "1 file(s) without an image suffix" in out
    # the file's identity: size, mtime, SHA-256; the network's: the checkpoint's step and weights' hash
    import hashlib
    i = data.row("a.jpg")
    assert data.sha256[i] == hashlib.sha256((folder / "a.jpg").read_bytes()).hexdigest()
    assert data.sizes[i] == (folder / "a.jpg").stat().st_size
    from ranking_lib.training.checkpoint import checkpoint_identity

    ident = checkpoint_identity(run / "checkpoints" / "last.pt")  # what the run's embedding files record
    assert {k: data.meta["network"][k] for k in ident} == ident and len(ident["weights_sha256"]) == 64
    # each row is the library's embedding of the file decoded as the dataset was
    from ranking_lib.data.decode import load_image_rgb
    from ranking_lib.models.inference import embed_images
    from ranking_lib.core.config import RunConfig
    from ranking_lib.workflow import load_model

    cfg = RunConfig.load(run / "config.json").replace(run_dir=str(run))
    names = ("anim.gif", "e_cmyk.tiff", "exif.jpg")
    img = np.stack([load_image_rgb(folder / p, 64) for p in names])
    z = embed_images(load_model(cfg, "trained"), img, progress=False, device="cpu")
    np.testing.assert_allclose(data.embeddings[[data.row(p) for p in names]], z, atol=1e-5)
    with Image.open(folder / "exif.jpg") as raw:  # the row is of the upright image (EXIF applied)
        assert raw.size == (64, 56) and load_image_rgb(folder / "exif.jpg", 64).shape == (64, 64, 3)
        assert not np.array_equal(np.asarray(raw.convert("RGB").resize((64, 64), Image.BILINEAR)), img[2])


def test_an_empty_folder_is_one_line_and_exit_2(run, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    rc, out, err = _index(run, tmp_path / "empty", capsys)
    assert rc == 2 and err.startswith("error: no images in") and len(err.strip().splitlines()) == 1


def test_an_index_of_another_network_is_refused(run, tmp_path, capsys):
    folder = tmp_path / "my photos"
    for i, img in enumerate(_sources(run, 3)):
        _save(img, folder / f"{i}.png", "PNG")
    assert _index(run, folder, capsys, "--model", "baseline")[0] == 0
    assert _load(run, "my_photos").meta["network"]["model"] == "baseline"  # the folder's name, made plain
    rc, out, err = _index(run, folder, capsys, "--model", "trained")
    assert rc == 2 and "was made by another network" in err and len(err.strip().splitlines()) == 1


def test_a_rerun_embeds_only_added_and_changed_files(run, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "inc"
    imgs = _sources(run, 8)
    for i, img in enumerate(imgs[:6]):
        _save(img, folder / f"{i}.png", "PNG")
    (folder / "broken.png").write_text("x")  # tried again on each run: a shard of no images
    assert _index(run, folder, capsys)[0] == 0
    before = _load(run, "inc")
    _save(imgs[6], folder / "new.png", "PNG")                     # added
    _save(imgs[7], folder / "1.png", "PNG")                       # changed content
    os.utime(folder / "2.png", ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes
    (folder / "3.png").unlink()                                   # deleted
    from ranking_lib.data import decode

    decoded, real = [], decode.load_image_rgb

    def counting(path, *a, **k):
        decoded.append(Path(path).name)
        return real(path, *a, **k)
    monkeypatch.setattr(decode, "load_image_rgb", counting)
    rc, out, err = _index(run, folder, capsys)
    assert rc == 0, err
    assert "(added 1, changed 1, removed 1, unchanged 4); embedded 2 now" in out
    after = _load(run, "inc")
    assert after.paths == ["0.png", "1.png", "2.png", "4.png", "5.png", "new.png"]
    for p in ("0.png", "2.png", "4.png", "5.png"):  # untouched rows: the same bytes
        assert np.array_equal(after.embeddings[after.row(p)], before.embeddings[before.row(p)])
    assert not np.allclose(after.embeddings[after.row("1.png")], before.embeddings[before.row("1.png")])
    assert after.mtimes[after.row("2.png")] == (folder / "2.png").stat().st_mtime_ns
    assert sorted(decoded) == ["1.png", "new.png"]  # the unreadable file, unchanged, is not tried again
    rc, out, err = _index(run, folder, capsys)  # nothing changed: nothing embedded
    assert rc == 0, err
    assert "unchanged 6); embedded 0 now; 1 skipped" in out


def test_kill_9_mid_index_then_rerun_gives_the_uninterrupted_index(run, tmp_path, capsys):
    folder = tmp_path / "big"
    for i, img in enumerate(_sources(run, 14)):
        _save(img, folder / f"{i:02d}.png", "PNG")
    (folder / "00_broken.png").write_text("x")  # a skipped file inside the first shard
    args = ["index", "--run-dir", str(run), "--images", str(folder), "--quiet", "--shard-size", "5"]
    marker = tmp_path / "marker"
    env = dict(os.environ, FAULT_MARKER=str(marker), PYTHONPATH=str(REPO), FAULT_STALL_DECODE="12")
    proc = subprocess.Popen([sys.executable, str(CHILD), *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() - t0 < 120, "the child never reached the 12th image"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    index_dir = run / "indexes" / "big"
    assert not (index_dir / "index.npz").exists()
    assert len(list((index_dir / "shards").glob("shard_*.npz"))) == 2  # 10 files done, in two whole shards
    rc, out, err = _cli(args, capsys)
    assert rc == 0, err
    assert "embedded 5 now, 10 files taken from an interrupted run; 1 skipped" in out
    assert not (index_dir / "shards").exists()
    rc, _, err = _cli([*args, "--name", "big-whole"], capsys)
    assert rc == 0, err
    resumed, whole = _load(run, "big"), _load(run, "big-whole")
    assert resumed.paths == whole.paths and resumed.sha256 == whole.sha256
    np.testing.assert_allclose(resumed.embeddings, whole.embeddings, atol=1e-6)
    assert resumed.meta["skipped"] == whole.meta["skipped"]


# ---------------------------------------------------------------------------------- query, duplicates
@pytest.fixture(scope="module")
def real_run(real_sample_dir, small_cache_dir, tmp_path_factory) -> Path:
    """A run on the real sample's first 4 classes, prepared only: its frozen pretrained network
    (``--model baseline``) at 64 px, and 200 val images to calibrate the near-duplicate threshold."""
    from tests.conftest import SMALL_CLASSES

    run = tmp_path_factory.mktemp("own_real") / "run"
    assert cli.main(["prepare", "--quiet", "--data-dir", str(real_sample_dir), "--cache-dir", str(small_cache_dir),
                     "--max-classes", str(SMALL_CLASSES), "--run-dir", str(run), "--input-size", "64",
                     "--near-dup-queries", "200"]) == 0
    return run


def _real_sources(sample: Path, n: int) -> list[np.ndarray]:
    """`n` real training images of classes the run does not hold (the 6th class on), 64 px."""
    from tests.conftest import SMALL_CLASSES

    wnids = (sample / "wnids.txt").read_text().split()[SMALL_CLASSES + 1:]
    files = [f for w in wnids for f in sorted((sample / "train" / w / "images").glob("*.JPEG"))[:3]]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[:n]]


def planted_folder(root: Path, sources: list[np.ndarray]) -> dict[str, str]:
    """The `sources` and, for every third of them, a crop, a JPEG re-encoding and a resize;
    returns copy -> original."""
    planted = {}
    for i, img in enumerate(sources):
        orig = _save(img, root / f"img{i:02d}.png", "PNG").name
        if i % 3:
            continue
        pil = Image.fromarray(img)
        w, h = pil.size
        _save(np.asarray(pil.crop((4, 4, w - 4, h - 4)).resize((w, h), Image.BICUBIC)), root / "copies" / f"crop{i}.png", "PNG")
        _save(img, root / "copies" / f"jpeg{i}.jpg", "JPEG", quality=40)
        _save(np.asarray(pil.resize((2 * w, 2 * h), Image.BICUBIC)), root / "copies" / f"big{i}.png", "PNG")
        planted.update({f"copies/crop{i}.png": orig, f"copies/jpeg{i}.jpg": orig, f"copies/big{i}.png": orig})
    return planted


def test_duplicates_finds_planted_copies(real_run, real_sample_dir, tmp_path, capsys):
    run = real_run
    folder = tmp_path / "dups"
    planted = planted_folder(folder, _real_sources(real_sample_dir, 30))
    assert _index(run, folder, capsys, "--model", "baseline")[0] == 0
    rc, out, err = _cli(["duplicates", "--run-dir", str(run), "--index", "dups", "--quiet"], capsys)
    assert rc == 0, err
    assert "calibrated on the near-duplicate protocol" in out and "precision" in out and "recall" in out
    import csv
    rows = list(csv.DictReader((run / "indexes" / "dups" / "duplicates.csv").open()))
    group = {r["path"]: r["group"] for r in rows}
    family = lambda p: planted.get(p, p)  # noqa: E731 - a copy's family is its original
    found = [(a, b) for a in group for b in group if a < b and group[a] == group[b]]
    precision = sum(family(a) == family(b) for a, b in found) / max(len(found), 1)
    recall = sum(c in group and group[c] == group.get(o) for c, o in planted.items()) / len(planted)
    print(out)
    print(f"planted copies {len(planted)}, pairs in groups {len(found)}: precision {precision:.2f}, recall {recall:.2f}")
    assert precision >= 0.9 and recall >= 0.8
    html = (run / "indexes" / "dups" / "duplicates.html").read_text()
    assert html.count("data:image/png;base64,") == len(rows) and "d = " in html
    calib = (run / "near_dup_threshold_baseline.json")
    assert calib.is_file()


def test_groups_never_chain_and_the_threshold_bounds_false_pairs():
    from ranking_lib.collection import duplicates as dup

    line = np.array([[0, 0], [0.5, 0], [1.0, 0], [1.5, 0], [5, 5], [5, 5.1]], np.float32)  # a chain, a pair
    pairs = dup.near_pairs(line, 0.6, index_options={"backend": "torch"})
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (1, 2), (2, 3), (4, 5)]
    assert dup.groups(line, pairs, 0.6) == [[0, 1], [2, 3], [4, 5]]  # 0 and 3 are 1.5 apart: not one group
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0, 1, 1000), rng.uniform(0.5, 2, 100_000)
    c = dup.calibrate(pos, neg, false_pair_rate=1e-3)
    assert (neg <= c["threshold"]).sum() == 100 and c["threshold"] < np.sort(neg)[100]
    assert c["recall"] == pytest.approx(100 * (pos <= c["threshold"]).mean())
    assert c["precision"] == pytest.approx(100 * (pos <= c["threshold"]).sum() / ((pos <= c["threshold"]).sum() + 100))


def test_the_calibration_draws_whole_classes_and_says_when_it_cannot_measure_its_rate():
    from ranking_lib.collection import duplicates as dup

    labels = np.repeat(np.arange(200), 50)  # the full val split's shape: 200 classes of 50
    ids = dup.calibration_ids(labels, 200, seed=0)
    assert len(ids) == 200 and len(np.unique(labels[ids])) == 20  # 20 classes of 10: 900 pairs of one class
    assert np.array_equal(ids, dup.calibration_ids(labels, 200, seed=0))
    assert not np.array_equal(ids, dup.calibration_ids(labels, 200, seed=1))
    few_classes = dup.calibration_ids(np.repeat(np.arange(20), 50), 1000)  # the sample: every image of 20 classes
    assert len(few_classes) == 1000
    # a random draw of as many images gives about 100 such pairs (what the 100,000-image run met)
    rand = np.random.default_rng(0).choice(len(labels), 200, replace=False)
    assert sum(np.bincount(labels[rand]) * (np.bincount(labels[rand]) - 1) // 2) < 200
    assert len(dup.calibration_ids(np.arange(10), 5)) == 0  # no class with two images: nothing to draw
    few = dup.calibrate(np.array([0.1, 0.2]), np.linspace(0.5, 2, 5000))
    assert not few["measured"] and few["threshold"] < 0.5
    assert "5,000 pairs of different images of one class cannot measure a false-pair rate of 1 in 10,000" in \
        dup.calibration_note(few)
    enough = dup.calibrate(np.array([0.1, 0.2]), np.linspace(0.5, 2, 20_000))
    assert enough["measured"] and dup.calibration_note(enough) is None


def test_query_an_index_by_file_and_by_image(run, tmp_path, capsys):
    folder = tmp_path / "q"
    planted = planted_folder(folder, _sources(run, 6))
    assert _index(run, folder, capsys, "--model", "baseline")[0] == 0
    base = ["query", "--run-dir", str(run), "--index", "q", "--k", "3"]
    rc, out, err = _cli([*base, "--file", "copies/jpeg0.jpg"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "query copies/jpeg0.jpg" and "copies/jpeg0.jpg" not in "\n".join(lines[1:])
    assert len(lines) == 5 and planted["copies/jpeg0.jpg"] in "\n".join(lines[2:4])
    rc, out, err = _cli([*base, "--image", str(folder / "img03.png")], capsys)
    assert rc == 0, err
    first = out.splitlines()[2].split()
    assert first[1] == "img03.png" and float(first[0]) < 1e-4
    rc, _, err = _cli([*base, "--file", "nope.png"], capsys)
    assert rc == 2 and "not in index q" in err
    for bad in (["--file", "img03.png"], ["--index", "q", "--val-index", "0"]):  # nothing silently dropped
        rc, _, err = _cli(["query", "--run-dir", str(run), *bad], capsys)
        assert rc == 2 and err.startswith("error: query --index NAME takes")


# ---------------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_exported_network_matches_the_library(run, tmp_path, capsys, fmt):
    import json

    import torch

    from ranking_lib.core.config import RunConfig
    from ranking_lib.models.inference import embed_images
    from ranking_lib.workflow import load_model

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"net.{fmt}"
    rc, stdout, err = _cli(["export", "--run-dir", str(run), "--format", fmt, "--out", str(out)], capsys)
    assert rc == 0, err
    contract = json.loads(Path(str(out) + ".json").read_text())
    assert contract["input"]["dtype"] == "uint8" and contract["output"]["shape"] == [8]
    images = np.stack(_sources(run, 4))
    cfg = RunConfig.load(run / "config.json").replace(run_dir=str(run))
    want = embed_images(load_model(cfg, "trained"), images, progress=False, device="cpu")
    if fmt == "torchscript":
        module = torch.jit.load(str(out))
        got = np.stack([module(torch.from_numpy(im)).numpy() for im in images])
        other = module(torch.zeros(100, 37, 3, dtype=torch.uint8)).numpy()
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = np.stack([sess.run(None, {"image": im})[0] for im in images])
        other = sess.run(None, {"image": np.zeros((100, 37, 3), np.uint8)})[0]
    assert np.abs(got - want).max() <= 1e-4
    assert other.shape == (8,)  # any image size in


# ---------------------------------------------------------------------------------- benchmark
def test_bench_index_folder_writes_its_numbers_and_card(run, tmp_path):
    import json

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_index_folder
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    folder = tmp_path / "bench"
    for i, img in enumerate(_sources(run, 6)):
        _save(img, folder / f"{i}.png", "PNG")
    (folder / "broken.png").write_text("x")
    out = tmp_path / "index_folder.json"
    assert bench_index_folder.main(["--images", str(folder), "--profile", "demo", "--near-dup-queries", "0",
                                    "--name", "index-elsewhere", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["full"]["images"], r["full"]["embedded"], r["full"]["skipped"]) == (6, 6, 1)
    assert r["full"]["images_per_s"] > 0 and r["full"]["peak_rss_mb"] > 100
    assert (r["rerun_unchanged"]["embedded"], r["rerun_unchanged"]["images"]) == (0, 6)
    assert r["machine"]["cpu_flags"] is not None and r["duplicates"] is None
    card = json.loads((tmp_path / "index_folder.card.json").read_text())
    assert card["kind"] == "benchmark" and card["phases"]["index"] == pytest.approx(r["full"]["wall_s"], abs=0.051)
    # a card under another name still names the script that made it
    assert card["name"] == "index-elsewhere" and card["command"].startswith("python benchmarks/bench_index_folder.py ")
