"""The explorer page in a real browser: start JupyterLab or Voila on localhost and drive headless
Chromium (Debian's ``chromium`` package) through Playwright's sync API. Used by
``tests/test_browser.py``; from the command line it takes a screenshot of the Voila page on a run:

    python scripts/explore_browser.py --run-dir runs/x --out docs/figures/explorer.png [--find goldfish]

Each server gets a free port, a random token and its own config, data and runtime folders; the
browser a fresh profile and no network beyond localhost.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def missing() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    try:
        import voila  # noqa: F401
        import ipywidgets  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} in {timeout:.0f} s: {log.read_text()[-2000:]}")


class Server:
    """A JupyterLab (``kind="lab"``) or Voila server in its own folders; ``url(path)`` adds the token.
    Voila is started as ``make explore`` starts it (``ranking_lib.explore_server``: token, Host
    allow-list, kernel cap and culling, run root), on `target` (the notebook) with `args`
    (``--run-dir RUN`` and any other of its flags)."""

    def __init__(self, kind: str, target: Path, work: Path, env: dict | None = None, timeout: float = 60,
                 args: list[str] | tuple = ()) -> None:
        self.kind, self.port, self.token = kind, free_port(), secrets.token_hex(16)
        work.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {}),
                    "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
                    "JUPYTER_DATA_DIR": str(work / "data"), "JUPYTER_PLATFORM_DIRS": "1",
                    "IPYTHONDIR": str(work / "ipython"), "RANKING_PROGRESS": "off"}
        common = [f"--port={self.port}", "--no-browser"]
        if kind == "lab":
            cmd = [sys.executable, "-m", "jupyterlab", *common, "--ServerApp.ip=127.0.0.1",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={target}",
                   "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False",
                   "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                   "--LabApp.workspaces_dir=" + str(work / "workspaces")] + (["--allow-root"] if os.geteuid() == 0 else [])
            self.ready = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
        else:
            cmd = [sys.executable, "-m", "ranking_lib.explore_server", "--notebook", str(target),
                   f"--port={self.port}", *args]
            full_env["RANKING_EXPLORE_TOKEN"] = self.token  # not in the command line others can read
            self.ready = f"http://127.0.0.1:{self.port}/voila/static/voila.js?token={self.token}"
        self.log = work / f"{kind}.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(cmd, cwd=target if target.is_dir() else target.parent, env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.timeout = timeout

    def wait(self) -> "Server":
        _wait_http(self.ready, self.proc, self.log, self.timeout)
        return self

    def url(self, path: str = "", token: bool = True, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path.lstrip('/')}" + (f"?token={self.token}" if token else "")

    def kernels(self) -> int:
        """How many kernels the server runs now: its ipykernel child processes, not counting their own
        children (a kernel's subprocess carries the kernel's command line between fork and exec)."""
        import psutil

        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        kernels = {}
        for p in kids:
            try:
                if any("ipykernel" in a for a in p.cmdline()):
                    kernels[p.pid] = p.ppid()
            except psutil.Error:  # exited meanwhile
                pass
        return sum(parent not in kernels for parent in kernels.values())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextmanager
def chromium(profile: Path, width: int = 1500, height: int = 1100, resolve: dict | None = None):
    """A headless Chromium page (fresh user-data-dir), closed on exit. `resolve` maps host names
    to addresses for this browser alone (as a DNS answer would)."""
    from playwright.sync_api import sync_playwright

    rules = [f"--host-resolver-rules={', '.join(f'MAP {h} {a}' for h, a in resolve.items())}"] if resolve else []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + rules,
            viewport={"width": width, "height": height}, chromium_sandbox=False)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            yield page
        finally:
            ctx.close()


# ---- the page -------------------------------------------------------------------------------
def status(page) -> str:
    return page.inner_text(".rx-status").strip()


def distances(page) -> list[str]:
    return page.eval_on_selector_all(".rx-results .rx-dist", "els => els.map(e => e.textContent)")


def wait_status(page, text: str, timeout: float = 30) -> str:
    """Wait until the status line contains `text`; return it."""
    page.wait_for_function("t => { const e = document.querySelector('.rx-status');"
                           " return e && e.innerText.includes(t); }", arg=text, timeout=timeout * 1000)
    return status(page)


def picks(page) -> int:
    """How many results the page has shown (0 before the first)."""
    return int(page.evaluate("() => { const e = document.querySelector('.rx-pick');"
                             " return e ? +e.dataset.pick : 0; }"))


def wait_pick(page, before: int, timeout: float = 30) -> str:
    """Wait until the page shows a result after the `before`-th; return the status line."""
    page.wait_for_function("b => { const e = document.querySelector('.rx-pick'); return e && +e.dataset.pick > b; }",
                           arg=before, timeout=timeout * 1000)
    return status(page)


def upload(page, path: Path) -> None:
    """Upload a file through the page's upload button (the file chooser it opens)."""
    with page.expect_file_chooser() as chooser:
        page.click(".rx-upload")
    chooser.value.set_files(str(path))


def _small_png(png: bytes, colors: int) -> bytes:
    """A screenshot as a palette PNG of `colors` colours (a third of the size; 0 keeps it as is)."""
    if not colors:
        return png
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def screenshot(run_dir: Path, out: Path, find: str | None = None, timeout: float = 120, colors: int = 128) -> Path:
    """The Voila page on `run_dir` (after typing `find` into the class search) as a PNG."""
    work = Path(tempfile.mkdtemp(prefix="explore-shot-"))
    server = Server("voila", NOTEBOOK, work / "voila", timeout=timeout,
                    args=["--run-dir", str(Path(run_dir).resolve())]).wait()
    try:
        with chromium(work / "profile", width=1400, height=900) as page:
            page.goto(server.url(), timeout=timeout * 1000)
            wait_status(page, "shown in", timeout)
            if find:
                before = picks(page)
                page.fill(".rx-find input", find)
                wait_pick(page, before, timeout)
            from ranking_lib.core.fileio import write_bytes

            write_bytes(out, _small_png(page.locator(".rx-app").screenshot(), colors))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "explorer.png")
    ap.add_argument("--find", default=None, help="text typed into the class search before the screenshot")
    ap.add_argument("--colors", type=int, default=128, help="palette size of the PNG (0: full colour)")
    args = ap.parse_args(argv)
    why = missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    print(screenshot(args.run_dir, args.out, args.find, colors=args.colors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
