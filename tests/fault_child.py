"""Child process for the fault-injection tests: the CLI, stopped at a chosen point of a save.

    python tests/fault_child.py <cli args...>

Environment:
  FAULT_STALL_REPLACE  regex: the first atomic rename onto a file whose name matches it writes
                       the temp file's path to FAULT_MARKER and then sleeps (the test kills it).
  FAULT_STALL_DECODE   N: decoding the N-th image writes FAULT_MARKER and sleeps (mid-cache).
"""

import os
import re
import sys
import time


def _stall(what: str) -> None:
    with open(os.environ["FAULT_MARKER"] + ".tmp", "w") as f:
        f.write(what)
    os.rename(os.environ["FAULT_MARKER"] + ".tmp", os.environ["FAULT_MARKER"])
    time.sleep(600)


def main() -> int:
    pattern = os.environ.get("FAULT_STALL_REPLACE")
    if pattern:
        real_replace = os.replace

        def stalling_replace(src, dst, *a, **k):
            if re.search(pattern, os.path.basename(str(dst))):
                _stall(str(src))
            return real_replace(src, dst, *a, **k)

        os.replace = stalling_replace
    decode_at = os.environ.get("FAULT_STALL_DECODE")
    if decode_at:
        from ranking_lib.data import decode

        real_load, count = decode.load_image_rgb, [0]

        def stalling_load(*a, **k):
            count[0] += 1
            if count[0] == int(decode_at):
                _stall("decode")
            return real_load(*a, **k)

        decode.load_image_rgb = stalling_load
    from ranking_lib.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
