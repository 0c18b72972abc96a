"""Plot functions on synthetic arrays: they return figures, write PNGs, label what they show."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from ranking_lib.reporting import plots, tables


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)


def _png_size(path):
    assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or tiny"
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _texts(fig: Figure) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts]
    return out


def test_ema_and_moving_average():
    v = np.array([1.0, 1.0, 1.0, 3.0])
    assert plots.ema(v, 0.5)[0] == pytest.approx(1.0)  # bias-corrected: starts at the first value
    assert plots.ema(v, 0.0) == pytest.approx(v)
    assert plots.moving_average(v, 2) == pytest.approx([1.0, 1.0, 1.0, 2.0])
    with pytest.raises(ValueError):
        plots.ema(v, 1.0)


def test_loss_curve(tmp_path):
    steps = np.arange(1, 201)
    losses = 1.0 / np.sqrt(steps) + np.random.default_rng(0).normal(0, 0.05, 200)
    fig = plots.plot_loss_curve(steps, losses, smooth=0.9, gap=1.0, path=tmp_path / "sub" / "loss.png")
    assert isinstance(fig, Figure)
    w, h = _png_size(tmp_path / "sub" / "loss.png")
    assert 400 < w < 2000 and 200 < h < 1200
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # per step, smoothed, gap line
    fig2 = plots.plot_loss_curve(steps, losses, window=20)
    assert "moving average" in fig2.axes[0].get_legend().get_texts()[1].get_text()
    with pytest.raises(ValueError):
        plots.plot_loss_curve(steps, losses[:-1])


def test_loss_curve_on_given_axes():
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    assert plots.plot_loss_curve([0, 1, 2], [1.0, 0.5, 0.2], ax=ax) is fig


def test_class_counts(tmp_path):
    names = [f"class {i}" for i in range(12)]
    labels = np.repeat(np.arange(12), 5)
    df = tables.class_counts_table(names, labels, labels[:24], wnids=[f"n{i:08d}" for i in range(12)])
    assert list(df.columns) == ["wnid", "class", "train", "val"]
    assert df["train"].tolist() == [5] * 12 and df["val"].sum() == 24
    plots.plot_class_counts(names, df["train"], df["val"], path=tmp_path / "counts.png")
    _png_size(tmp_path / "counts.png")
    many = plots.plot_class_counts([str(i) for i in range(200)], np.full(200, 500))  # no per-bar names
    assert many.axes[0].get_xlabel() == "class index"


def test_sample_grid(tmp_path):
    labels = np.repeat(np.arange(4), 6)
    fig = plots.plot_sample_grid(_images(24), labels, ["a", "b", "c", "d"], per_class=5,
                                 path=tmp_path / "grid.png")
    assert len(fig.axes) == 4 * 5
    w, h = _png_size(tmp_path / "grid.png")
    assert w > h  # 5 columns x 4 rows
    assert {"a", "b", "c", "d"} <= set(_texts(fig))


def test_triplets(tmp_path):
    fig = plots.plot_triplets(_images(3), _images(3, 1), _images(3, 2),
                              captions=[("cat", "cat", "dog")] * 3, path=tmp_path / "trip.png")
    assert len(fig.axes) == 9
    texts = _texts(fig)
    assert "query" in texts and any("negative" in t for t in texts) and "dog" in texts
    w, h = _png_size(tmp_path / "trip.png")
    assert h > w  # three rows of three
    plots.plot_triplets(_images(2), _images(2), _images(2), captions=["row a", "row b"])
    with pytest.raises(ValueError):
        plots.plot_triplets(_images(2), _images(3), _images(2))


def test_query_result(tmp_path):
    top_d = np.sort(np.random.default_rng(0).uniform(0.1, 0.6, 10))
    bot_d = np.sort(np.random.default_rng(1).uniform(1.2, 1.9, 10))[::-1]
    top_same = [True] * 7 + [False] * 3
    bot_same = [False] * 10
    fig = plots.plot_query_result(_images(1)[0], "val_17 (goldfish)", _images(10), top_distances=top_d, top_same_class=top_same,
                                  bottom_images=_images(10, 1), bottom_distances=bot_d, bottom_same_class=bot_same, top_captions=["goldfish"] * 10,
                                  bottom_captions=["a very long class name, with synonyms"] * 10,
                                  path=tmp_path / "q.png")
    w, h = _png_size(tmp_path / "q.png")
    assert w > 2.5 * h and w < 3000  # a wide figure: query + two rows of 10
    texts = _texts(fig)
    for d in list(top_d) + list(bot_d):
        assert f"d={d:.3f}" in texts
    assert "val_17 (goldfish)" in texts
    # frames: green for same class, red for other class
    tiles = [ax for ax in fig.axes if ax.get_title().startswith("d=")]
    assert len(tiles) == 20
    greens = [ax for ax in tiles if ax.spines["top"].get_edgecolor()[:3] == pytest.approx((0x1a / 255, 0x9e / 255, 0x3a / 255))]
    assert len(greens) == 7
    assert any("7/10\nsame class" in t for t in texts)
    wrapped = plots.plot_query_result(_images(1)[0], "q", _images(10), top_distances=top_d, top_same_class=top_same, bottom_images=_images(10, 1), bottom_distances=bot_d,
                                      bottom_same_class=bot_same, ncols=5, path=tmp_path / "q5.png")
    w5, h5 = _png_size(tmp_path / "q5.png")
    assert w5 < w and h5 > h and len([a for a in wrapped.axes if a.get_title().startswith("d=")]) == 20
    with pytest.raises(ValueError):
        plots.plot_query_result(_images(1)[0], "q", _images(10), top_distances=top_d[:5], top_same_class=top_same, bottom_images=_images(10), bottom_distances=bot_d, bottom_same_class=bot_same)


def test_metrics_table_and_bars(tmp_path):
    m = {"triplet_acc": 91.234, "precision@1": 80.0, "precision@10": 70.5, "precision@30": 60.25,
         "any_hit@30": 99.0, "r_precision": 75.0, "map@r": 40.123, "num_queries": 200}
    rows = {("trained", "train"): m, ("trained", "val"): m, ("baseline", "val"): {**m, "map@r": 10.0}}
    df = tables.metrics_table(rows)
    assert list(df.columns) == list(tables.METRIC_COLUMNS.values())
    assert df.index.names == ["model", "split"]
    assert df.loc[("trained", "val"), "MAP@R"] == 40.12
    assert df.loc[("baseline", "val"), "MAP@R"] == 10.0
    frac = tables.metrics_table({"x": {"precision@1": 0.5}}, fraction=True)
    assert frac.loc["x", "P@1"] == 50.0 and np.isnan(frac.loc["x", "R-prec."])
    tex = tables.table_latex(df)
    assert r"\toprule" in tex and "91.23" in tex and "triplet acc." in tex
    plots.plot_precision_bars(df, path=tmp_path / "bars.png")
    _png_size(tmp_path / "bars.png")


def test_show_helpers(tmp_path, monkeypatch):
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    fig = plots.plot_loss_curve([0, 1], [1.0, 0.5])
    plots.show(fig)
    assert shown[-1][0].data[:8] == b"\x89PNG\r\n\x1a\n"
    df = tables.metrics_table({"a_b": {"precision@1": 12.345}})
    tables.show_table(df, caption="50% of it")
    bundle = shown[-1][0]
    assert shown[-1][1] == {"raw": True}
    assert {"text/plain", "text/html", "text/latex"} <= set(bundle)
    assert r"a\_b" in bundle["text/latex"] and r"50\%" in bundle["text/latex"] and "12.35" in bundle["text/html"]


def test_show_displays_the_saved_png_until_the_figure_changes(tmp_path, monkeypatch):
    """A figure saved by a plot function is shown from its PNG (no second rendering); once the
    figure is changed it is rendered again."""
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    path = tmp_path / "loss.png"
    fig = plots.plot_loss_curve([0, 1], [1.0, 0.5], path=path)
    rendered = []
    monkeypatch.setattr(plots, "figure_png", lambda f, dpi: rendered.append(f) or b"\x89PNG fresh")
    plots.show(fig)
    assert shown[-1].data == path.read_bytes() and rendered == []
    fig.axes[0].set_title("changed after saving")
    plots.show(fig)
    assert shown[-1].data == b"\x89PNG fresh" and rendered == [fig]
    plots.show(plots.plot_loss_curve([0, 1], [1.0, 0.5]))  # never saved: rendered
    assert len(rendered) == 2
