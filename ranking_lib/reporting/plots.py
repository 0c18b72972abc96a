"""Figures and tables for the notebooks and the report.

Pure functions of arrays: nothing here reads the run directory. Every ``plot_*`` function
returns a :class:`matplotlib.figure.Figure` built without pyplot (so it is safe under the Agg
backend, in threads and in long loops: no global figure state, nothing to close) and, when
``path`` is given, also saves it as a PNG (parent folders are created).

In a notebook, ``show(fig)`` displays a figure as an embedded PNG (independent of the
matplotlib backend, so papermill/nbconvert always get ``image/png`` outputs), and
``show_table(df)`` displays a DataFrame with HTML, LaTeX and plain-text renderings so that both
the HTML and the PDF report render it as a real table.
"""

from __future__ import annotations

import io
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

from ranking_lib.core.fileio import atomic_path
from ranking_lib.reporting.tables import METRIC_COLUMNS, latex_escape

SAME_COLOR = "#1a9e3a"   # green frame: same class as the query
OTHER_COLOR = "#d62728"  # red frame: another class
DEFAULT_DPI = 120

# metric key -> column title of the precision table (all values are percentages)
# ---- helpers ---------------------------------------------------------------------------
# figure -> (PNG file, dpi) it was saved as by `finish`, so `show` displays that file instead of
# rendering the figure a second time
_SAVED_PNG: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def finish(fig: Figure, path, dpi: int = DEFAULT_DPI) -> Figure:
    """Save `fig` to `path` atomically (format from the suffix; nothing when `path` is None)."""
    if path is not None:
        path = Path(path)
        fmt = path.suffix.lstrip(".") or "png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor="white", format=fmt)
        if fmt == "png":
            _SAVED_PNG[fig] = (path, dpi)
            fig.stale = False  # any later change to the figure makes it stale again
    return fig


def new_figure(figsize) -> Figure:
    """A white figure not registered with pyplot (no global state, nothing left open)."""
    return Figure(figsize=figsize, facecolor="white")


def figure_png(fig: Figure, dpi: int = DEFAULT_DPI) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def show(fig_or_path, dpi: int = DEFAULT_DPI) -> None:
    """Display a Figure (or a saved PNG file) in a notebook as an embedded PNG. A figure that a
    plot function saved as PNG (its `path`) at this `dpi` is shown from that file unless it
    changed since; any other is rendered."""
    from IPython.display import Image, display

    if isinstance(fig_or_path, Figure):
        saved = _SAVED_PNG.get(fig_or_path)
        if saved is not None and saved[1] == dpi and not fig_or_path.stale and saved[0].is_file():  # unchanged since
            display(Image(data=saved[0].read_bytes()))
        else:
            display(Image(data=figure_png(fig_or_path, dpi)))
    else:
        display(Image(filename=str(fig_or_path)))


def show_figure(path, caption: str, max_height: float = 0.38) -> None:
    """Display a saved figure with its caption as one unit: in the notebook and the HTML report an
    image above its caption; in the PDF report a LaTeX float holding both, so a page break can
    never separate them. `max_height` (fraction of the text height) lets two floats share a page.
    """
    import base64

    from IPython.display import display

    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"figure not found: {path}")
    png = path.read_bytes()
    b64 = base64.b64encode(png).decode()
    html = (f'<figure style="margin:0 0 1em 0"><img src="data:image/png;base64,{b64}" style="max-width:100%"/>'
            f'<figcaption><em>{_html_escape(caption)}</em></figcaption></figure>')
    latex = "\n".join([
        r"\begin{figure}", r"\centering",
        rf"\includegraphics[width=\linewidth,height={max_height:g}\textheight,keepaspectratio]{{{path.as_posix()}}}",
        r"\caption{" + latex_escape(caption) + "}", r"\end{figure}"])
    display({"image/png": b64, "text/html": html, "text/latex": latex, "text/plain": caption}, raw=True)


def _html_escape(text: str) -> str:
    import html

    return html.escape(str(text))


def _tile(ax, image, title: str | None = None, color: str | None = None, caption: str | None = None,
          fontsize: float = 9, lw: float = 3.0) -> None:
    img = np.asarray(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        if color is None:
            s.set_visible(False)
        else:
            s.set_edgecolor(color)
            s.set_linewidth(lw)
    if title is not None:
        ax.set_title(title, fontsize=fontsize, pad=2, color=color or "black")
    if caption:
        ax.set_xlabel(caption, fontsize=fontsize * 0.8, labelpad=2)


def short_name(name: str, width: int = 14) -> str:
    """First comma-separated part of a class name, cut to `width` characters."""
    name = str(name).split(",")[0].strip()
    return name if len(name) <= width else name[: width - 1] + "…"


def format_distance(d: float) -> str:
    return f"d={float(d):.3f}"


# ---- training --------------------------------------------------------------------------
def ema(values: Sequence[float], alpha: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing): pandas' ``ewm``."""
    import pandas as pd

    if not 0 <= alpha < 1:
        raise ValueError(f"smoothing factor must be in [0, 1) (got {alpha})")
    return pd.Series(np.asarray(values, dtype=np.float64)).ewm(alpha=1 - alpha, adjust=True).mean().to_numpy()


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average, the first points averaging what is available: pandas' ``rolling``."""
    import pandas as pd

    if window < 1:
        raise ValueError(f"window must be >= 1 (got {window})")
    return pd.Series(np.asarray(values, dtype=np.float64)).rolling(window, min_periods=1).mean().to_numpy()


def plot_loss_curve(steps: Sequence[float], losses: Sequence[float], *, smooth: float | None = 0.98,
                    window: int | None = None, ax=None, title: str = "Training loss (ranking hinge loss)",
                    gap: float | None = None, path=None) -> Figure:
    """Per-step training loss (thin) and its smoothed curve (EMA `smooth` or moving `window`).

    `gap`: draw the loss of an untrained embedding with D(q,p) = D(q,n), i.e. g, for reference.
    """
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if steps.shape != losses.shape:
        raise ValueError(f"steps and losses differ in length ({len(steps)} vs {len(losses)})")
    if ax is None:
        fig = new_figure((7.5, 3.6))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    ax.plot(steps, losses, lw=0.8, alpha=0.35, color="tab:blue", label="per step")
    if len(losses):
        if window:
            sm, lab = moving_average(losses, window), f"moving average ({window} points)"
        elif smooth:
            sm, lab = ema(losses, smooth), f"smoothed (EMA {smooth})"
        else:
            sm = None
        if sm is not None:
            ax.plot(steps, sm, lw=2.0, color="tab:blue", label=lab)
    if gap is not None:
        ax.axhline(gap, ls="--", lw=1, color="gray", label=f"gap g = {gap:g}")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=11)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return finish(fig, path)


# ---- data ------------------------------------------------------------------------------
def plot_class_counts(class_names: Sequence[str], train_counts: Sequence[int], val_counts=None,
                      max_labels: int = 40, path=None) -> Figure:
    """Bar chart of images per class (train, and val if given); names shown for <= max_labels classes."""
    train_counts = np.asarray(train_counts)
    n = len(train_counts)
    x = np.arange(n)
    fig = new_figure((max(6.0, min(12.0, 0.3 * n + 2)), 3.4))
    ax = fig.add_subplot(1, 1, 1)
    w = 0.4 if val_counts is not None else 0.8
    ax.bar(x - (w / 2 if val_counts is not None else 0), train_counts, width=w, label="train", color="tab:blue")
    if val_counts is not None:
        ax.bar(x + w / 2, np.asarray(val_counts), width=w, label="val", color="tab:orange")
    if n <= max_labels:
        ax.set_xticks(x)
        ax.set_xticklabels([short_name(c, 18) for c in class_names], rotation=60, ha="right", fontsize=7)
    else:
        ax.set_xlabel("class index")
    ax.set_ylabel("images")
    ax.set_title(f"Images per class ({n} classes)", fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return finish(fig, path)


def plot_sample_grid(images, labels, class_names: Sequence[str], *, per_class: int = 8,
                     max_classes: int = 10, seed: int = 0, path=None) -> Figure:
    """Grid of random images: one row per class (first `max_classes` classes present)."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)[:max_classes]
    fig = new_figure((1.0 * per_class + 1.8, 1.0 * len(classes) + 0.4))
    gs = GridSpec(max(len(classes), 1), per_class, figure=fig, wspace=0.05, hspace=0.08)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        for j in range(per_class):
            ax = fig.add_subplot(gs[r, j])
            if j < len(pick):
                _tile(ax, images[pick[j]])
            else:
                ax.axis("off")
            if j == 0:
                ax.set_ylabel(short_name(class_names[int(c)], 18), rotation=0, ha="right", va="center",
                              fontsize=8)
    fig.suptitle(f"Random training images, {len(classes)} classes", fontsize=11, y=1.0)
    return finish(fig, path)


def plot_triplets(images_q, images_p, images_n, captions: Sequence | None = None, path=None) -> Figure:
    """One row per triplet: query | positive (same class) | negative (other class).

    `captions`: one string per row (shown left of the row) or one (q, p, n) tuple per row
    (shown under each tile).
    """
    q, p, n = (np.asarray(a) for a in (images_q, images_p, images_n))
    if not len(q) == len(p) == len(n):
        raise ValueError("images_q, images_p and images_n must have the same length")
    rows = len(q)
    fig = new_figure((5.4, 1.75 * rows + 0.3))
    gs = GridSpec(max(rows, 1), 3, figure=fig, wspace=0.08, hspace=0.35)
    heads = ("query", "positive (same class)", "negative (other class)")
    colors = (None, SAME_COLOR, OTHER_COLOR)
    for r in range(rows):
        cap = captions[r] if captions is not None else None
        for j, imgs in enumerate((q, p, n)):
            ax = fig.add_subplot(gs[r, j])
            tile_cap = cap[j] if isinstance(cap, (tuple, list)) else None
            _tile(ax, imgs[r], title=heads[j] if r == 0 else None, color=colors[j],
                  caption=short_name(tile_cap, 22) if tile_cap else None)
            if j == 0 and isinstance(cap, str):
                ax.set_ylabel(cap, fontsize=8, rotation=0, ha="right", va="center")
    return finish(fig, path)


# ---- queries ---------------------------------------------------------------------------
def plot_query_result(query_image, query_caption: str, top_images, *, top_distances, top_same_class,
                      bottom_images, bottom_distances, bottom_same_class, top_captions=None,
                      bottom_captions=None, title: str | None = None, ncols: int | None = None,
                      path=None) -> Figure:
    """One query: the query tile (left), a row of its top-k and a row of its bottom-k images.

    Each result tile is titled with its Euclidean distance (``d=0.412``) and framed green when
    it is of the query's class, red otherwise. Optional captions (e.g. class names) go under
    the tiles. `ncols` wraps each row after that many tiles (default: one row of k), which
    keeps the figure narrow enough to stay legible on a printed page.
    """
    top_images, bottom_images = np.asarray(top_images), np.asarray(bottom_images)
    for name, imgs, dist, same in (("top", top_images, top_distances, top_same_class),
                                   ("bottom", bottom_images, bottom_distances, bottom_same_class)):
        if not len(imgs) == len(dist) == len(same):
            raise ValueError(f"{name}: images, distances and same-class flags differ in length")
    k = max(len(top_images), len(bottom_images), 1)
    ncols = min(ncols or k, k)
    nr = -(-k // ncols)  # grid rows per block
    tile = 0.9  # inches per result tile
    fs = 10.0
    cap_h = 0.2 if (top_captions is not None or bottom_captions is not None) else 0.0
    fig = new_figure((tile * 1.12 * (ncols + 2.6) + 0.2, 2 * nr * (tile + 0.32 + cap_h) + 0.3 * (nr > 1) + 0.55))
    gs = GridSpec(2 * nr, ncols + 2, figure=fig, width_ratios=[1.5, 1.1] + [1] * ncols, wspace=0.12,
                  hspace=0.35 + 1.2 * cap_h, left=0.01, right=0.99, bottom=0.04, top=1 - 0.5 / fig.get_figheight())
    axq = fig.add_subplot(gs[:, 0])
    _tile(axq, query_image, title="query", color="black", fontsize=fs + 1)
    axq.set_xlabel(query_caption, fontsize=fs)
    rows = (("top", top_images, top_distances, top_same_class, top_captions),
            ("bottom", bottom_images, bottom_distances, bottom_same_class, bottom_captions))
    for r, (name, imgs, dist, same, caps) in enumerate(rows):
        n_same = int(np.sum(np.asarray(same, dtype=bool)))
        label = "nearest" if name == "top" else "farthest"
        axl = fig.add_subplot(gs[r * nr:(r + 1) * nr, 1])
        axl.axis("off")
        axl.text(0.95, 0.5, f"{name}-{len(imgs)}\n({label})\n{n_same}/{len(imgs)}\nsame class",
                 ha="right", va="center", fontsize=fs, transform=axl.transAxes)
        for j in range(nr * ncols):
            ax = fig.add_subplot(gs[r * nr + j // ncols, j % ncols + 2])
            if j >= len(imgs):
                ax.axis("off")
                continue
            color = SAME_COLOR if bool(same[j]) else OTHER_COLOR
            _tile(ax, imgs[j], title=format_distance(dist[j]), color=color,
                  caption=short_name(caps[j], 12) if caps is not None else None, fontsize=fs)
    fig.suptitle(title or f"Query: {query_caption}  (green frame = same class, red = other class)",
                 fontsize=fs + 1.5, y=1 - 0.12 / fig.get_figheight())
    return finish(fig, path)


def plot_query(result, query_image, database, *, title: str | None = None, ncols: int = 5, path=None) -> Figure:
    """`plot_query_result` for a `workflow.QueryResult` against the training images of `database`
    (an `ImageCache`): tiles captioned with class names, frames by same class as the query
    (all red when the query's class is unknown, e.g. an uploaded image)."""
    name = Path(result.query_path).name
    label = f"{name} ({short_name(result.query_class, 24)})" if result.query_class else name
    same = (lambda labels: np.asarray(labels) == result.query_label) if result.query_label is not None \
        else (lambda labels: np.zeros(len(labels), dtype=bool))
    return plot_query_result(
        query_image, label,
        database.images[result.top_indices], top_distances=result.top_distances, top_same_class=same(result.top_labels),
        bottom_images=database.images[result.bottom_indices], bottom_distances=result.bottom_distances, bottom_same_class=same(result.bottom_labels),
        top_captions=[database.class_names[c] for c in result.top_labels],
        bottom_captions=[database.class_names[c] for c in result.bottom_labels],
        title=title or f"{label}   green frame = same class, red = other class", ncols=ncols, path=path)


def plot_precision_bars(table, columns: Sequence[str] | None = None, path=None) -> Figure:
    """Grouped bars: one group per metric column, one bar per row of `table` (a metrics_table)."""
    columns = list(columns or [c for c in table.columns if c in METRIC_COLUMNS.values()])
    labels = [" / ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in table.index]
    fig = new_figure((7.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(columns))
    w = 0.8 / max(len(labels), 1)
    for i, lab in enumerate(labels):
        vals = table.iloc[i][columns].to_numpy(dtype=float)
        ax.bar(x + (i - (len(labels) - 1) / 2) * w, vals, width=w, label=lab)
    ax.set_xticks(x)
    ax.set_xticklabels(columns, fontsize=9)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Similarity precision", fontsize=11)
    return finish(fig, path)




def plot_precision_vs_minutes(points: Sequence[dict], path=None, target: float = 70.0) -> Figure:
    """Precision@30 against wall-clock minutes, one marker per measured recipe: ``points`` are
    dicts with ``minutes``, ``precision@30``, ``split`` (``tune`` or ``val``) and ``label``; a
    point with ``kind`` (``stitched`` from two runs, or ``estimated``) is drawn hollow and its
    label says so."""
    fig = new_figure((6.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    styles = {"tune": dict(marker="o", color="tab:blue"), "val": dict(marker="s", color="tab:red")}
    for split, style in styles.items():
        pts = [p for p in points if p["split"] == split]
        for hollow in (False, True):
            sel = [p for p in pts if bool(p.get("kind")) == hollow]
            if sel:
                ax.scatter([p["minutes"] for p in sel], [p["precision@30"] for p in sel], s=36,
                           marker=style["marker"], edgecolors=style["color"], linewidths=1.2,
                           facecolors="none" if hollow else style["color"],
                           label=f"{split} split" + (" (minutes stitched or estimated)" if hollow else ""))
        for p in pts:
            label = p["label"] + (f" ({p['kind']})" if p.get("kind") else "")
            ax.annotate(label, (p["minutes"], p["precision@30"]), textcoords="offset points",
                        xytext=(6, 2 if split == "tune" else -9), fontsize=7)
    ax.axhline(target, ls="--", color="gray", lw=1)
    ax.axvline(90, ls=":", color="gray", lw=1)
    ax.text(90, ax.get_ylim()[0], " 90 min", fontsize=7, color="gray", va="bottom")
    ax.set_xlabel("wall-clock minutes on 2 CPU cores")
    ax.set_ylabel("precision@30 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return finish(fig, path)
