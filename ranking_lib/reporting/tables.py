"""Tables of the notebooks and the report: metrics and class counts as pandas DataFrames,
shown as HTML (notebook, HTML report), LaTeX (PDF report) and text."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

METRIC_COLUMNS = {
    "triplet_acc": "triplet acc.",
    "precision@1": "P@1",
    "precision@10": "P@10",
    "precision@30": "P@30",
    "any_hit@30": "hit@30",
    "r_precision": "R-prec.",
    "map@r": "MAP@R",
}

SEMANTIC_COLUMNS = {
    "wup@30": "WuP@30",
    "mistake_wup@30": "mistake WuP@30",
    "mistake_wup_chance": "chance",
    "semantic_triplet_acc": "sem. triplet acc.",
    "near_dup_recall@1": "near-dup R@1",
    "near_dup_recall@10": "near-dup R@10",
    "near_dup_held_out_recall@1": "held-out dup R@1",
    "near_dup_held_out_recall@10": "held-out dup R@10",
}
"""Similarity beyond the label (`retrieval.semantic`): mean Wu-Palmer similarity of the 30 nearest
neighbours' classes, of the wrong ones only, and of random wrong ones ("chance"); WordNet
triplet accuracy; near-duplicate recall of the original under the standard transforms and under
the held-out ones (no training augmentation makes them; "--" for runs from before them)."""


def semantic_keys(k: int = 30) -> list[str]:
    """The keys of `semantic_table` with the Wu-Palmer means at k neighbours."""
    return [key.replace("@30", f"@{k}") if key.startswith(("wup@", "mistake_wup@")) else key
            for key in SEMANTIC_COLUMNS]


def semantic_table(metrics_by_row: Mapping, k: int = 30, decimals: int = 2):
    """`metrics_table` of the semantic metrics (`SEMANTIC_COLUMNS`, Wu-Palmer means at `k`) over
    the rows that have any of them; None when none has (a run from before, or none measured)."""
    keys = semantic_keys(k)
    rows = {label: m for label, m in metrics_by_row.items() if any(m.get(key) is not None for key in keys)}
    if not rows:
        return None
    df = metrics_table(rows, decimals=decimals, keys=keys)
    return df.rename(columns={key: SEMANTIC_COLUMNS.get(key.replace(f"@{k}", "@30"), key).replace("@30", f"@{k}")
                              for key in keys})


def model_semantic_table(metrics_by_model: Mapping[str, Mapping], k: int = 30, decimals: int = 2):
    """`semantic_table` over every model's tune and val metrics (``{model: {split: metrics}}``, as
    ``metrics_<model>.json`` holds them): the table notebooks 03 and 05 show."""
    return semantic_table({(model, split): m[split] for model, m in metrics_by_model.items()
                           for split in ("tune", "val") if split in m}, k=k, decimals=decimals)


def near_dup_transform_table(by_transform_by_row: Mapping, families: Mapping[str, Sequence[str]], k: int = 1,
                             decimals: int = 2):
    """Near-duplicate recall@k per transform: one row per entry of `by_transform_by_row` (a row
    label -> a split's ``near_dup_by_transform`` dict of ``metrics_<model>.json``), columns
    ``(family, transform)`` in `families` order; None when no row has any (a run from before)."""
    import pandas as pd

    cols = [(f, t) for f, names in families.items() for t in names]
    rows = {label: d for label, d in by_transform_by_row.items()
            if d and any(f"near_dup_recall@{k}_{t}" in d for _, t in cols)}
    if not rows:
        return None
    data = [[round(float(d[key]), decimals) if (key := f"near_dup_recall@{k}_{t}") in d else np.nan
             for _, t in cols] for d in rows.values()]
    index = list(rows)
    idx = (pd.MultiIndex.from_tuples(index, names=["model", "split"]) if all(isinstance(i, tuple) and len(i) == 2
                                                                            for i in index) else pd.Index(index))
    return pd.DataFrame(data, index=idx, columns=pd.MultiIndex.from_tuples(cols, names=["family", f"R@{k}"]))


def class_counts_table(class_names: Sequence[str], train_labels, val_labels=None, wnids=None):
    """DataFrame: one row per class with its number of train (and val) images."""
    import pandas as pd

    n = len(class_names)
    d = {"class": [str(c) for c in class_names],
         "train": np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n)[:n]}
    if val_labels is not None:
        d["val"] = np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=n)[:n]
    df = pd.DataFrame(d)
    if wnids is not None:
        df.insert(0, "wnid", list(wnids))
    return df


def metrics_table(metrics_by_row: Mapping, fraction: bool = False, decimals: int = 2,
                  keys: Sequence[str] | None = None):
    """DataFrame of metrics, one row per entry of `metrics_by_row`.

    `metrics_by_row` maps a row label (a string, or a tuple such as ``("trained", "val")``
    for a two-level index) to a metrics dict as written by ``workflow.evaluate``. Values are
    percentages (pass ``fraction=True`` if they are fractions in [0, 1]) rounded to
    `decimals`; columns use the short titles in ``METRIC_COLUMNS`` (missing metrics stay NaN).
    """
    import pandas as pd

    keys = list(keys or METRIC_COLUMNS)
    rows, index = [], []
    for label, m in metrics_by_row.items():
        row = {}
        for k in keys:
            v = m.get(k)
            v = np.nan if v is None else float(v) * (100.0 if fraction else 1.0)
            row[METRIC_COLUMNS.get(k, k)] = round(v, decimals)
        rows.append(row)
        index.append(label)
    if index and all(isinstance(i, tuple) for i in index):
        idx = pd.MultiIndex.from_tuples(index, names=["model", "split"][: len(index[0])] if len(index[0]) == 2 else None)
    else:
        idx = pd.Index(index, name="")
    return pd.DataFrame(rows, index=idx, columns=[METRIC_COLUMNS.get(k, k) for k in keys])


def latex_escape(s: str) -> str:
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(rep.get(ch, ch) for ch in str(s))


def table_latex(df, decimals: int = 2, caption: str | None = None) -> str:
    """A booktabs tabular of `df` (index as leading columns), centred, caption below; written by
    pandas' ``Styler.to_latex`` with LaTeX escaping."""
    from pandas.api.types import is_numeric_dtype

    flat = df.reset_index() if any(n is not None for n in df.index.names) else df
    align = "".join("r" if is_numeric_dtype(flat[c]) else "l" for c in flat.columns)
    styler = (flat.style.hide(axis="index").format(precision=decimals, na_rep="--", escape="latex")
              .format_index(escape="latex", axis=1))
    tabular = styler.to_latex(hrules=True, column_format=align)
    lines = [r"\begin{center}", tabular.strip()]
    if caption:
        lines.append(r"\\[2pt] {\small " + latex_escape(caption) + "}")
    lines.append(r"\end{center}")
    return "\n".join(lines)


def show_table(df, decimals: int = 2, caption: str | None = None, max_rows: int = 60) -> None:
    """Display a DataFrame as HTML (notebook / HTML report), LaTeX (PDF report) and text."""
    from IPython.display import display
    from pandas.api.types import is_float_dtype

    shown = df if len(df) <= max_rows else df.head(max_rows)
    note = f" (first {max_rows} of {len(df)} rows)" if len(df) > max_rows else ""
    fmt = {c: (lambda v, d=decimals: "" if v != v else f"{v:.{d}f}") for c in shown.columns
           if is_float_dtype(shown[c])}
    html = shown.to_html(formatters=fmt, border=0, classes="dataframe")
    if caption or note:
        html = f"<p><em>{caption or ''}{note}</em></p>" + html
    bundle = {"text/plain": shown.to_string() + note,
              "text/html": html,
              "text/latex": table_latex(shown, decimals, (caption or "") + note or None)}
    display(bundle, raw=True)
