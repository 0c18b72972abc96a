"""QueryExplorer: the interactive notebook's logic, on a real (tiny) run of the demo data."""

from __future__ import annotations

import datetime
import io

import numpy as np
import pytest
from PIL import Image

from data_scripts.make_demo_dataset import make_demo_dataset
from ranking_lib import cli, workflow
from ranking_lib.core.errors import RankingError
from ranking_lib.explore import QueryExplorer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    data = make_demo_dataset(root / "data", num_classes=4, train_per_class=15, val_per_class=4, seed=1)
    run = root / "run"
    assert cli.main(["all", "--data-dir", str(data), "--run-dir", str(run), "--input-size", "32",
                     "--embedding-dim", "8", "--steps", "2", "--batch-size", "4", "--num-triplets", "16",
                     "--val-triplets", "8", "--train-eval-queries", "10", "--quiet"]) == 0
    return run


def test_val_query_matches_the_workflow_and_the_picker(run):
    ex = QueryExplorer(run, k=5)
    choices = ex.val_choices()
    assert len(choices) == 16 and choices[3][1] == 3 and choices[3][0].endswith(".JPEG")
    r = ex.query_val(3)
    ref = workflow.query(ex.cfg, [3], 5)[0]
    np.testing.assert_array_equal(r.top_indices, ref.top_indices)
    np.testing.assert_allclose(r.bottom_distances, ref.bottom_distances)
    assert np.all(np.diff(r.top_distances) >= 0) and r.top_distances[0] <= r.bottom_distances[-1]
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


def test_widget_updates_on_pick_and_upload(run):
    pytest.importorskip("ipywidgets")
    ex = QueryExplorer(run, k=3)
    box = ex.widget()
    assert box.text.startswith(ex.val_choices()[0][0].split(": ")[1]) and "nearest d=" in box.text
    assert box.figure is not None
    box.picker.value = 5
    assert box.text.startswith(ex.val_choices()[5][0].split(": ")[1])
    box.upload.value = ({"name": "bad.png", "content": memoryview(b"junk"), "type": "image/png", "size": 4,
                         "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)
    assert box.text.startswith("error: corrupt or truncated image") and box.figure is None


def test_missing_run_is_one_line(tmp_path):
    with pytest.raises(RankingError, match="no run at"):
        QueryExplorer(tmp_path)
