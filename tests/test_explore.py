"""QueryExplorer: the interactive notebook's logic, on a real (tiny) run of the demo data."""

from __future__ import annotations

import datetime
import io

import numpy as np
import pytest
from PIL import Image

from ranking_lib import workflow
from ranking_lib.core.errors import RankingError
from ranking_lib.explore import ExplorerApp, QueryExplorer
from tiny_runs import embedded_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return embedded_run(tmp_path_factory.mktemp("explore"), steps=2)


def test_val_query_matches_the_workflow_and_the_picker(run):
    ex = QueryExplorer(run, k=5)
    choices = ex.val_choices()
    assert len(choices) == 16 and choices[3][1] == 3 and choices[3][0].endswith(".JPEG")
    r = ex.query_val(3)
    ref = workflow.query(ex.cfg, [3], 5)[0]
    np.testing.assert_array_equal(r.top_indices, ref.top_indices)
    np.testing.assert_allclose(r.bottom_distances, ref.bottom_distances)
    assert np.all(np.diff(r.top_distances) >= 0) and r.top_distances[0] <= r.bottom_distances[-1]
    assert np.all(np.diff(r.bottom_distances) <= 0)  # farthest first
    assert f"farthest d={float(r.bottom_distances[0]):.3f}" in ex.summary(r)
    top = int((r.top_labels == r.query_label).sum())
    assert ex.summary(r).endswith(f"{top} of the top-5 and {int((r.bottom_labels == r.query_label).sum())} "
                                  "of the bottom-5 share its class")
    fig = ex.figure(r)
    assert len(fig.axes) >= 11  # the query tile and 2 x 5 result tiles


def test_uploaded_image_is_embedded_like_a_val_image(run):
    ex = QueryExplorer(run, k=4)
    img = np.asarray(ex.val.images[2])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")  # lossless: the same pixels as val image 2
    up = ex.query_upload(buf.getvalue(), "mine.png")
    ref = ex.query_val(2)
    assert up.query_path == "mine.png" and up.query_label is None
    np.testing.assert_array_equal(up.top_indices, ref.top_indices)
    np.testing.assert_allclose(up.top_distances, ref.top_distances, atol=1e-5)
    assert "share its class" not in ex.summary(up)
    assert np.array_equal(ex.query_image(up, buf.getvalue()), img)
    with pytest.raises(RankingError, match="corrupt or truncated image"):
        ex.query_upload(b"not an image", "x.png")


def test_class_search_and_random_image(run):
    ex = QueryExplorer(run, k=3)
    names = ex.val.class_names
    hits = ex.class_choices(names[2][:4].upper())  # case-insensitive, by name
    assert 2 in [c for _, c in hits] and all(names[2][:4].lower() in lab.lower() for lab, _ in hits)
    assert [c for _, c in ex.class_choices(ex.val.wnids[1])] == [1]  # by wnid
    assert ex.class_choices("no such class") == [] and len(ex.class_choices("")) == len(names)
    images = ex.class_images(1)
    assert len(images) == 4 and all(int(ex.val.labels[i]) == 1 for _, i in images)
    rng = np.random.default_rng(0)
    picks = {ex.random_image(1, rng) for _ in range(20)}
    assert picks <= {i for _, i in images} and len(picks) > 1
    with pytest.raises(RankingError, match="class 9 out of range"):
        ex.class_images(9)


def test_both_models_from_one_load(run):
    ex = QueryExplorer(run, k=4)
    assert ex.available_models() == {"trained": None, "baseline": None}
    for model in ("trained", "baseline"):
        r, ref = ex.query_val(6, model), workflow.query(ex.cfg, [6], 4, model)[0]
        np.testing.assert_array_equal(r.top_indices, ref.top_indices)
        np.testing.assert_array_equal(r.bottom_indices, ref.bottom_indices)
    assert not np.array_equal(ex.query_val(6, "trained").top_distances, ex.query_val(6, "baseline").top_distances)
    again = QueryExplorer(run, k=4)
    assert again.model_data("trained") is ex.model_data("trained") and again.train is ex.train  # loaded once


def test_upload_matches_query_image_file(run, tmp_path):
    ex = QueryExplorer(run, k=4)
    f = tmp_path / "q.png"
    Image.fromarray(np.asarray(ex.val.images[1])).save(f)
    for model in ("trained", "baseline"):
        up, ref = ex.query_upload(f.read_bytes(), "q.png", model), workflow.query_image_file(ex.cfg, f, 4, model)
        np.testing.assert_array_equal(up.top_indices, ref.top_indices)
        np.testing.assert_allclose(up.top_distances, ref.top_distances, atol=1e-5)


def test_sideways_phone_photo_is_queried_upright(run, tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (turn 90 degrees clockwise) is embedded as
    shown, by an upload and by ``query --image``: as the upright pixels saved losslessly."""
    ex = QueryExplorer(run, k=4)
    stored = np.rot90(np.asarray(ex.val.images[3]), 1)  # the camera's own row order
    exif = Image.Exif()
    exif[0x0112] = 6
    phone, plain, upright = tmp_path / "phone.jpg", tmp_path / "plain.jpg", tmp_path / "upright.png"
    Image.fromarray(stored).save(phone, format="JPEG", quality=95, exif=exif.tobytes())
    Image.fromarray(stored).save(plain, format="JPEG", quality=95)
    Image.fromarray(np.rot90(ex.decode_upload(plain.read_bytes(), "plain.jpg"), -1)).save(upright)
    for model in ("trained", "baseline"):
        want = workflow.query_image_file(ex.cfg, upright, 4, model).top_distances
        np.testing.assert_allclose(workflow.query_image_file(ex.cfg, phone, 4, model).top_distances, want, atol=1e-5)
        np.testing.assert_allclose(ex.query_upload(phone.read_bytes(), "phone.jpg", model).top_distances, want,
                                   atol=1e-5)
        assert not np.allclose(ex.query_upload(plain.read_bytes(), "plain.jpg", model).top_distances, want,
                               atol=1e-5)  # the rotation matters to the network


def test_result_html_has_tiles_distances_and_marks(run):
    ex = QueryExplorer(run, k=3)
    results = {m: ex.query_val(5, m) for m in ("trained", "baseline")}
    page = ex.result_html(results, ex.val.images[5], "val 5")
    assert page.count('class="rx-tile"') == 2 * 2 * 3 and page.count("<img") == 2 * 2 * 3 + 1
    for r in results.values():
        for d in list(r.top_distances) + list(r.bottom_distances):
            assert f"d={float(d):.3f}" in page
    same = sum(int((r.top_labels == r.query_label).sum() + (r.bottom_labels == r.query_label).sum())
               for r in results.values())
    assert page.count('data-same="1"') == same == page.count("✓")
    missing = ex.result_html({"trained": results["trained"], "baseline": "embeddings not found: x"},
                             ex.val.images[5], "val 5")
    assert 'class="rx-missing">embeddings not found: x<' in missing


def test_app_picks_uploads_and_errors_in_one_line(run, tmp_path):
    pytest.importorskip("ipywidgets")
    app = ExplorerApp(run, k=3, seed=0)
    ex = app.explorer
    first = app.results.value
    assert app.text.startswith("val ") and "d=" in first and app.index.value == app.image.value
    c = (int(ex.val.labels[app.index.value]) + 1) % len(ex.val.class_names)  # another class than the one shown
    app.find.value = ex.val.class_names[c]
    assert app.cls.value == c and int(ex.val.labels[app.index.value]) == c and app.results.value != first
    assert ex.val.class_names[c] in app.text
    app.index.value = 9
    assert app.last["trained"].query_index == 9 and app.image.value == 9 and app.cls.value == int(ex.val.labels[9])
    app.random.click()
    assert int(ex.val.labels[app.last["trained"].query_index]) == app.cls.value
    buf = io.BytesIO()
    Image.fromarray(np.asarray(ex.val.images[2])).save(buf, format="PNG")
    app.upload.value = ({"name": "mine.png", "content": memoryview(buf.getvalue()), "type": "image/png",
                         "size": len(buf.getvalue()),
                         "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)
    assert app.text.startswith("uploaded: mine.png") and app.last["baseline"].query_index is None
    np.testing.assert_array_equal(app.last["trained"].top_indices, ex.query_val(2).top_indices)
    shown = app.results.value
    app.upload.value = ({"name": "bad.png", "content": memoryview(b"junk"), "type": "image/png", "size": 4,
                         "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)
    assert app.text.startswith("error: corrupt or truncated image: 'bad.png'") and "\n" not in app.text
    assert "Traceback" not in app.status.value and app.results.value == shown
    app.find.value = "zzz no class"
    assert app.text == "error: no class name or wnid contains 'zzz no class'"
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(RankingError, match="embeddings not found"):
        app.open_run(empty)  # code calls raise; the page's button shows the line
    app.run_dir.value = str(empty)
    app.open.click()
    assert app.text.startswith("error: embeddings not found:") and app.explorer is None and app.results.value == ""
    app.run_dir.value = str(run)
    app.open.click()
    assert app.explorer is not None and "d=" in app.results.value


def test_missing_run_is_one_line(tmp_path):
    with pytest.raises(RankingError, match="no run at"):
        QueryExplorer(tmp_path)


def test_a_run_whose_embeddings_come_from_two_networks_is_refused_in_one_line(run, tmp_path):
    """'embed' stopped (SIGTERM) after the train file: train from the newer checkpoint, val from
    the older one. The explorer opens such a run with the check evaluate and query use."""
    import shutil
    from pathlib import Path

    from ranking_lib.core.config import RunConfig

    mixed = Path(shutil.copytree(run, tmp_path / "mixed"))
    cfg = RunConfig.load(mixed / "config.json").replace(run_dir=str(mixed))
    workflow.train(cfg.replace(steps=cfg.steps + 1), progress=False)
    workflow.embed(cfg.replace(steps=cfg.steps + 1, evaluate_val=False), progress=False)  # the train file only
    with pytest.raises(RankingError) as e:
        QueryExplorer(mixed)
    msg = str(e.value)
    assert msg.startswith(f"embedding file {mixed / 'embeddings_trained_val.npz'} was computed by the trained "
                          f"network of checkpoint step {cfg.steps} ") and "\n" not in msg
    assert QueryExplorer(mixed, model="baseline").available_models()["trained"] == msg


# ---- an index of the user's own images --------------------------------------------------------
def _photos(run, root, n: int = 8):
    """A folder of `n` of the run's demo val images (one of them in a subfolder) and its index
    ``photos`` under the run, made by the baseline network; returns the folder."""
    import shutil
    from pathlib import Path

    from ranking_lib import own_images
    from ranking_lib.core.config import RunConfig

    folder = root / "photos"
    files = sorted(Path(run.parent / "data" / "val" / "images").glob("*.JPEG"))[:n]
    for i, f in enumerate(files):
        dest = folder / ("sub" if i == 0 else "") / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    cfg = RunConfig.load(run / "config.json")
    own_images.index_folder(cfg, folder, name="photos", model="baseline", progress=False)
    return folder


@pytest.fixture()
def photos(run, tmp_path):
    import shutil

    folder = _photos(run, tmp_path)
    yield folder
    shutil.rmtree(run / "indexes" / "photos", ignore_errors=True)


def test_an_index_is_queried_by_a_file_and_an_upload_as_the_query_command(run, photos):
    from ranking_lib import own_images

    ex = QueryExplorer(run, k=3)
    assert ex.index_names() == ["photos"]
    coll = ex.open_index("photos")
    assert len(coll) == 8 and coll.model == "baseline" and coll.paths[0].startswith("sub/")  # sorted
    for path in (coll.paths[0], coll.paths[-1]):
        r = coll.query_file(path)
        what, hits = own_images.query_index(ex.cfg, "photos", file=path, k=3)
        assert r.query == what == path and r.row == coll.paths.index(path) and path not in r.paths
        assert r.paths == [p for p, _ in hits]
        np.testing.assert_allclose(r.distances, [d for _, d in hits], atol=1e-6)
    up = coll.query_pixels(ex.decode_upload((photos / coll.paths[2]).read_bytes(), "mine.jpg"), "mine.jpg")
    _, hits = own_images.query_index(ex.cfg, "photos", image=str(photos / coll.paths[2]), k=3)
    assert up.query == "mine.jpg" and up.row is None and up.paths == [p for p, _ in hits]
    assert up.paths[0] == coll.paths[2] and float(up.distances[0]) < 1e-4  # itself, as indexed
    with pytest.raises(RankingError, match=r"^'nope.jpg' is not in index photos \(paths are relative to "):
        coll.query_file("nope.jpg")


def test_a_missing_or_foreign_index_is_one_line(run, photos):
    from ranking_lib.collection import store

    ex = QueryExplorer(run, k=3)
    with pytest.raises(RankingError, match=r"index .*indexes/nope not found: build it with 'index"):
        ex.open_index("nope")
    with pytest.raises(RankingError, match="must be a plain name"):
        ex.open_index("../photos")
    path = run / "indexes" / "photos" / store.INDEX_FILE
    data = store.load_npz(path)
    data.meta["network"] = {**data.meta["network"], "key": "0" * 16}  # as another network's index
    store.save_npz(path, data)
    with pytest.raises(RankingError, match="was made by another network") as e:
        ex.open_index("photos")
    assert "\n" not in str(e.value)


def test_a_file_deleted_or_changed_since_indexing_is_said_so(run, photos):
    ex = QueryExplorer(run, k=7)
    coll = ex.open_index("photos")
    gone, changed, query = coll.paths[1], coll.paths[2], coll.paths[0]
    (photos / gone).unlink()
    (photos / changed).write_bytes((photos / changed).read_bytes() + b"\0")
    assert coll.thumbnail(gone) == (None, "deleted since indexing")
    img, note = coll.thumbnail(changed)
    assert img.shape == (64, 64, 3) and note == "changed since indexing"
    assert coll.thumbnail(query)[1] is None
    r = coll.query_file(query)
    assert {gone, changed} <= set(r.paths) and len(r.paths) == 7
    page = coll.result_html(r, coll.thumbnail(query)[0], f"photos: {query}")
    assert page.count('class="rx-ctile"') == 7 and page.count('class="rx-cimg rx-noimg"') == 1
    assert page.count("deleted since indexing") == 2  # the grey box and the note under it
    assert page.count("changed since indexing") == 1 and page.count("<img") == 1 + 6
    for p, d in zip(r.paths, r.distances):
        assert f'data-path="{p}"' in page and f"d={float(d):.3f}" in page
    r = coll.query_file(gone)  # its embedding is kept: still a query
    img, note = coll.thumbnail(gone)
    assert gone not in r.paths and coll.result_html(r, img, f"photos: {gone}", note=note).count("deleted since") == 1
    photos.rename(photos.with_name("moved"))
    assert coll.thumbnail(query) == (None, f"folder {photos.resolve()} not found")


def test_app_opens_an_index_and_queries_it_by_file_and_upload(run, photos):
    pytest.importorskip("ipywidgets")
    app = ExplorerApp(run, k=3, seed=0)
    assert list(app.coll_name.options) == ["photos"] and app.coll_name.placeholder.startswith("1 index(es)")
    val_results = app.results.value
    app.coll_name.value = "photos"
    coll = app.collection
    assert coll is not None and list(app.coll_file.options) == coll.paths
    assert app.last_index.query == coll.paths[0] == app.coll_file.value
    assert app.text.startswith(f"photos: {coll.paths[0]}: 3 nearest shown in ")
    assert app.coll_results.value.count('class="rx-ctile"') == 3 and app.results.value == val_results
    app.coll_file.value = coll.paths[4]
    assert app.last_index.query == coll.paths[4] and app.last_index.paths == coll.query_file(coll.paths[4]).paths
    shown = app.coll_results.value
    app.coll_file.value = "no/such.jpg"
    assert app.text.startswith("error: 'no/such.jpg' is not in index photos") and app.coll_results.value == shown
    data = (photos / coll.paths[5]).read_bytes()
    app.coll_upload.value = ({"name": "mine.jpg", "content": memoryview(data), "type": "image/jpeg",
                              "size": len(data), "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)
    assert app.text.startswith("photos: uploaded mine.jpg: 3 nearest") and app.last_index.paths[0] == coll.paths[5]
    assert app.coll_upload.value == ()
    app.coll_name.value = "nope"
    assert app.text.startswith("error: index ") and "nope not found" in app.text and "\n" not in app.text
    assert app.collection is None and app.coll_results.value == "" and app.results.value == val_results
    app.coll_file.value = coll.paths[1]  # no index open: nothing happens
    assert app.coll_results.value == ""
