"""`QueryExplorer`: pick a val image (or upload one) and see its top-k and bottom-k training images
with their distances, on any finished run directory. The logic is plain methods (tested); the
`widget()` is a thin ipywidgets front end for JupyterLab (``notebooks/06_explore.ipynb``).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from ranking_lib import workflow
from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError


@contextlib.contextmanager
def _as_file(data: bytes, name: str):
    """Uploaded bytes as a temporary file keeping `name`'s suffix (the decoder reads files)."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("query" + (Path(name).suffix or ".img"))
        f.write_bytes(bytes(data))
        yield f


class QueryExplorer:
    """Queries against the embedded training set of one run.

    Args:
        run_dir: a run directory that has been through ``embed`` (its ``config.json`` is read).
        model: ``trained`` or ``baseline`` embeddings.
        k: how many nearest and farthest training images to show.
    """

    def __init__(self, run_dir: str | Path, model: str = "trained", k: int = 10) -> None:
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise RankingError(f"no run at {run_dir}: {path} not found (run the notebooks 01-03 first)")
        self.cfg = RunConfig.load(path)
        if model not in workflow.MODELS:
            raise RankingError(f"model must be one of {workflow.MODELS} (got {model!r})")
        if k < 1:
            raise RankingError(f"k must be >= 1 (got {k})")
        self.model, self.k = model, k
        caches = workflow.load_caches(self.cfg, progress=False)
        self.train, self.val = caches["train"], caches["val"]
        workflow.load_index(self.cfg, model, "train")  # fails early, in one line, before any widget

    def val_choices(self) -> list[tuple[str, int]]:
        """(label, val index) pairs for a picker: ``"class name: file"``, in val order."""
        return [(f"{self.val.class_names[int(lab)]}: {Path(p).name}", i)
                for i, (p, lab) in enumerate(zip(self.val.paths, self.val.labels))]

    def query_val(self, index: int) -> workflow.QueryResult:
        return workflow.query(self.cfg, [int(index)], self.k, self.model)[0]

    def query_upload(self, data: bytes, name: str = "upload") -> workflow.QueryResult:
        """An uploaded image file's bytes (any format PIL reads), resized to 64 px like the data."""
        with _as_file(data, name) as f:
            result = workflow.query_image_file(self.cfg, f, self.k, self.model)
        result.query_path = name
        return result

    def query_image(self, result: workflow.QueryResult, data: bytes | None = None):
        """The query's own pixels (64 px uint8): from the val cache, or decoded from `data`."""
        if result.query_index is not None:
            return self.val.images[result.query_index]
        from ranking_lib.data.decode import load_image_rgb

        with _as_file(data or b"", result.query_path) as f:
            return load_image_rgb(f)

    def figure(self, result: workflow.QueryResult, data: bytes | None = None):
        from ranking_lib.reporting import plots

        return plots.plot_query(result, self.query_image(result, data), self.train)

    def summary(self, result: workflow.QueryResult) -> str:
        """One line: nearest and farthest distance, and same-class counts when the class is known."""
        line = (f"{Path(result.query_path).name}: nearest d={float(result.top_distances[0]):.3f}, "
                f"farthest d={float(result.bottom_distances[-1]):.3f}")
        if result.query_label is not None:
            top = int((result.top_labels == result.query_label).sum())
            bottom = int((result.bottom_labels == result.query_label).sum())
            line += f"; {top} of the top-{self.k} and {bottom} of the bottom-{self.k} share its class"
        return line

    # ---- JupyterLab front end --------------------------------------------------------
    def widget(self):
        """A val-image picker, an upload button and the result (figure + summary line)."""
        import ipywidgets as w

        from ranking_lib.reporting import plots

        picker = w.Dropdown(options=self.val_choices(), description="val image", layout=w.Layout(width="60%"))
        upload = w.FileUpload(accept="image/*", multiple=False, description="upload")
        out = w.Output()

        def say(text, fig=None):
            box.text, box.figure = text, fig  # what the output area shows, for tests and scripting
            out.clear_output(wait=True)
            with out:
                print(text)
                if fig is not None:
                    plots.show(fig)

        def show(result, data=None):
            try:
                say(self.summary(result), self.figure(result, data))
            except RankingError as e:
                say(f"error: {e}")

        def on_pick(change):
            show(self.query_val(change["new"]))

        def on_upload(change):
            files = change["new"]
            if files:
                f = files[0]
                try:
                    result = self.query_upload(f["content"], f["name"])
                except RankingError as e:
                    say(f"error: {e}")
                    return
                show(result, f["content"])

        picker.observe(on_pick, names="value")
        upload.observe(on_upload, names="value")
        box = w.VBox([w.HBox([picker, upload]), out])
        box.picker, box.upload, box.output = picker, upload, out  # for tests and scripting
        show(self.query_val(picker.value))
        return box
