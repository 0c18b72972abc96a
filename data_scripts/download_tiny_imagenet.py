"""Fetch Tiny ImageNet into ``<out>/tiny-imagenet-200``.

    python data_scripts/download_tiny_imagenet.py --out data            # download + verify + extract
    python data_scripts/download_tiny_imagenet.py --out data --from /path/to/tiny-imagenet-200 [--copy]

The download is streamed to ``<out>/tiny-imagenet-200.zip.part``, checked against the published
size and MD5, renamed, then extracted to a temporary folder and moved into place, so an
interrupted run never leaves a half-extracted dataset behind. ``--from`` validates an existing
extracted copy (wnids, train folders, val annotations) and symlinks (default) or copies it.
Failures exit with status 1 and one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from ranking_lib.data import TinyImageNet
from ranking_lib.core.errors import DatasetError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_SIZE = 248100043  # bytes
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
DATASET_DIRNAME = "tiny-imagenet-200"
TIMEOUT_S = 30


class DownloadError(RuntimeError):
    """Network/IO failure or checksum mismatch while fetching the archive."""


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def validate(path) -> TinyImageNet:
    """Open ``path`` as a dataset and index both splits (raises DatasetError on problems)."""
    ds = TinyImageNet(path)
    ds.items("train")
    ds.items("val")
    return ds


def _verify(zip_path: Path, size: int | None, md5: str | None) -> None:
    if size is not None and zip_path.stat().st_size != size:
        raise DownloadError(f"{zip_path} has {zip_path.stat().st_size} bytes, expected {size}")
    if md5 is not None:
        got = _md5(zip_path)
        if got != md5:
            raise DownloadError(f"{zip_path} has MD5 {got}, expected {md5}")


def _fetch(url: str, dest: Path, timeout: float) -> None:
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as fh:
            total = resp.headers.get("Content-Length")
            bar = tqdm(total=int(total) if total and total.isdigit() else None, unit="B",
                       unit_scale=True, unit_divisor=1024, desc=dest.name)
            try:
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    fh.write(block)
                    bar.update(len(block))
            finally:
                bar.close()
        os.replace(part, dest)
    except BaseException:
        try:
            part.unlink()
        except OSError:
            pass
        raise


def _safe_extract(zip_path: Path, out_dir: Path) -> Path:
    """Extract into a temp dir under ``out_dir`` and move ``tiny-imagenet-200`` into place."""
    target = out_dir / DATASET_DIRNAME
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=out_dir))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            base = tmp.resolve()
            for name in zf.namelist():
                dest = (tmp / name).resolve()
                if dest != base and base not in dest.parents:
                    raise DownloadError(f"{zip_path} contains an unsafe path: {name}")
            zf.extractall(tmp)
        src = tmp / DATASET_DIRNAME
        if not src.is_dir():
            entries = [p for p in tmp.iterdir()]
            if len(entries) == 1 and entries[0].is_dir():
                src = entries[0]
            elif (tmp / "wnids.txt").is_file():
                src = tmp
            else:
                raise DownloadError(f"{zip_path} does not contain a {DATASET_DIRNAME}/ folder")
        validate(src)
        os.replace(src, target)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{zip_path} is not a valid zip archive ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def download(url: str = TINY_IMAGENET_URL, out_dir=".", *, size: int | None = TINY_IMAGENET_SIZE,
             md5: str | None = TINY_IMAGENET_MD5, timeout: float = TIMEOUT_S,
             keep_zip: bool = False) -> Path:
    """Download, verify and extract the archive; returns ``<out_dir>/tiny-imagenet-200``.

    ``size``/``md5`` default to the published values of the official zip (pass ``None`` to skip
    a check, e.g. for a repackaged mirror). Raises :class:`DownloadError` on network failure
    or mismatch, :class:`DatasetError` if the extracted folder is not a valid dataset.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    target = out / DATASET_DIRNAME
    if target.exists():
        validate(target)
        print(f"{target} already present and valid; nothing to do")
        return target
    zip_path = out / (Path(urllib.parse.urlparse(url).path).name or f"{DATASET_DIRNAME}.zip")
    if zip_path.is_file():
        try:
            _verify(zip_path, size, md5)
            print(f"using already downloaded {zip_path}")
        except DownloadError:
            zip_path.unlink()
    if not zip_path.is_file():
        try:
            _fetch(url, zip_path, timeout)
        except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(f"could not download {url} ({' '.join(str(reason).split())})") from None
        except OSError as exc:
            raise DownloadError(f"could not download {url} ({' '.join(str(exc).split())})") from None
        try:
            _verify(zip_path, size, md5)
        except DownloadError:
            zip_path.unlink()  # never keep a bad archive around
            raise
    target = _safe_extract(zip_path, out)
    if not keep_zip:
        zip_path.unlink()
    return target


def ingest(src, out_dir, copy: bool = False) -> Path:
    """Validate an existing extracted copy and link (default) or copy it to ``<out_dir>/tiny-imagenet-200``."""
    if not Path(src).expanduser().is_dir():
        raise DatasetError(f"--from directory not found: {src}")
    ds = validate(src)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    target = out / DATASET_DIRNAME
    if target.is_symlink() or target.exists():
        if target.resolve() == ds.root:
            print(f"{target} already points to {ds.root}; nothing to do")
            return target
        raise DatasetError(f"{target} already exists; remove it or choose another --out")
    if copy:
        tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=out))
        try:
            shutil.copytree(ds.root, tmp / DATASET_DIRNAME, ignore=shutil.ignore_patterns(".ranking_cache"))
            os.replace(tmp / DATASET_DIRNAME, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        target.symlink_to(ds.root, target_is_directory=True)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Download Tiny ImageNet or ingest an existing copy.")
    ap.add_argument("--out", required=True, help="directory that will hold tiny-imagenet-200/")
    ap.add_argument("--from", dest="src", metavar="EXISTING_DIR",
                    help="use an already extracted tiny-imagenet-200 folder instead of downloading")
    ap.add_argument("--copy", action="store_true", help="with --from: copy instead of symlinking")
    ap.add_argument("--url", default=TINY_IMAGENET_URL, help=f"archive URL (default {TINY_IMAGENET_URL})")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the size/MD5 check (for a repackaged mirror)")
    ap.add_argument("--keep-zip", action="store_true", help="keep the downloaded archive")
    args = ap.parse_args(argv)
    try:
        if args.src is not None:
            target = ingest(args.src, args.out, copy=args.copy)
        else:
            verify = not args.no_verify
            target = download(args.url, args.out, size=TINY_IMAGENET_SIZE if verify else None,
                              md5=TINY_IMAGENET_MD5 if verify else None, keep_zip=args.keep_zip)
    except DownloadError as exc:
        print(f"error: {exc}; download it on a machine with internet access "
              f"or pass --from /path/to/{DATASET_DIRNAME}", file=sys.stderr)
        return 1
    except (DatasetError, OSError) as exc:
        msg = " ".join(str(exc).split())
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    ds = TinyImageNet(target)
    print(f"dataset ready: {target} ({ds.num_classes} classes, {len(ds.items('train'))} train, "
          f"{len(ds.items('val'))} val images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
