"""The explorer in a real browser: JupyterLab runs ``notebooks/explore.ipynb`` and Voila serves it,
on a tiny demo run; headless Chromium picks, uploads and reads the results from the page (DOM text
and images), errors included. Skips with the reason where Chromium or Playwright is missing."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import explore_browser as eb
from tiny_runs import embedded_run

pytestmark = pytest.mark.slow
WHY = eb.missing()
if WHY:
    pytest.skip(f"browser test skipped: {WHY}", allow_module_level=True)

K = 10


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny finished run (trained and baseline embeddings, and an index ``photos`` of 8 of its
    demo images, one deleted since) and a run dir without embeddings."""
    from ranking_lib.core.config import RunConfig
    from ranking_lib.own_images import index_folder

    root = tmp_path_factory.mktemp("browser")
    run = embedded_run(root, steps=1)
    empty = root / "no-embeddings"
    empty.mkdir()
    shutil.copy(run / "config.json", empty / "config.json")
    photos = root / "photos"
    photos.mkdir()
    for f in sorted((root / "data" / "val" / "images").glob("*.JPEG"))[:8]:
        shutil.copy(f, photos / f.name)
    index_folder(RunConfig.load(run / "config.json"), photos, name="photos", progress=False)
    (photos / "val_1.JPEG").unlink()
    return run, empty


@pytest.fixture(scope="module")
def servers(run, tmp_path_factory):
    """JupyterLab (its notebook folder a copy, its first run dir one without embeddings) and Voila
    (on the finished run, as ``make explore`` starts it, its root the run's parent), started together."""
    run_dir, empty = run
    work = tmp_path_factory.mktemp("servers")
    nbdir = work / "notebooks"
    nbdir.mkdir()
    shutil.copy(eb.NOTEBOOK, nbdir / "explore.ipynb")
    lab = eb.Server("lab", nbdir, work / "lab", {"RANKING_EXPLORE_RUN": str(empty)})
    voila = eb.Server("voila", nbdir / "explore.ipynb", work / "voila",
                      args=["--run-dir", str(run_dir), "--root", str(run_dir.parent)])
    try:
        yield lab.wait(), voila.wait()
    finally:
        lab.stop()
        voila.stop()


@pytest.fixture()
def page(tmp_path):
    with eb.chromium(tmp_path / "profile") as p:
        yield p


def _png(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _options(page, selector: str) -> list[str]:
    """A dropdown's option labels as the user reads them (ipywidgets writes non-breaking spaces)."""
    texts = page.eval_on_selector_all(f"{selector} select option", "els => els.map(e => e.textContent)")
    return [t.replace("\xa0", " ") for t in texts]


def _selected(page, selector: str) -> str:
    return page.eval_on_selector(f"{selector} select", "e => e.options[e.selectedIndex].textContent").replace("\xa0", " ")


def _results(page) -> tuple[int, list[str]]:
    return page.locator(".rx-results img.rx-img").count(), eb.distances(page)


def _no_traceback(page) -> None:
    text = page.inner_text("body")
    assert "Traceback" not in text and "Error:" not in text.replace("error:", "")


def test_jupyterlab_runs_the_notebook_picks_and_uploads(servers, run, page, tmp_path):
    lab, _ = servers
    run_dir, empty = run
    page.goto(lab.url("lab/tree/explore.ipynb"), timeout=60_000)
    page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000)
    page.wait_for_function("() => { const w = window.jupyterapp.shell.currentWidget;"
                           " return w && w.sessionContext && w.sessionContext.session &&"
                           " w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'; }",
                           timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # the notebook's run dir has no embeddings: one readable line in the page, no traceback
    line = eb.wait_status(page, "error:", 60)
    assert line.startswith("error: embeddings not found:") and "\n" not in line, line
    assert page.locator(".rx-results img").count() == 0
    _no_traceback(page)
    page.screenshot(path=str(tmp_path / "lab-error.png"))

    # another run dir, chosen in the page
    page.fill(".rx-run-dir input", str(run_dir))
    page.click(".rx-open")
    eb.wait_status(page, "shown in", 30)
    n, first = _results(page)
    assert n == 2 * 2 * K and len(first) == 2 * 2 * K and all(d.startswith("d=") for d in first)
    assert page.locator(".rx-panel[data-model=trained] .rx-tile").count() == 2 * K
    assert page.locator(".rx-panel[data-model=baseline] .rx-tile").count() == 2 * K
    shown = page.inner_text(".rx-query")

    # find a class by name: another class than the one shown
    classes, current = _options(page, ".rx-class"), _selected(page, ".rx-class")
    other = next(c for c in classes if c != current).rsplit(" (", 1)[0]
    before = eb.picks(page)
    page.fill(".rx-find input", other[:12])
    eb.wait_pick(page, before)
    assert other in page.inner_text(".rx-query") and page.inner_text(".rx-query") != shown
    n, after_find = _results(page)
    assert n == 2 * 2 * K and after_find != first

    # pick another image of that class
    images = _options(page, ".rx-image")
    before = eb.picks(page)
    page.select_option(".rx-image select", index=len(images) - 1)
    eb.wait_pick(page, before)
    assert images[-1] in page.inner_text(".rx-query") and eb.distances(page) != after_find

    # a val index typed in
    before = eb.picks(page)
    page.fill(".rx-index input", "1")
    page.press(".rx-index input", "Enter")
    eb.wait_pick(page, before)
    assert page.inner_text(".rx-query").startswith("val 1:")

    # upload an image file (val image 2's pixels) and a file that is not an image
    from ranking_lib.explore import QueryExplorer

    ex = QueryExplorer(run_dir, k=K)
    upload = tmp_path / "my photo.png"
    upload.write_bytes(_png(ex.val.images[2]))
    eb.upload(page, upload)
    # the upload's own line (a pick counted before it may still land first on a loaded machine);
    # the first upload loads both networks
    line = eb.wait_status(page, "uploaded: my photo.png", 60)
    assert line.startswith("uploaded: my photo.png") and "uploaded: my photo.png" in page.inner_text(".rx-query")
    want = [f"d={float(d):.3f}" for d in ex.query_val(2).top_distances]
    got = eb.distances(page)[:K]  # the trained panel's top row
    assert got == want
    page.screenshot(path=str(tmp_path / "lab-upload.png"), full_page=True)

    bad = tmp_path / "notes.txt"
    bad.write_text("not an image\n")
    eb.upload(page, bad)
    line = eb.wait_status(page, "error:")
    assert line.startswith("error: corrupt or truncated image: 'notes.txt'") and "\n" not in line, line
    assert eb.distances(page)[:K] == got  # the last result stays
    _no_traceback(page)


def test_voila_page_picks_and_shows_results(servers, run, page, tmp_path):
    _, voila = servers
    page.goto(voila.url(), timeout=60_000)
    eb.wait_status(page, "shown in", 60)
    n, first = _results(page)
    assert n == 2 * 2 * K and all(d.startswith("d=") for d in first)
    page.screenshot(path=str(tmp_path / "voila.png"))
    before = eb.picks(page)
    page.click(".rx-random")
    eb.wait_pick(page, before)
    classes, current = _options(page, ".rx-class"), _selected(page, ".rx-class")
    other = next(c for c in reversed(classes) if c != current)
    before = eb.picks(page)
    page.select_option(".rx-class select", index=classes.index(other))
    eb.wait_pick(page, before)
    assert other.rsplit(" (", 1)[0] in page.inner_text(".rx-query")
    assert _results(page)[0] == 2 * 2 * K and eb.distances(page) != first
    page.locator(".rx-app").screenshot(path=str(tmp_path / "voila-explorer.png"))
    _no_traceback(page)
    shown = eb.distances(page)

    # an index of own images: a name the run lacks is one line; its own shows a file's neighbours
    from ranking_lib.core.config import RunConfig
    from ranking_lib.own_images import query_index

    names = page.eval_on_selector_all(".rx-coll-name datalist option", "els => els.map(e => e.value)")
    assert names == ["photos"]  # the box's suggestions
    page.fill(".rx-coll-name input", "nope")
    page.press(".rx-coll-name input", "Enter")
    line = eb.wait_status(page, "error:")
    assert line.startswith("error: index ") and "indexes/nope not found: build it with" in line and "\n" not in line
    page.fill(".rx-coll-name input", "photos")
    page.press(".rx-coll-name input", "Enter")
    eb.wait_status(page, "nearest shown in", 60)
    cfg = RunConfig.load(run[0] / "config.json")
    for pick in ("val_0.JPEG", "val_12.JPEG"):
        if pick != "val_0.JPEG":  # the first file is shown on opening; another one typed in
            page.fill(".rx-coll-file input", pick)
            page.press(".rx-coll-file input", "Enter")
            eb.wait_status(page, f"photos: {pick}: 7 nearest shown in")
        _, hits = query_index(cfg, "photos", file=pick, k=K)
        tiles = page.locator(".rx-coll-results .rx-ctile")
        assert tiles.count() == 7 and page.locator(".rx-coll-results img.rx-cimg").count() == 6
        got = page.eval_on_selector_all(".rx-coll-results .rx-ctile", "els => els.map(e => [e.dataset.path, "
                                        "e.querySelector('.rx-cdist').textContent])")
        assert got == [[p, f"d={d:.3f}"] for p, d in hits]
        assert page.inner_text(".rx-coll-results .rx-ctile[data-path='val_1.JPEG'] .rx-note") == "deleted since indexing"
    assert eb.distances(page) == shown  # the training set's results stay
    page.locator(".rx-app").screenshot(path=str(tmp_path / "voila-index.png"))
    _no_traceback(page)

    # a folder outside the server's root, holding only a hand-written config.json: refused in one
    # line before anything is read (the dataset it names is not decoded, its cache dir not made)
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tmp_path / "cache-it-chose"
    cfg = json.loads((run[0] / "config.json").read_text())
    (outside / "config.json").write_text(json.dumps({**cfg, "run_dir": str(outside), "cache_dir": str(cache)}))
    shown = eb.distances(page)
    page.fill(".rx-run-dir input", str(outside))
    page.click(".rx-open")
    line = eb.wait_status(page, "error:")
    assert line.startswith(f"error: {outside} is outside {run[0].parent.resolve()}") and "\n" not in line, line
    assert not cache.exists() and eb.distances(page) == shown


# ---- who may reach the page ------------------------------------------------------------------
def _get(url: str, host: str | None = None, **headers) -> tuple[int, dict, str]:
    """status, headers and body of a GET (redirects not followed), with `host` as the Host header."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers={**({"Host": host} if host else {}), **headers})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_voila_refuses_a_request_without_its_token(servers, page):
    _, voila = servers
    before = voila.kernels()
    status, headers, _ = _get(voila.url(token=False))
    assert status == 302 and "/login" in headers["Location"]  # to the token form, nothing started
    resp = page.goto(voila.url(token=False), timeout=60_000)
    assert resp.ok and "/login" in page.url and page.locator(".rx-app").count() == 0
    assert _get(voila.url(token=False) + "?token=" + "0" * 48)[0] == 302  # a wrong one
    time.sleep(1)
    assert voila.kernels() == before


def test_voila_refuses_a_foreign_host(servers, tmp_path):
    """A page on another site whose name now resolves to 127.0.0.1 (DNS rebinding) sends its own
    name as Host and Origin: refused, token or not, page or kernel websocket."""
    _, voila = servers
    before = voila.kernels()
    with eb.chromium(tmp_path / "profile", resolve={"rebind.example": "127.0.0.1"}) as page:
        resp = page.goto(voila.url(host="rebind.example"), timeout=60_000)
        assert resp.status == 403
        assert page.inner_text("body").startswith("refused: this explorer does not answer to the host name "
                                                  "'rebind.example'")
        assert page.locator(".rx-app").count() == 0
    kernel = "00000000-0000-4000-8000-000000000000"
    ws = dict(Upgrade="websocket", Connection="Upgrade", Origin=f"http://rebind.example:{voila.port}",
              **{"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    channels = voila.url(f"api/kernels/{kernel}/channels")
    assert _get(channels, host=f"rebind.example:{voila.port}", **ws)[0] == 403
    assert _get(channels, **{**ws, "Origin": f"http://127.0.0.1:{voila.port}"})[0] == 404  # past the Host check
    assert voila.kernels() == before


def test_a_burst_of_pages_starts_at_most_max_kernels_and_idle_ones_are_culled(run, tmp_path):
    run_dir, _ = run
    voila = eb.Server("voila", eb.NOTEBOOK, tmp_path / "voila", timeout=120,
                      args=["--run-dir", str(run_dir), "--max-kernels", "2", "--cull-idle-seconds", "4"]).wait()
    try:
        most, done = [0], []

        def watch():
            while not done:
                most[0] = max(most[0], voila.kernels())
                time.sleep(0.2)

        with ThreadPoolExecutor(21) as pool:
            watcher = pool.submit(watch)
            answers = list(pool.map(lambda _: _get(voila.url()), range(20)))
            done.append(True)
            watcher.result()
        codes = [a[0] for a in answers]
        assert codes.count(200) == 2 and codes.count(503) == 18, codes
        assert all("at its most open pages (2, --max-kernels)" in body for code, _, body in answers if code == 503)
        assert most[0] <= 2
        end = time.monotonic() + 60  # the two pages' kernels: idle, no browser connected
        while voila.kernels() and time.monotonic() < end:
            time.sleep(0.5)
        assert voila.kernels() == 0
        assert _get(voila.url())[0] == 200  # room again
    finally:
        voila.stop()
