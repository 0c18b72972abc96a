"""Names shared by several layers: which models a run evaluates and which splits its metrics hold."""

MODELS = ("trained", "baseline")
"""``trained``: the run's checkpoint; ``baseline``: the untrained network (frozen pretrained backbone)."""

METRIC_SPLITS = ("train", "tune", "val")
"""The splits of ``metrics_<model>.json``; ``tune`` only with ``holdout_per_class``."""

SCORE_K = 30
"""The paper's score at top-K uses K = 30."""
