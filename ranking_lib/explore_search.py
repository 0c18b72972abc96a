"""What the explorer searches, on one finished run (the page over it: `explore.ExplorerApp`).

* `QueryExplorer`: the logic on one run directory (plain, tested methods). A run's image caches,
  embeddings, indexes and networks are loaded once per process and kept (keyed by the run
  directory and the files' modification times), so a pick is one search, not a reload.
* `IndexExplorer`: one index of the user's own images (``RUN/indexes/NAME``, made by
  ``python -m ranking_lib index``): a file of the collection or an upload -> its nearest indexed
  files, shown from their paths (a file deleted since indexing is said so, not a failure).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranking_lib import own_images, workflow
from ranking_lib.collection import store
from ranking_lib.collection.files import read_image
from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError

MAX_FILE_CHOICES = 1000  # an index's paths offered in the page's file box (any indexed path may be typed)
MODEL_TITLES = {"trained": "trained (ranking fine-tuned)", "baseline": "baseline (frozen pretrained)"}


@contextlib.contextmanager
def _as_file(data: bytes, name: str):
    """Uploaded bytes as a temporary file keeping `name`'s suffix (the decoder reads files)."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("query" + (Path(name).suffix or ".img"))
        f.write_bytes(bytes(data))
        yield f


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


# ---- what is loaded once per process ---------------------------------------------------
@dataclass
class _ModelData:
    db: object  # EmbeddingIndex over the training images
    val_embeddings: np.ndarray | None  # None when the run did not embed val (evaluate_val off)
    net: object = None  # the network, loaded on the first upload


@dataclass
class _RunData:
    cfg: RunConfig
    train: object  # ImageCache
    val: object  # ImageCache
    models: dict[str, _ModelData | RankingError] = field(default_factory=dict)


_RUNS: dict[tuple[str, int], _RunData] = {}


def _run_data(run_dir: str | Path) -> _RunData:
    path = Path(run_dir).expanduser() / "config.json"
    if not path.is_file():
        raise RankingError(f"no run at {run_dir}: {path} not found (run the notebooks 01-03 first)")
    key = (str(path.resolve()), _mtime(path))
    if key not in _RUNS:
        cfg = RunConfig.load(path).replace(run_dir=str(path.parent.resolve()))  # the run may have moved
        caches = workflow.load_caches(cfg, progress=False, splits=("train", "val"))
        _RUNS[key] = _RunData(cfg, caches["train"], caches["val"])
    return _RUNS[key]


def _model_data(run: _RunData, model: str) -> _ModelData:
    """The model's training-set index and val embeddings, loaded once (again when re-embedded)."""
    files = tuple(_mtime(workflow.embeddings_path(run.cfg, model, s)) for s in ("train", "val"))
    key = (model, files)
    if key not in run.models:
        try:
            db = workflow.load_index(run.cfg, model, "train")
            val = workflow.load_index(run.cfg, model, "val").embeddings if files[1] >= 0 else None
            run.models[key] = _ModelData(db, val)
        except RankingError as e:
            run.models[key] = e
    got = run.models[key]
    if isinstance(got, RankingError):
        raise got
    return got


class QueryExplorer:
    """Queries against the embedded training set of one run.

    Args:
        run_dir: a run directory that has been through ``embed`` (its ``config.json`` is read).
        model: the model the single-model methods use by default: ``trained`` or ``baseline``.
        k: how many nearest and farthest training images to show.
    """

    def __init__(self, run_dir: str | Path, model: str = "trained", k: int = 10) -> None:
        if model not in workflow.MODELS:
            raise RankingError(f"model must be one of {workflow.MODELS} (got {model!r})")
        if k < 1:
            raise RankingError(f"k must be >= 1 (got {k})")
        self.run_dir = Path(run_dir)
        self._run = _run_data(run_dir)
        self.cfg, self.train, self.val = self._run.cfg, self._run.train, self._run.val
        self.model, self.k = model, k
        self.model_data(model)  # fails early, in one line, before any widget
        self._by_class = [np.flatnonzero(self.val.labels == c) for c in range(len(self.val.class_names))]

    def model_data(self, model: str | None) -> _ModelData:
        """`model`'s network, embeddings and index in this run (None: the explorer's own model),
        loaded once per process."""
        model = model or self.model
        if model not in workflow.MODELS:
            raise RankingError(f"model must be one of {workflow.MODELS} (got {model!r})")
        return _model_data(self._run, model)

    def available_models(self) -> dict[str, str | None]:
        """Each model -> None when its embeddings load, else the one-line reason they do not."""
        out = {}
        for m in workflow.MODELS:
            try:
                self.model_data(m)
                out[m] = None
            except RankingError as e:
                out[m] = str(e)
        return out

    # ---- finding a query -------------------------------------------------------------
    def class_choices(self, text: str = "") -> list[tuple[str, int]]:
        """(``"name (wnid)"``, class index) of the classes whose name (``words.txt``) or wnid
        contains `text` (case-insensitive; all classes for ""), names matching at a word start first."""
        t = text.strip().lower()
        names, wnids = self.val.class_names, self.val.wnids
        hits = [c for c in range(len(names)) if not t or t in names[c].lower() or t in wnids[c].lower()]
        starts = lambda c: not any(w.startswith(t) for w in names[c].lower().replace("-", " ").split())  # noqa: E731
        hits.sort(key=lambda c: (starts(c), names[c].lower()))
        return [(f"{names[c]} ({wnids[c]})", c) for c in hits]

    def class_images(self, cls: int) -> list[tuple[str, int]]:
        """(file name, val index) of the val images of class `cls`."""
        self._check_class(cls)
        return [(Path(self.val.paths[i]).name, int(i)) for i in self._by_class[cls]]

    def random_image(self, cls: int, rng: np.random.Generator | None = None) -> int:
        """The val index of a random val image of class `cls`."""
        self._check_class(cls)
        ids = self._by_class[cls]
        if not len(ids):
            raise RankingError(f"class {self.val.class_names[cls]!r} has no val images")
        return int((rng or np.random.default_rng()).choice(ids))

    def _check_class(self, cls: int) -> None:
        if not 0 <= int(cls) < len(self._by_class):
            raise RankingError(f"class {cls} out of range (the run has {len(self._by_class)} classes)")

    def val_choices(self) -> list[tuple[str, int]]:
        """(label, val index) pairs: ``"class name: file"``, in val order."""
        return [(f"{self.val.class_names[int(lab)]}: {Path(p).name}", i)
                for i, (p, lab) in enumerate(zip(self.val.paths, self.val.labels))]

    # ---- indexes of the user's own images ----------------------------------------------
    def index_names(self) -> list[str]:
        """The names of the run's indexes (``RUN/indexes/NAME/index.npz``), sorted."""
        where = Path(self.cfg.run_dir) / "indexes"
        return sorted(p.parent.name for p in where.glob(f"*/{store.INDEX_FILE}")) if where.is_dir() else []

    def open_index(self, name: str) -> "IndexExplorer":
        """The run's index `name`, refused in one line when missing, damaged or made by another network."""
        return IndexExplorer(self, name)

    # ---- queries ---------------------------------------------------------------------
    def _result(self, md: _ModelData, z: np.ndarray, index: int | None, path: str) -> workflow.QueryResult:
        ti, td = md.db.topk(z[None], self.k)
        bi, bd = md.db.bottomk(z[None], self.k)
        label = None if index is None else int(self.val.labels[index])
        return workflow.QueryResult(index, path, label, None if label is None else self.val.class_names[label],
                                    ti[0], td[0], md.db.labels[ti[0]], bi[0], bd[0], md.db.labels[bi[0]])

    def query_val(self, index: int, model: str | None = None) -> workflow.QueryResult:
        """Top-k and bottom-k of val image `index` (as `workflow.query`, from the loaded index)."""
        md = self.model_data(model)
        index = int(index)
        if not 0 <= index < len(self.val):
            raise RankingError(f"val index {index} out of range (val has {len(self.val)} images)")
        z = md.val_embeddings[index] if md.val_embeddings is not None \
            else self._embed(md, model, self.val.images[index])  # the run did not embed val
        return self._result(md, np.asarray(z, dtype=np.float32), index, self.val.paths[index])

    def _embed(self, md: _ModelData, model: str | None, img: np.ndarray) -> np.ndarray:
        from ranking_lib.models.inference import embed_images

        model = model or self.model
        if md.net is None:
            md.net = workflow.load_model(self.cfg, model)
        return embed_images(md.net, np.asarray(img)[None], device=self.cfg.device, baseline=model == "baseline",
                            progress=False, bf16_cpu=self.cfg.bf16_cpu, flip_tta=self.cfg.flip_tta)[0]

    def decode_upload(self, data: bytes, name: str = "upload") -> np.ndarray:
        """An uploaded file's bytes (any format PIL reads) -> 64 px uint8 RGB, or a one-line error."""
        from ranking_lib.data.decode import load_image_rgb

        with _as_file(data, name) as f:
            try:
                return load_image_rgb(f)
            except RankingError as e:  # name the upload, not the temporary file
                raise type(e)(str(e).replace(str(f), repr(name))) from None

    def query_upload(self, data: bytes, name: str = "upload", model: str | None = None) -> workflow.QueryResult:
        """An uploaded image file's bytes, resized to 64 px like the data (as `workflow.query_image_file`)."""
        return self.query_pixels(self.decode_upload(data, name), name, model)

    def query_pixels(self, img: np.ndarray, name: str = "upload", model: str | None = None) -> workflow.QueryResult:
        """A decoded 64 px uint8 RGB image, embedded by the model's network (loaded once)."""
        md = self.model_data(model)
        return self._result(md, self._embed(md, model, img), None, name)

    def query_image(self, result: workflow.QueryResult, data: bytes | None = None):
        """The query's own pixels (64 px uint8): from the val cache, or decoded from `data`."""
        if result.query_index is not None:
            return self.val.images[result.query_index]
        return self.decode_upload(data or b"", result.query_path)

    def figure(self, result: workflow.QueryResult, data: bytes | None = None):
        """The result as a matplotlib figure (as in the report)."""
        from ranking_lib.reporting import plots

        return plots.plot_query(result, self.query_image(result, data), self.train)

    def summary(self, result: workflow.QueryResult) -> str:
        """One line: nearest and farthest distance, and same-class counts when the class is known."""
        line = (f"{Path(result.query_path).name}: nearest d={float(result.top_distances[0]):.3f}, "
                f"farthest d={float(np.max(result.bottom_distances)):.3f}")  # bottom-k: farthest first
        if result.query_label is not None:
            top = int((result.top_labels == result.query_label).sum())
            bottom = int((result.bottom_labels == result.query_label).sum())
            line += f"; {top} of the top-{self.k} and {bottom} of the bottom-{self.k} share its class"
        return line

    # ---- the page's HTML ---------------------------------------------------------------
    def result_html(self, results: dict[str, workflow.QueryResult | str], query_image, caption: str) -> str:
        """The query tile and, per model, its top-k and bottom-k rows: each tile with its distance,
        class and a same-class mark (green frame and a check mark; red and a cross otherwise).
        `results` maps a model to its result, or to a one-line reason it has none."""
        head = (f'<div class="rx-query" style="display:flex;align-items:center;justify-content:flex-start;gap:12px;margin:4px 0 8px">'
                f'{_img_tag(query_image, 128, "rx-query-img", "margin:0")}<div>{html.escape(caption)}</div></div>')
        panels = []
        for model, r in results.items():
            title = f'<div style="font-weight:bold;margin-bottom:4px">{html.escape(MODEL_TITLES[model])}</div>'
            if isinstance(r, str):
                body = f'<div class="rx-missing">{html.escape(r)}</div>'
            else:
                body = (f'<div class="rx-summary" style="font-size:90%;margin-bottom:4px">'
                        f'{html.escape(self.summary(r))}</div>'
                        + self._row_html(r, "top", "nearest") + self._row_html(r, "bottom", "farthest"))
            panels.append(f'<div class="rx-panel" data-model="{model}" style="flex:0 1 auto;min-width:420px">'
                          f'{title}{body}</div>')
        return (f'<div class="rx-result">{head}<div style="display:flex;gap:48px;flex-wrap:wrap">'
                f'{"".join(panels)}</div></div>')

    def _row_html(self, r: workflow.QueryResult, which: str, word: str) -> str:
        ids, dist, labels = (getattr(r, f"{which}_{x}") for x in ("indices", "distances", "labels"))
        tiles = []
        for i, d, lab in zip(ids, dist, labels):
            same = r.query_label is not None and int(lab) == r.query_label
            color = "#1a9641" if same else ("#d7191c" if r.query_label is not None else "#888")
            mark = "✓ " if same else ("✗ " if r.query_label is not None else "")
            name = self.train.class_names[int(lab)]
            tiles.append(
                f'<div class="rx-tile" data-same="{int(same)}" title="{html.escape(self.train.paths[int(i)])}" '
                f'style="width:76px;font-size:11px;line-height:1.2;text-align:center">'
                f'{_img_tag(self.train.images[int(i)], 64, "rx-img", f"border:3px solid {color}")}'
                f'<div class="rx-dist">d={float(d):.3f}</div>'
                f'<div style="overflow:hidden;white-space:nowrap;text-overflow:ellipsis">{mark}'
                f'{html.escape(name)}</div></div>')
        n_same = int(np.sum(labels == r.query_label)) if r.query_label is not None else None
        count = f", {n_same}/{len(ids)} same class" if n_same is not None else ""
        return (f'<div class="rx-row" data-which="{which}"><div style="font-size:90%">{which}-{len(ids)} ({word}'
                f'{count})</div><div style="display:grid;grid-template-columns:repeat(5,76px);gap:4px;margin-bottom:6px">'
                f'{"".join(tiles)}</div></div>')


@dataclass
class IndexResult:
    """The nearest indexed files of a query: an indexed file (`row`; itself left out) or an upload."""

    query: str  # the indexed path, or the upload's name
    row: int | None
    paths: list[str]
    distances: np.ndarray


class IndexExplorer:
    """Queries against one index of the user's own images, with `own_images`' own checks and search.

    Args:
        explorer: the open run (its settings and `k`).
        name: the index's name under ``RUN/indexes``.
    """

    def __init__(self, explorer: QueryExplorer, name: str) -> None:
        self.name, self.k, self.cfg = name.strip(), explorer.k, explorer.cfg
        self.data, self.net = own_images.open_index(self.cfg, self.name)
        self.root = Path(self.data.meta["root"])
        self.model = self.net["model"]
        self._search = own_images.search_index(self.cfg, self.data)
        self._embed = None  # the network, loaded on the first upload

    def __len__(self) -> int:
        return len(self.data)

    @property
    def paths(self) -> list[str]:
        return self.data.paths

    def _k(self, others: int) -> int:
        k = min(self.k, others)
        if k < 1:
            raise RankingError(f"index {self.name} has no other image to return")
        return k

    def query_file(self, path: str) -> IndexResult:
        """The nearest other files of an indexed file (`path` as the index holds it, relative to its folder)."""
        row = self.data.row(str(path).strip())
        if row is None:
            raise RankingError(f"{str(path).strip()!r} is not in index {self.name} (paths are relative to {self.root})")
        idx, dist = self._search.topk(self.data.embeddings[row][None], self._k(len(self) - 1), exclude=np.array([row]))
        return IndexResult(self.data.paths[row], row, [self.data.paths[i] for i in idx[0]], dist[0])

    def query_pixels(self, img: np.ndarray, name: str = "upload") -> IndexResult:
        """The nearest indexed files of a decoded 64 px uint8 RGB image, embedded as the index was."""
        if self._embed is None:
            self._embed = own_images._embedder(self.cfg, self.model)
        z = self._embed(np.asarray(img)[None])[0]
        idx, dist = self._search.topk(z[None], self._k(len(self)))
        return IndexResult(name, None, [self.data.paths[i] for i in idx[0]], dist[0])

    def thumbnail(self, path: str) -> tuple[np.ndarray | None, str | None]:
        """An indexed file's pixels now (64 px) and a note: ``(None, why)`` when deleted or unreadable
        since indexing (or its folder is gone), ``(img, "changed since indexing")`` when its size or
        mtime differ."""
        f = self.root / path
        if not f.exists():
            return None, "deleted since indexing" if self.root.is_dir() else f"folder {self.root} not found"
        img, reason = read_image(f, own_images.IMAGE_SIZE)
        if img is None:
            return None, f"unreadable now: {reason}"
        row, st = self.data.row(path), f.stat()
        if row is not None and (st.st_size != int(self.data.sizes[row]) or st.st_mtime_ns != int(self.data.mtimes[row])):
            return img, "changed since indexing"
        return img, None

    def result_html(self, result: IndexResult, query_image, caption: str, *, note: str | None = None) -> str:
        """The query tile (`note`: why it has no image) and its nearest files: each tile with its
        distance, path and any note (`thumbnail`)."""
        head = (f'<div class="rx-cquery" style="display:flex;align-items:center;gap:12px;margin:4px 0 8px">'
                f'{_tile_image(query_image, 96, "rx-cquery-img", note, "margin:0")}<div>{html.escape(caption)}</div></div>')
        tiles = []
        for path, d in zip(result.paths, result.distances):
            img, note = self.thumbnail(path)
            tiles.append(
                f'<div class="rx-ctile" data-path="{html.escape(path)}" title="{html.escape(path)}" '
                f'style="width:96px;font-size:11px;line-height:1.2;text-align:center">'
                f'{_tile_image(img, 80, "rx-cimg", note)}<div class="rx-cdist">d={float(d):.3f}</div>'
                f'<div class="rx-cpath" style="overflow:hidden;white-space:nowrap;text-overflow:ellipsis">'
                f'{html.escape(path)}</div>'
                + (f'<div class="rx-note" style="color:#b00020">{html.escape(note)}</div>' if note else "")
                + "</div>")
        return (f'<div class="rx-cresult">{head}<div style="font-size:90%">top-{len(tiles)} of index '
                f'{html.escape(self.name)} ({len(self)} images of {html.escape(str(self.root))})</div>'
                f'<div style="display:flex;flex-wrap:wrap;gap:4px">{"".join(tiles)}</div></div>')


def _tile_image(img: np.ndarray | None, px: int, cls: str, note: str | None = None, style: str = "") -> str:
    """An image tile, or a grey box of the same size saying why there is no image."""
    if img is not None:
        return _img_tag(img, px, cls, style)
    return (f'<div class="{cls} rx-noimg" style="width:{px}px;height:{px}px;margin:0 auto;background:#ddd;'
            f'display:flex;align-items:center;justify-content:center;font-size:10px;{style}">'
            f'{html.escape(note or "no image")}</div>')


def _img_tag(img: np.ndarray, px: int, cls: str, style: str = "") -> str:
    """A uint8 RGB array as an inline JPEG <img>, scaled to `px` pixels with crisp edges."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    src = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img class="{cls}" src="{src}" width="{px}" height="{px}" '
            f'style="image-rendering:pixelated;display:block;margin:0 auto;{style}">')


def one_line(e: BaseException) -> str:
    """An exception as the one line the page shows (never a traceback)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, RankingError) else f"{type(e).__name__}: {text}"
