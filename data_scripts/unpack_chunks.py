"""Rebuild a dataset folder from the chunks and manifest that ``pack_chunks.py`` wrote.

    python data_scripts/unpack_chunks.py --chunks runs/chunks --out data     # -> data/tiny-imagenet-200

Every chunk is checked first (none missing, none extra, each of the manifest's size and SHA-256);
then the files are written into a temporary folder beside the destination, each checked against
its SHA-256, and the folder is renamed into place, so the destination appears whole or not at
all. Unpacking the same manifest again finds the folder and leaves it as it is. Exit status: 0
done, 2 an incomplete or damaged chunk set or bad input (one ``error: ...`` line), 1 an OS error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_scripts.chunks import unpack  # noqa: E402
from ranking_lib.core.errors import DiskFullError, RankingError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", default="runs/chunks", help="folder holding the chunks and the manifest (default: runs/chunks)")
    p.add_argument("--out", required=True, help="folder that will hold the dataset folder (e.g. data)")
    p.add_argument("--name", help="which chunk set, when the folder holds several manifests")
    p.add_argument("--manifest", help="the manifest's path (default: <chunks>/<name>.manifest.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target = unpack(args.chunks, args.out, name=args.name, manifest=args.manifest, show_progress=not args.quiet)
    except DiskFullError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or type(e).__name__}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 1
    print(f"dataset ready: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
