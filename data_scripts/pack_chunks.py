"""Pack a Tiny ImageNet folder into chunks small enough to carry one per transfer, plus a manifest.

    python data_scripts/pack_chunks.py --data-dir data/tiny-imagenet-200            # -> runs/chunks/
    python data_scripts/pack_chunks.py --data-dir D --out runs/chunks --chunk-mib 56 [--include-test]

The files' bytes go into the chunks unchanged (JPEGs are not re-encoded), back to back in sorted
path order; ``<name>.manifest.json`` lists each chunk's and each file's size and SHA-256
(format: ``data_scripts/chunks.py``). ``unpack_chunks.py`` puts the folder back bit-exact on the
other side. The default chunk size, 56 MiB, leaves room for the working tree in a 64 MiB
transfer. Exit status: 0 done, 2 bad input (one ``error: ...`` line), 1 an OS error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_scripts.chunks import DEFAULT_CHUNK_MIB, MIB, pack  # noqa: E402
from ranking_lib.core.errors import DiskFullError, RankingError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the dataset folder to pack (e.g. data/tiny-imagenet-200)")
    p.add_argument("--out", default="runs/chunks", help="folder for the chunks and the manifest (default: runs/chunks, "
                                                        "ignored by git)")
    p.add_argument("--chunk-mib", type=float, default=DEFAULT_CHUNK_MIB,
                   help=f"size of each chunk in MiB (default {DEFAULT_CHUNK_MIB}; the last one is shorter)")
    p.add_argument("--name", help="name of the chunk set (default: the dataset folder's name)")
    p.add_argument("--include-test", action="store_true", help="also pack the unlabelled test/ split (left out by default)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        packed = pack(args.data_dir, args.out, chunk_mib=args.chunk_mib, name=args.name,
                      include_test=args.include_test, show_progress=not args.quiet)
    except DiskFullError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or type(e).__name__}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 1
    biggest = max(p.stat().st_size for p in packed.chunks)
    print(f"packed {packed.files:,} files ({packed.total_bytes / MIB:,.1f} MiB) into {len(packed.chunks)} chunks "
          f"of at most {biggest / MIB:,.1f} MiB; manifest {packed.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
