"""Serve the explorer page (``notebooks/explore.ipynb``) with Voila to one person on this machine:

* a random token, printed in the URL (``?token=...``); a request without it starts nothing;
* a Host allow-list: a request whose ``Host`` is not a loopback address, ``localhost`` or a name
  given with ``--allow-host`` is refused with 403 before any handler runs (a page on another
  site whose name was re-pointed at 127.0.0.1, DNS rebinding, sends its own name);
* idle kernels are culled (``--cull-idle-seconds``) and at most ``--max-kernels`` run at once
  (each is a Python process holding a run's caches and networks); a page past the cap is a 503;
* the page's run-directory box opens only directories under ``--root`` (symlinks resolved),
  passed to the kernels as ``RANKING_EXPLORE_ROOT``.

``make explore RUN=runs/x [ROOT=runs] [PORT=8866]`` runs ``python -m ranking_lib.explore_server``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from ranking_lib.core.errors import RankingError

TOKEN_ENV = "RANKING_EXPLORE_TOKEN"  # a fixed token for scripts that start the server (not in argv)
RUN_ENV, ROOT_ENV = "RANKING_EXPLORE_RUN", "RANKING_EXPLORE_ROOT"
LOCAL_NAMES = ("localhost",)


def host_allowed(host_name: str, names=LOCAL_NAMES) -> bool:
    """Whether a request's host name (the ``Host`` header without its port) is one the server
    answers to: a loopback address, or one of `names` (names or addresses, case-insensitive)."""
    host = host_name.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in {n.strip().lower().strip("[]") for n in names}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def inside_root(path: str | Path, root: str | Path) -> Path:
    """`path` resolved (symlinks followed; a relative path is taken under `root`), or a one-line
    `RankingError` when it lies outside `root`."""
    base = Path(root).expanduser().resolve()
    full = (base / Path(path).expanduser()).resolve()  # an absolute `path` replaces `base`
    if not full.is_relative_to(base):
        raise RankingError(f"{path} is outside {base}, the only folder this explorer opens runs from "
                           "(start it with make explore ROOT=... to serve another)")
    return full


# ---- the server's parts (jupyter_server / Voila / tornado imported only here) -------------------
def _kernel_manager_class():
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from tornado import web
    from traitlets import Integer

    class CappedKernelManager(AsyncMappingKernelManager):
        """Refuses to start a kernel while `max_kernels` run or are starting."""

        max_kernels = Integer(4, config=True, help="most kernels (open pages) at once")

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._starting = 0

        async def start_kernel(self, *args, **kwargs):
            running = len(self.list_kernel_ids()) + self._starting
            if running >= self.max_kernels:
                why = (f"the explorer is at its most open pages ({self.max_kernels}, --max-kernels); close one, "
                       "or wait until an idle one is closed")
                raise web.HTTPError(503, why, reason=why)  # the reason is what Voila's error page shows
            self._starting += 1
            try:
                return await super().start_kernel(*args, **kwargs)
            finally:
                self._starting -= 1

    return CappedKernelManager


def _voila_class():
    from tornado import web
    from tornado.routing import Matcher, Rule
    from traitlets import List, Unicode
    from voila.app import Voila

    class ForeignHost(Matcher):
        def __init__(self, names):
            self.names = names

        def match(self, request):
            return None if host_allowed(request.host_name, self.names) else {}

    class RefuseHost(web.RequestHandler):
        def prepare(self):
            self.set_status(403)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"refused: this explorer does not answer to the host name {self.request.host_name!r} "
                        "(start it with --allow-host NAME to add one)\n")

    class ExplorerVoila(Voila):
        """Voila answering only the allowed host names, and printing its URL with the token."""

        allowed_hosts = List(Unicode(), list(LOCAL_NAMES), config=True, help="host names answered besides loopback")

        def listen(self):
            # before every route Voila added (pages, kernels' websockets, static files)
            self.app.default_router.rules.insert(0, Rule(ForeignHost(self.allowed_hosts), RefuseHost))
            from tornado.ioloop import IOLoop

            IOLoop.current().add_callback(self._say_url)
            super().listen()

        def _say_url(self):
            ip = "127.0.0.1" if self.ip in ("", "0.0.0.0", "localhost") else self.ip
            print(f"explorer: http://{ip}:{self.port}/?token={self.identity_provider.token}", flush=True)

    return ExplorerVoila


def _config(args, kernels):
    from traitlets.config import Config

    c = Config()
    c.ExplorerVoila.allowed_hosts = [*LOCAL_NAMES, *args.allow_host]
    c.Voila.port_retries = 0  # the port asked for, or a clear failure
    c.Voila.open_browser = False
    c.VoilaConfiguration.multi_kernel_manager_class = kernels
    c.CappedKernelManager.max_kernels = args.max_kernels
    c.MappingKernelManager.cull_idle_timeout = args.cull_idle_seconds
    c.MappingKernelManager.cull_interval = max(1, min(60, args.cull_idle_seconds // 2))
    return c


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ranking_lib.explore_server",
                                 description="Serve the explorer page (notebooks/explore.ipynb) with Voila: "
                                             "a random token in the URL it prints, localhost only, a cap on "
                                             "open pages, idle ones closed, runs opened only under --root.")
    ap.add_argument("--run-dir", required=True, type=Path, help="the run the page opens first")
    ap.add_argument("--root", type=Path, default=None,
                    help="the folder the page may open runs from (default: the run directory's parent)")
    ap.add_argument("--port", type=int, default=8866, help="port to listen on (default 8866)")
    ap.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="a host name or address the page may be reached by besides localhost and loopback "
                         "addresses (repeatable; what a remote browser puts in its URL when --ip is not a "
                         "loopback address)")
    ap.add_argument("--max-kernels", type=int, default=4,
                    help="most pages (each a kernel holding the run in memory) open at once (default 4)")
    ap.add_argument("--cull-idle-seconds", type=int, default=600,
                    help="close a page's kernel after this long idle with no browser connected (default 600)")
    ap.add_argument("--notebook", type=Path, default=None,
                    help="the page's notebook (default: notebooks/explore.ipynb of the checkout)")
    return ap


def _check(args) -> None:
    from ranking_lib.core.paths import checkout_file

    if args.max_kernels < 1:
        raise RankingError(f"--max-kernels must be >= 1 (got {args.max_kernels})")
    if args.cull_idle_seconds < 1:
        raise RankingError(f"--cull-idle-seconds must be >= 1 (got {args.cull_idle_seconds})")
    if not (args.run_dir / "config.json").is_file():
        raise RankingError(f"no run at {args.run_dir} ({args.run_dir / 'config.json'} not found)")
    args.root = (args.root or args.run_dir.resolve().parent).resolve()
    if not args.root.is_dir():
        raise RankingError(f"--root {args.root} is not a directory")
    args.run_dir = inside_root(args.run_dir.resolve(), args.root)
    args.notebook = args.notebook or checkout_file("notebooks/explore.ipynb")
    if args.notebook is None or not args.notebook.is_file():
        raise RankingError(f"explorer notebook not found ({args.notebook or 'no checkout'}); pass --notebook")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check(args)
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    token = os.environ.pop(TOKEN_ENV, "") or secrets.token_hex(24)  # the kernels never see it
    os.environ.update({RUN_ENV: str(args.run_dir), ROOT_ENV: str(args.root)})  # the kernels' environment
    app = _voila_class()(config=_config(args, _kernel_manager_class()))
    app.initialize([str(args.notebook), f"--port={args.port}", f"--Voila.ip={args.ip}", f"--token={token}"])
    print(f"explorer: runs under {args.root}; at most {args.max_kernels} pages, idle ones closed after "
          f"{args.cull_idle_seconds} s", flush=True)
    app.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
