"""Explore a finished run: pick a val image (by class name, file or val index, or a random image
of a class) or upload any image, and see its top-k and bottom-k training images with their
distances, for the trained model and the frozen pretrained baseline side by side.

`ExplorerApp`: the ipywidgets page (``notebooks/explore.ipynb`` in JupyterLab, or the same notebook
served by Voila: ``make explore RUN=runs/x``) over `explore_search.QueryExplorer` and
`explore_search.IndexExplorer`. The run directory is chosen in the page; every error is one line
in the page.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np

from ranking_lib import workflow
from ranking_lib.core.errors import RankingError
from ranking_lib.explore_server import inside_root
from ranking_lib.explore_search import (MAX_FILE_CHOICES, IndexExplorer, IndexResult,  # noqa: F401 (explore.*)
                                        QueryExplorer, one_line)


# ---- the page ------------------------------------------------------------------------------
class ExplorerApp:
    """The explorer page: run directory, class search, image / val index / random pick, upload,
    and the results of both models side by side; below, one of the run's indexes of the user's own
    images, queried by a file of it or an upload. Errors are one line in the status bar.

    ``app.widget`` is the ipywidgets box to display; the widgets carry ``rx-*`` CSS classes.
    With `root`, the run-directory box opens only directories under it (symlinks resolved; a
    relative path is taken under it): what ``make explore ROOT=...`` serves.
    """

    def __init__(self, run_dir: str | Path = "", k: int = 10, seed: int | None = None, *,
                 root: str | Path | None = None) -> None:
        import ipywidgets as w

        self.k = k
        self.root = root or None  # runs open only from under it (None: anywhere); "" is None
        self.rng = np.random.default_rng(seed)
        self.explorer: QueryExplorer | None = None
        self.collection: IndexExplorer | None = None  # the open index of the user's own images
        self.last_index: IndexResult | None = None
        self.last: dict[str, workflow.QueryResult | str] = {}
        self.text = ""  # the status line, as shown
        self.picks = 0  # results shown so far (the page's data-pick)
        self._quiet = False  # while widgets are set from code
        lay = lambda width: w.Layout(width=width)  # noqa: E731
        style = {"description_width": "initial"}
        self.run_dir = w.Text(value=str(run_dir), description="run dir", layout=lay("60%"), style=style)
        self.open = w.Button(description="open", button_style="primary", layout=lay("80px"))
        self.find = w.Text(placeholder="type a class name or wnid", description="find class",
                           continuous_update=True, layout=lay("30%"), style=style)
        self.cls = w.Dropdown(options=[], description="class", layout=lay("35%"), style=style)
        self.image = w.Dropdown(options=[], description="image", layout=lay("25%"), style=style)
        self.random = w.Button(description="random image of this class", layout=lay("210px"))
        self.index = w.BoundedIntText(value=0, min=0, max=0, description="val index", layout=lay("170px"),
                                      style=style)
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload image")
        self.coll_name = w.Combobox(options=[], placeholder="name of an index of your own images",
                                    description="index", continuous_update=False, layout=lay("30%"), style=style)
        self.coll_file = w.Combobox(options=[], placeholder="a file of the index (type its path, Enter)",
                                    description="file", continuous_update=False, layout=lay("45%"), style=style)
        self.coll_upload = w.FileUpload(accept="image/*", multiple=False, description="upload to index")
        self.status = w.HTML(value="")
        self.results = w.HTML(value="")
        self.coll_results = w.HTML(value="")
        for widget, name in ((self.run_dir, "run-dir"), (self.open, "open"), (self.find, "find"),
                             (self.cls, "class"), (self.image, "image"), (self.random, "random"),
                             (self.index, "index"), (self.upload, "upload"), (self.status, "status"),
                             (self.results, "results"), (self.coll_name, "coll-name"), (self.coll_file, "coll-file"),
                             (self.coll_upload, "coll-upload"), (self.coll_results, "coll-results")):
            widget.add_class(f"rx-{name}")
        self.open.on_click(lambda _: self._guard(self.open_run))
        self.find.observe(lambda ch: self._guard(self._on_find, ch["new"]), names="value")
        self.cls.observe(lambda ch: self._guard(self._on_class, ch["new"]), names="value")
        self.image.observe(lambda ch: self._guard(self._on_pick, ch["new"]), names="value")
        self.index.observe(lambda ch: self._guard(self._on_pick, ch["new"]), names="value")
        self.random.on_click(lambda _: self._guard(self.pick_random))
        self.upload.observe(lambda ch: self._guard(self._on_upload, ch["new"]), names="value")
        self.coll_name.observe(lambda ch: self._guard(self.open_index, ch["new"]), names="value")
        self.coll_file.observe(lambda ch: self._guard(self._on_index_file, ch["new"]), names="value")
        self.coll_upload.observe(lambda ch: self._guard(self._on_index_upload, ch["new"]), names="value")
        self.widget = w.VBox([w.HBox([self.run_dir, self.open]),
                              w.HBox([self.find, self.cls, self.image]),
                              w.HBox([self.random, self.index, self.upload]),
                              w.HBox([self.coll_name, self.coll_file, self.coll_upload]),
                              self.status, self.results, self.coll_results])
        self.widget.add_class("rx-app")
        if str(run_dir):
            self._guard(self.open_run)

    # ---- actions (also callable from code) ---------------------------------------------
    def open_run(self, run_dir: str | Path | None = None) -> None:
        """Load a run directory (its caches and embeddings once) and show its first val image."""
        if run_dir is not None:
            self._set(self.run_dir, str(run_dir))
        path = self.run_dir.value.strip()
        if path and self.root is not None:  # refused before the open run is closed
            path = str(inside_root(path, self.root))
        self.explorer, self.last = None, {}
        self.results.value = ""
        for dd in (self.cls, self.image):
            self._set(dd, None, options=[])
        self._close_index()
        self._set(self.coll_name, "", options=[])
        if not path:
            raise RankingError("type a run directory (one that has been through 'embed') and press open")
        t0 = time.perf_counter()
        first = "baseline" if self._has(path, "baseline") and not self._has(path, "trained") else "trained"
        ex = QueryExplorer(path, first, self.k)
        self.explorer = ex
        self._set(self.index, 0, max=len(ex.val) - 1)
        self._set(self.find, "")
        self._set(self.cls, None, options=ex.class_choices())
        names = ex.index_names()
        self._set(self.coll_name, "", options=names, placeholder=(
            f"{len(names)} index(es) of your own images" if names else
            "none yet: python -m ranking_lib index --run-dir RUN --images DIR"))
        self._say(f"opened {path}: {len(ex.train)} training and {len(ex.val)} val images, "
                  f"{len(ex.val.class_names)} classes, in {time.perf_counter() - t0:.1f} s")
        self.show_val(int(ex.class_images(self.cls.options[0][1])[0][1]) if self.cls.options else 0)

    @staticmethod
    def _has(run_dir: str, model: str) -> bool:
        return (Path(run_dir).expanduser() / f"embeddings_{model}_train.npz").is_file()

    def show_val(self, index: int) -> None:
        """Query val image `index` with every model and show the results side by side."""
        ex = self._explorer()
        t0 = time.perf_counter()
        results = self._each_model(lambda m: ex.query_val(index, m))
        label = int(ex.val.labels[index])
        self._sync_pickers(label, index)
        caption = f"val {index}: {Path(ex.val.paths[index]).name} — {ex.val.class_names[label]} ({ex.val.wnids[label]})"
        self._show(results, ex.val.images[index], caption, t0)

    def show_upload(self, data: bytes, name: str) -> None:
        """Query an uploaded image's bytes with every model."""
        ex = self._explorer()
        t0 = time.perf_counter()
        img = ex.decode_upload(data, name)
        results = self._each_model(lambda m: ex.query_pixels(img, name, m))
        self._show(results, img, f"uploaded: {name}", t0)

    def open_index(self, name: str | None = None) -> None:
        """Open the run's index `name` (``RUN/indexes/NAME``) and show the nearest files of its first file."""
        if name is not None:
            self._set(self.coll_name, name)
        name = self.coll_name.value.strip()
        self._close_index()
        if not name:
            return
        ex = self._explorer()
        t0 = time.perf_counter()
        coll = ex.open_index(name)
        self.collection = coll
        self._set(self.coll_file, "", options=coll.paths[:MAX_FILE_CHOICES])
        self._say(f"opened index {name}: {len(coll)} images of {coll.root} ({coll.model} network) in "
                  f"{time.perf_counter() - t0:.1f} s")
        self.show_index_file(coll.paths[0])

    def show_index_file(self, path: str) -> None:
        """The nearest other files of an indexed file."""
        coll = self._collection()
        t0 = time.perf_counter()
        r = coll.query_file(path)
        self._set(self.coll_file, r.query)
        img, note = coll.thumbnail(r.query)
        self._show_index(r, img, f"{coll.name}: {r.query}" + (f" ({note})" if note else ""), t0, note)

    def show_index_upload(self, data: bytes, name: str) -> None:
        """The nearest indexed files of an uploaded image's bytes."""
        coll = self._collection()
        t0 = time.perf_counter()
        img = self._explorer().decode_upload(data, name)
        self._show_index(coll.query_pixels(img, name), img, f"{coll.name}: uploaded {name}", t0)

    def pick_class(self, text: str) -> None:
        """Select the first class matching `text` and show one of its val images."""
        self.find.value = text

    def pick_random(self) -> None:
        ex = self._explorer()
        if self.cls.value is None:
            raise RankingError("choose a class first")
        self.show_val(ex.random_image(self.cls.value, self.rng))

    # ---- internals ---------------------------------------------------------------------
    def _explorer(self) -> QueryExplorer:
        if self.explorer is None:
            raise RankingError("no run open: type a run directory and press open")
        return self.explorer

    def _collection(self) -> IndexExplorer:
        if self.collection is None:
            raise RankingError("no index open: choose or type the name of one of the run's indexes")
        return self.collection

    def _close_index(self) -> None:
        self.collection, self.last_index = None, None
        self.coll_results.value = ""
        self._set(self.coll_file, "", options=[])

    def _show_index(self, result: IndexResult, query_image, caption: str, t0: float, note: str | None = None) -> None:
        self.last_index = result
        self.coll_results.value = self.collection.result_html(result, query_image, caption, note=note)
        self._say(f"{caption}: {len(result.paths)} nearest shown in {1000 * (time.perf_counter() - t0):.0f} ms")

    def _on_index_file(self, path: str) -> None:
        if path and path.strip() and self.collection is not None:
            self.show_index_file(path)

    def _on_index_upload(self, files) -> None:
        if not files:
            return
        f = files[0]
        try:
            self.show_index_upload(bytes(f["content"]), f["name"])
        finally:
            self._set(self.coll_upload, ())

    def _each_model(self, fn) -> dict[str, workflow.QueryResult | str]:
        out: dict[str, workflow.QueryResult | str] = {}
        for m, reason in self.explorer.available_models().items():
            out[m] = reason if reason else fn(m)
        return out

    def _show(self, results, query_image, caption: str, t0: float) -> None:
        self.last, self.picks = results, self.picks + 1
        self.results.value = (f'<div class="rx-pick" data-pick="{self.picks}">'
                              f'{self.explorer.result_html(results, query_image, caption)}</div>')
        self._say(f"{caption}: shown in {1000 * (time.perf_counter() - t0):.0f} ms")

    def _sync_pickers(self, label: int, index: int) -> None:
        ex = self.explorer
        if label not in [c for _, c in self.cls.options]:
            self._set(self.find, "")
            self._set(self.cls, None, options=ex.class_choices())
        self._set(self.cls, label)
        self._set(self.image, None, options=ex.class_images(label))
        self._set(self.image, index)
        self._set(self.index, index)

    def _set(self, widget, value, **traits) -> None:
        self._quiet = True
        try:
            with widget.hold_trait_notifications():
                for k, v in traits.items():
                    setattr(widget, k, v)
                if value is not None or "options" in traits:
                    widget.value = value
        finally:
            self._quiet = False

    def _guard(self, fn, *args) -> None:
        if self._quiet:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - the page shows one line, never a traceback
            self._say("error: " + one_line(e), error=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.text = text
        color = "#b00020" if error else "#333"
        self.status.value = f'<div class="rx-line" style="color:{color}">{html.escape(text)}</div>'

    def _on_find(self, text: str) -> None:
        ex = self._explorer()
        choices = ex.class_choices(text)
        if not text.strip():  # all classes again; the shown image stays
            keep = self.cls.value
            self._set(self.cls, keep, options=choices)
            return
        if not choices:
            raise RankingError(f"no class name or wnid contains {text.strip()!r}")
        self._set(self.cls, None, options=choices)
        self._on_class(choices[0][1])
        self._set(self.cls, choices[0][1])

    def _on_class(self, cls) -> None:
        if cls is None:
            return
        ex = self._explorer()
        images = ex.class_images(cls)
        if not images:
            raise RankingError(f"class {ex.val.class_names[cls]!r} has no val images")
        self.show_val(images[0][1])

    def _on_pick(self, index) -> None:
        if index is not None and self.explorer is not None:
            self.show_val(int(index))

    def _on_upload(self, files) -> None:
        if not files:
            return
        f = files[0]
        try:
            self.show_upload(bytes(f["content"]), f["name"])
        finally:
            self._set(self.upload, ())  # the same file can be uploaded again
