"""Faults and hostile input, second round: data that crosses splits, labels and triplets nobody
checked, classes without training images, null settings, huge triplet counts, Ctrl-C during
training, orphaned stage features and messages that blamed the wrong thing.

Each case asserts the one-line message, the exit status and that nothing was written.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_flags

from data_scripts.make_demo_dataset import make_demo_dataset
from ranking_lib import cli, workflow
from ranking_lib.core.errors import DatasetError
from ranking_lib.data import TinyImageNet, load_image_rgb, load_or_build_cache
from ranking_lib.data.decode import MAX_PIXELS
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.protocol import queries_without_match

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("rel2") / "data", num_classes=4, train_per_class=20,
                             val_per_class=5, seed=0)


@pytest.fixture
def data(demo, tmp_path) -> Path:
    """A private copy of the demo dataset, free to damage."""
    return Path(shutil.copytree(demo, tmp_path / "data"))


def _flags(data, run_dir, cache_dir, **over) -> list[str]:
    return tiny_flags(data, run_dir, cache_dir, **{"embed_batch_size": 64, **over})


def _run_cli(args, capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, [ln for ln in out.err.splitlines() if ln.strip()], out.out


def _logged(caplog) -> list[str]:
    """The warnings logged since the last call (under pytest they go to caplog, not stderr)."""
    out = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    caplog.clear()
    return out


def _files(*dirs) -> set[Path]:
    return {p for d in dirs if Path(d).exists() for p in Path(d).rglob("*") if p.is_file()}


def _rewrite_annotations(data: Path, transform) -> None:
    ann = data / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join(transform(lines)) + "\n")


# ---------------------------------------------------------------------------- 1. splits stay apart
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

    _rewrite_annotations(data, edit)
    run, cache = tmp_path / "run", tmp_path / "cache"
    rc, err, _ = _run_cli(["prepare"] + _flags(data, run, cache), capsys)
    assert rc == 2 and len(err) == 1, err
    assert "val_annotations.txt line 3: file name" in err[0] and "inside val/images/" in err[0], err
    assert _files(cache) == set() and not (run / "config.json").exists()


def test_val_link_to_a_training_image_is_refused(data, tmp_path, capsys):
    target = data / "train" / _first_train_image(data)
    val0 = data / "val" / "images" / "val_0.JPEG"
    val0.unlink()
    val0.symlink_to(target)
    rc, err, _ = _run_cli(["prepare"] + _flags(data, tmp_path / "run", tmp_path / "cache"), capsys)
    assert rc == 2 and len(err) == 1 and "is a link to" in err[0] and "outside val/images/" in err[0], err
    assert _files(tmp_path / "cache") == set()


def test_a_file_in_both_splits_is_refused_and_identical_pixels_are_reported(data, tmp_path, capsys, caplog):
    run, cache = tmp_path / "run", tmp_path / "cache"
    rc, err, out = _run_cli(["prepare"] + _flags(data, run, cache), capsys)
    assert rc == 0 and "train/val: no file in both splits, no val image with the pixels of a training image" in out
    # a copy of a training image as a val image: same pixels, other file -> reported
    target = data / "train" / _first_train_image(data)
    shutil.copyfile(target, data / "val" / "images" / "val_1.JPEG")
    caplog.set_level("WARNING")
    rc, err, out = _run_cli(["prepare"] + _flags(data, run, cache), capsys)
    assert rc == 0, err
    err = _logged(caplog)
    dup = [ln for ln in err if "have the same decoded pixels as a training image" in ln]
    assert len(dup) == 1 and "val/images/val_1.JPEG = train/" in dup[0], err
    # the same file (a hard link) in both splits -> refused
    (data / "val" / "images" / "val_2.JPEG").unlink()
    os.link(target, data / "val" / "images" / "val_2.JPEG")
    rc, err, _ = _run_cli(["prepare"] + _flags(data, run, cache), capsys)
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


# ---------------------------------------------------------------------------- 2. embeddings and triplets
@pytest.fixture(scope="module")
def embedded(demo, tmp_path_factory):
    """A run dir with triplets and baseline embeddings of both splits (no training needed)."""
    root = tmp_path_factory.mktemp("emb")
    flags = _flags(demo, root / "run", root / "cache")
    for step in ("prepare", "sample", "embed"):
        assert cli.main(([step] + flags + (["--model", "baseline"] if step == "embed" else []))) == 0, step
    return root / "run", flags


def _tamper(src: Path, dst: Path, **change) -> None:
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for k, f in change.items():
        d[k] = f(d[k])
    with open(dst, "wb") as fh:
        np.savez(fh, **d)


def _copy_run(embedded, tmp_path) -> tuple[Path, list[str]]:
    run, flags = embedded
    mine = Path(shutil.copytree(run, tmp_path / "run"))
    flags = list(flags)
    flags[flags.index("--run-dir") + 1] = str(mine)
    return mine, flags


def test_embeddings_record_what_they_were_computed_from(embedded):
    run, _ = embedded
    idx = EmbeddingIndex.load(run / "embeddings_baseline_val.npz")
    assert idx.meta["split"] == "val" and idx.meta["num_images"] == len(idx) == 20
    assert idx.meta["wnids"] == TinyImageNet(Path(json.loads((run / "config.json").read_text())["data_dir"])).wnids
    assert isinstance(idx.meta["image_cache_crc32"], int) and idx.paths[0].startswith("val/images/")


TAMPER = {
    "labels 999": (dict(labels=lambda a: np.where(np.arange(len(a)) == 3, 999, a)), "label(s) differ"),
    "labels -5": (dict(labels=lambda a: np.full_like(a, -5)), "label(s) differ"),
    "labels shuffled": (dict(labels=lambda a: np.roll(a, 5)), "label(s) differ"),
    "cut to 10 rows": (dict(embeddings=lambda a: a[:10], labels=lambda a: a[:10], paths=lambda a: a[:10]),
                       "has 10 rows but the val split"),
    "paths swapped": (dict(paths=lambda a: a[::-1]), "row 0 is image"),
    "other class list": (dict(meta=lambda m: np.array(json.dumps({**json.loads(str(m)), "wnids": ["a", "b"]}))),
                         "another class list"),
    "other image cache": (dict(meta=lambda m: np.array(json.dumps({**json.loads(str(m)), "image_cache_crc32": 7}))),
                          "computed from other images"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_embeddings_are_refused_naming_the_file(embedded, case, tmp_path, capsys):
    run, flags = _copy_run(embedded, tmp_path)
    change, msg = TAMPER[case]
    path = run / "embeddings_baseline_val.npz"
    _tamper(path, path, **change)
    for cmd in (["evaluate", "--model", "baseline"], ["query", "--model", "baseline", "--val-index", "0"]):
        rc, err, _ = _run_cli(cmd + flags, capsys)
        assert rc == 2 and len(err) == 1, (cmd, err)
        assert err[0].startswith(f"error: embedding file {path}") and msg in err[0] and "re-run 'embed'" in err[0], err
        assert "triplet" not in err[0]
    assert not (run / "metrics_baseline.json").exists()


def test_triplet_sidecar_without_its_hash_is_refused(embedded, tmp_path, capsys):
    run, flags = _copy_run(embedded, tmp_path)
    side = run / "triplets_val.json"
    meta = json.loads(side.read_text())
    del meta["sha256"]
    side.write_text(json.dumps(meta))
    t = np.load(run / "triplets_val.npy")
    t[:, 1] = t[:, 0]  # edited: each positive is its query
    np.save(run / "triplets_val.npy", t)
    rc, err, _ = _run_cli(["evaluate", "--model", "baseline"] + flags, capsys)
    assert rc == 2 and len(err) == 1 and "triplets_val.npy" in err[0] and "has no sha256" in err[0], err
    assert not (run / "metrics_baseline.json").exists()


# ---------------------------------------------------------------------------- 3. a class without training images
def test_class_without_training_images_is_named_and_counted(data, tmp_path, capsys, caplog):
    wnid = (data / "wnids.txt").read_text().split()[-1]
    for f in (data / "train" / wnid / "images").iterdir():
        f.unlink()
    flags = _flags(data, tmp_path / "run", tmp_path / "cache")
    caplog.set_level("WARNING")
    rc, err, _ = _run_cli(["prepare"] + flags, capsys)
    assert rc == 0, err
    warn = [ln for ln in _logged(caplog) if wnid in ln]
    assert len(warn) == 1 and f"class {wnid} has no train images: its 5 val queries" in warn[0], err
    for step in (["sample"], ["embed", "--model", "baseline"]):
        assert _run_cli(step + flags, capsys)[0] == 0
    rc, err, out = _run_cli(["evaluate", "--model", "baseline"] + flags, capsys)
    assert rc == 0, err
    assert "note: 5 val queries have no image of their class in the database" in out
    metrics = json.loads((tmp_path / "run" / "metrics_baseline.json").read_text())
    assert metrics["val"]["queries_without_match"] == 5 and metrics["train"].get("queries_without_match") is None


def test_queries_without_match_counts_classes_missing_from_the_database():
    assert queries_without_match(np.array([0, 1, 2, 2, 3]), np.array([0, 1, 1])) == 3
    assert queries_without_match(np.array([0, 1]), np.array([1, 0])) == 0


# ---------------------------------------------------------------------------- 4. null, huge counts, Ctrl-C
NULL_FIELDS = ["run_dir", "data_dir", "lr", "device", "seed", "ks", "steps", "pretrained", "augment",
               "squared_distance"]


@pytest.mark.parametrize("field", NULL_FIELDS)
def test_null_in_a_config_file_is_one_line_unless_the_type_allows_it(field, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({field: None}))
    rc, err, _ = _run_cli(["sample", "--config", cfg, "--run-dir", tmp_path / "run"], capsys)
    assert rc == 2 and len(err) == 1 and f"config field {field} expects" in err[0] and "got null" in err[0], err
    assert not (tmp_path / "run").exists()


def test_null_where_the_type_allows_it_is_accepted():
    from ranking_lib.core.config import RunConfig

    cfg = RunConfig.from_dict({"max_classes": None, "cache_dir": None, "num_threads": None, "index_nlist": None})
    assert cfg.max_classes is None and cfg.cache_dir is None


def test_runner_set_null_is_one_line(tmp_path, capsys):
    from report import run_pipeline

    rc = run_pipeline.main(["--run-dir", str(tmp_path / "run"), "--set", "lr=null"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "lr expects float" in err[0] and "got null" in err[0], err
    assert not (tmp_path / "run").exists()


def test_huge_num_triplets_is_refused_before_any_work(demo, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    for cmd in ("sample", "all"):
        t0 = time.perf_counter()
        rc, err, _ = _run_cli([cmd] + _flags(demo, run, cache, num_triplets=10_000_000_000), capsys)
        assert rc == 2 and len(err) == 1, err
        assert "num_triplets=10,000,000,000" in err[0] and "lower --num-triplets" in err[0], err
        assert "228,881.8 MB" in err[0] or "686,645.5 MB" in err[0], err  # 10^10 x 3 x 8 bytes (x3 to sample)
        assert time.perf_counter() - t0 < 30
    assert not cache.exists() and _files(run) <= {run / ".lock"}  # no cache built, no triplets written


def test_ctrl_c_during_train_is_one_line_and_the_next_train_resumes_where_it_says(demo, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    flags = _flags(demo, run, cache, steps=400, checkpoint_every=3)
    for s in ("prepare", "sample"):
        assert _run_cli([s] + flags, capsys)[0] == 0
    # as from a terminal: a suite started in the background (nohup, `&`) has SIGINT ignored, and
    # the child would inherit that
    proc = subprocess.Popen([sys.executable, "-m", "ranking_lib", "train", *map(str, flags)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log, t0 = run / "loss_log.csv", time.time()
    try:
        while not (log.is_file() and len(log.read_text().splitlines()) > 8):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 240, "training never got going"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 130 and len(err) == 1, stderr
    assert err[0].startswith("error: interrupted: train stopped after step ") and "Traceback" not in stderr
    said = int(err[0].split("resumes from step ")[1].split(" ")[0].replace(",", ""))
    from ranking_lib.training.checkpoint import read_checkpoint

    assert said >= 3 and said % 3 == 0 and read_checkpoint(run / "checkpoints" / "last.pt")["step"] == said
    cfg = cli.config_from_args(cli.build_parser().parse_args(["train"] + _flags(demo, run, cache, steps=said + 1,
                                                                                   checkpoint_every=3)))
    result = workflow.train(cfg, progress=False)
    assert result.resumed_from == said and result.steps == said + 1


# ---------------------------------------------------------------------------- 5. orphaned stage features
def test_cache_rebuild_removes_stage_files_of_the_old_cache_and_prepare_names_strays(data, tmp_path, capsys,
                                                                                     caplog):
    from types import SimpleNamespace

    from ranking_lib.models.stage_cache import stage_features_file

    run, cache_dir = tmp_path / "run", tmp_path / "cache"
    flags = _flags(data, run, cache_dir)
    assert _run_cli(["prepare"] + flags, capsys)[0] == 0
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
    rc, err, _ = _run_cli(["prepare"] + flags, capsys)
    assert rc == 0
    err = _logged(caplog)
    stray = [ln for ln in err if "not computed from the current caches" in ln]
    assert len(stray) == 1 and stray[0].startswith("1 file(s)") and "notes.txt" in stray[0], err  # current ones pass
    # a training image changes: the train cache is rebuilt and what was computed from it goes
    img = sorted((data / "train").rglob("*.JPEG"))[0]
    os.utime(img, (time.time() + 5, time.time() + 5))
    rc, err, _ = _run_cli(["prepare"] + flags, capsys)
    assert rc == 0, err
    err = _logged(caplog)
    assert not current.exists() and not current.with_suffix(".json").exists() and not golden.exists()
    assert any("removed 2 file(s) computed from the old train cache" in ln for ln in err), err
    assert notes.exists() and (cache_dir / "val_64px_images.npy").exists()
    # a stage file left by an earlier cache (its key no longer matches): named, left alone
    old = current.with_name(current.name[:-20] + "0123456789abcdef.npy")
    np.save(old, np.zeros((2, 2), np.float16))
    rc, err, _ = _run_cli(["prepare"] + flags, capsys)
    err = _logged(caplog)
    stray = [ln for ln in err if "not computed from the current caches" in ln]
    assert rc == 0 and len(stray) == 1 and stray[0].startswith("2 file(s)") and old.exists(), err


# ---------------------------------------------------------------------------- 6. messages
def test_query_image_that_is_not_a_regular_file(embedded, capsys):
    run, flags = embedded
    rc, err, _ = _run_cli(["query", "--model", "baseline", "--image", "/dev/zero"] + flags, capsys)
    assert rc == 2 and err == ["error: image path /dev/zero is not a regular file (a directory, device or pipe); "
                               "pass an image file"], err


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
    rc, err, _ = _run_cli(["query", "--model", "baseline", "--image", big] + flags, capsys)
    assert rc == 2 and len(err) == 1 and "above the 50 megapixels" in err[0], err


def test_empty_checkpoint_is_named(embedded, tmp_path, capsys):
    run, flags = _copy_run(embedded, tmp_path)
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes(b"")
    for cmd in (["train"], ["embed"]):
        rc, err, _ = _run_cli(cmd + flags, capsys)
        assert rc == 2 and len(err) == 1 and f"checkpoint {ckpt} is empty (0 bytes" in err[0], err
    assert ckpt.read_bytes() == b""
    ckpt.write_bytes(b"PK\x03\x04")  # a truncated file: says it is damaged, not a bare "EOFError:"
    rc, err, _ = _run_cli(["train"] + flags, capsys)
    assert rc == 2 and len(err) == 1 and "not a checkpoint file, or damaged (" in err[0], err


def test_read_only_run_dir_says_what_to_do(embedded, tmp_path, capsys, monkeypatch):
    run, flags = _copy_run(embedded, tmp_path)
    from ranking_lib.core import runlock

    real_open = os.open

    def ro_open(path, flags_, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags_, *a, **k)

    monkeypatch.setattr(runlock.os, "open", ro_open)
    before = {p: p.stat().st_mtime_ns for p in _files(run)}
    rc, err, _ = _run_cli(["sample"] + flags, capsys)
    assert rc == 1 and len(err) == 1, err
    assert err[0] == (f"error: Read-only file system: {run / '.lock'}; that place cannot be written: pass a "
                      "--run-dir (or --cache-dir) on a writable filesystem, or make it writable")
    assert {p: p.stat().st_mtime_ns for p in _files(run)} == before


def test_read_only_mount_says_what_to_do(embedded, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the injected case covers it")
    try:
        _, flags = embedded
        flags = list(flags)
        flags[flags.index("--run-dir") + 1] = str(ro)
        rc, err, _ = _run_cli(["sample"] + flags, capsys)
        assert rc == 1 and len(err) == 1 and "Read-only file system" in err[0] and "writable" in err[0], err
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_bad_choice_is_one_error_line_not_the_usage(embedded, capsys):
    _, flags = embedded
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--model", "bogus"] + flags)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: argument --model: invalid choice: 'bogus'") and "--help" in err[0]


def test_index_nlist_beyond_the_database_is_one_line(embedded, capsys):
    pytest.importorskip("faiss")
    run, flags = embedded
    capsys.readouterr()
    rc, err, _ = _run_cli(["evaluate", "--model", "baseline", "--search-backend", "faiss-ivf",
                           "--index-nlist", "100000"] + flags, capsys)
    assert rc == 2 and len(err) == 1, err
    assert "index_nlist=100000 is more IVF lists than a database of 80 vectors can train" in err[0], err
    assert "k=" not in err[0] and "nprobe" not in err[0]


def test_full_disk_exits_1_as_the_readme_says(embedded, tmp_path, capsys, monkeypatch):
    from ranking_lib.core import fileio

    run, flags = _copy_run(embedded, tmp_path)
    monkeypatch.setattr(fileio.os, "posix_fallocate",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    rc, err, _ = _run_cli(["sample"] + flags, capsys)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: no space left on the device to write "), err
    readme = (REPO / "README.md").read_text()
    assert "1 an OS error, a full disk included" in readme


# ---------------------------------------------------------------------------- 6. which network, which run
@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    """A run trained for 4 steps, both models embedded, the trained one evaluated."""
    root = tmp_path_factory.mktemp("net")
    flags = _flags(demo, root / "run", root / "cache", steps=4)
    for step in (["prepare"], ["sample"], ["train"], ["embed"], ["embed", "--model", "baseline"], ["evaluate"]):
        assert cli.main(step + flags) == 0, step
    return root / "run", flags


def _own_copy(trained, tmp_path, name="run") -> tuple[Path, list[str]]:
    """A copy of the trained run whose config.json names the copy (as a run made there would)."""
    from ranking_lib.core.config import RunConfig

    run, flags = trained
    mine = Path(shutil.copytree(run, tmp_path / name, symlinks=True))
    RunConfig.load(mine / "config.json").replace(run_dir=str(mine)).save(mine / "config.json")
    flags = list(flags)
    flags[flags.index("--run-dir") + 1] = str(mine)
    return mine, flags


def _train_on(flags, steps) -> list[str]:
    out = list(flags)
    out[out.index("--steps") + 1] = str(steps)
    return out


def test_embeddings_name_the_network_that_computed_them(trained):
    run, _ = trained
    t, b = (EmbeddingIndex.load(run / f"embeddings_{m}_val.npz").meta["network"] for m in ("trained", "baseline"))
    assert t["model"] == "trained" and t["checkpoint_step"] == 4 and len(t["weights_sha256"]) == 64
    assert b == {"model": "baseline", "backbone": "efficientnet_lite0", "pretrained": True, "input_size": 32}


def _refused(cmds, flags, path: Path, capsys, *words) -> None:
    for cmd in cmds:
        rc, err, _ = _run_cli(cmd + flags, capsys)
        assert rc == 2 and len(err) == 1, (cmd, err)
        assert err[0].startswith(f"error: embedding file {path} was computed by "), err
        assert all(w in err[0] for w in words) and "re-run 'embed --model trained'" in err[0], err


READERS = [["evaluate"], ["query", "--val-index", "0"]]


def test_val_embeddings_of_another_network_are_refused_and_the_metrics_kept(trained, tmp_path, capsys):
    run, flags = _own_copy(trained, tmp_path)
    other, other_flags = _own_copy(trained, tmp_path, "other")
    for step in (["train"], ["embed"]):  # the other run trained on to step 6
        assert _run_cli(step + _train_on(other_flags, 6), capsys)[0] == 0
    shutil.copy(other / "embeddings_trained_val.npz", run / "embeddings_trained_val.npz")
    before = (run / "metrics_trained.json").read_bytes()
    _refused(READERS, flags, run / "embeddings_trained_val.npz", capsys,
             "checkpoint step 6", "this run's trained network, the trained network of checkpoint step 4")
    assert (run / "metrics_trained.json").read_bytes() == before


def test_baseline_embeddings_renamed_to_trained_are_refused(trained, tmp_path, capsys):
    run, flags = _own_copy(trained, tmp_path)
    for split in ("train", "val"):
        shutil.copy(run / f"embeddings_baseline_{split}.npz", run / f"embeddings_trained_{split}.npz")
    _refused(READERS, flags, run / "embeddings_trained_train.npz", capsys,
             "the frozen pretrained baseline (efficientnet_lite0, 32 px)", "checkpoint step 4")


def test_embed_stopped_after_the_train_file_leaves_a_pair_that_is_refused(trained, tmp_path, capsys):
    """As a SIGTERM between the two files of 'embed' leaves them: train from the new network, val
    from the old (here the train file alone is rewritten, as by --no-evaluate-val)."""
    run, flags = _own_copy(trained, tmp_path)
    assert _run_cli(["train"] + _train_on(flags, 6), capsys)[0] == 0
    assert _run_cli(["embed", "--no-evaluate-val"] + _train_on(flags, 6), capsys)[0] == 0
    _refused(READERS, _train_on(flags, 6), run / "embeddings_trained_val.npz", capsys,
             "checkpoint step 4", "this run's trained network, the trained network of checkpoint step 6")
    assert _run_cli(["embed"] + _train_on(flags, 6), capsys)[0] == 0  # the fix the message names
    assert _run_cli(["evaluate"] + _train_on(flags, 6), capsys)[0] == 0


def test_embeddings_without_a_network_record_are_refused(trained, tmp_path, capsys):
    run, flags = _own_copy(trained, tmp_path)
    path = run / "embeddings_trained_val.npz"
    meta = {k: v for k, v in EmbeddingIndex.load(path).meta.items() if k != "network"}
    _tamper(path, path, meta=lambda m: np.array(json.dumps(meta)))
    rc, err, _ = _run_cli(["evaluate"] + flags, capsys)
    assert rc == 2 and len(err) == 1 and f"embedding file {path} does not record which network" in err[0], err


def test_sigterm_during_a_command_is_one_line(demo, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    flags = _flags(demo, run, cache, steps=400, checkpoint_every=3)
    for s in ("prepare", "sample"):
        assert _run_cli([s] + flags, capsys)[0] == 0
    proc = subprocess.Popen([sys.executable, "-m", "ranking_lib", "train", *map(str, flags)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log, t0 = run / "loss_log.csv", time.time()
    try:
        while not (log.is_file() and len(log.read_text().splitlines()) > 5):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 240, "training never got going"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # a scheduler's time limit
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 143 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert err[0].startswith("error: terminated (SIGTERM): train stopped after step ") and "resumes from step" in err[0]
    assert not [p for p in _files(run, run / "checkpoints") if ".tmp" in p.name]


# ---------------------------------------------------------------------------- 7. a copied run's config, stale triplets
def test_sample_with_a_copied_runs_config_says_where_and_keeps_the_trained_runs_triplets(trained, tmp_path, capsys):
    a, _ = _own_copy(trained, tmp_path, "A")
    b = Path(shutil.copytree(a, tmp_path / "B", symlinks=True))  # cp -a runs/A runs/B
    before = {p.name: p.read_bytes() for p in a.glob("triplets_*")}
    rc, err, out = _run_cli(["sample", "--config", b / "config.json", "--seed", "5", "--quiet"], capsys)
    assert rc == 2 and len(err) == 1, err
    assert f"note: --config {b / 'config.json'} sets run_dir {a}, not the folder it is in ({b})" in out
    assert err[0] == (f"error: run directory {a} already holds triplets_train.npy sampled with seed=0 and a "
                      "checkpoint trained on them; sampling with seed=5 would replace them: pass --replace-triplets "
                      "to do so, or --run-dir for a new run")
    assert {p.name: p.read_bytes() for p in a.glob("triplets_*")} == before
    # the same settings sample the same triplets again: allowed; asked, other settings replace them
    assert _run_cli(["sample", "--config", b / "config.json", "--quiet"], capsys)[0] == 0
    assert {p.name: p.read_bytes() for p in a.glob("triplets_*.npy")} == \
        {k: v for k, v in before.items() if k.endswith(".npy")}
    rc, err, _ = _run_cli(["sample", "--config", b / "config.json", "--seed", "5", "--replace-triplets", "--quiet"],
                          capsys)
    assert rc == 0, err
    assert json.loads((a / "triplets_train.json").read_text())["seed"] == 5


@pytest.mark.parametrize("flag,value,msg", [("--seed", "5", "sampled with seed=0, but the run's config says seed=5"),
                                             ("--val-triplets", "7", "sampled with num_triplets=20, but the run's "
                                                                     "config says num_triplets=7")])
def test_evaluate_refuses_triplets_sampled_with_other_settings(trained, tmp_path, capsys, flag, value, msg):
    run, flags = _own_copy(trained, tmp_path)
    before = (run / "metrics_trained.json").read_bytes()
    rc, err, _ = _run_cli(["evaluate"] + flags + [flag, value], capsys)
    assert rc == 2 and len(err) == 1 and "error: triplet file " in err[0] and msg in err[0], err
    assert (run / "metrics_trained.json").read_bytes() == before
