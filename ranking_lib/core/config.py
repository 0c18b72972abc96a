"""`RunConfig`: the one place every run setting lives.

Each field maps one-to-one to a CLI flag (``--field-name``) and to a notebook parameter of the
same name. The config is saved as ``config.json`` in the run directory and inside every
checkpoint, so a checkpoint always says how it was made.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import write_json

DEVICES = ("auto", "cpu", "cuda")
"""The config field ``device``: these, or ``cuda:N`` (`core.devices.resolve_device`)."""

# Fields of earlier versions, ignored when a saved config.json still has them.
RETIRED_FIELDS = frozenset({"num_workers"})

_TYPES = {"int": int, "float": float}


@functools.cache
def _field_types() -> dict[str, str]:
    """Each field's declared type as written (``int | None``), for messages."""
    return {f.name: str(f.type).replace(" ", "") for f in fields(RunConfig)}


@functools.cache
def _field_specs() -> dict[str, tuple[str, bool]]:
    """{field: (base kind, whether None is allowed)} from the evaluated annotations
    (`typing.get_type_hints`): None only where the type says ``| None`` / ``Optional``."""
    out = {}
    for name, hint in typing.get_type_hints(RunConfig).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        origin = typing.get_origin(base) or base
        kind = {int: "int", float: "float", bool: "bool", str: "str", tuple: "tuple"}.get(origin)
        if kind is None:  # pragma: no cover - a field of a type the CLI cannot express
            raise TypeError(f"RunConfig.{name}: unsupported type {hint!r}")
        out[name] = (kind, optional)
    return out


def field_kind(name: str) -> str:
    """The base type of a RunConfig field: ``int``, ``float``, ``bool``, ``str`` or ``tuple``
    (``int | None`` -> ``int``). The CLI builds its flags from it."""
    return _field_specs()[name][0]


def field_optional(name: str) -> bool:
    """Whether the field's type allows None (``int | None``)."""
    return _field_specs()[name][1]


@functools.cache
def _field_docs() -> dict[str, str]:
    """{field: its docstring (the string under it in the class body), whitespace collapsed}."""
    body = ast.parse(inspect.getsource(RunConfig)).body[0].body
    return {node.target.id: " ".join(doc.value.value.split())
            for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}


def field_doc(name: str) -> str:
    """The docstring of a RunConfig field on one line ("" when it has none); the CLI's help."""
    if name not in RunConfig.field_names():
        raise KeyError(name)
    return _field_docs().get(name, "")


def _coerce(name: str, value: Any) -> Any:
    """Values from YAML/CLI/JSON to the field's type ('1e-4' -> 1e-4); clear error otherwise.
    None (YAML/JSON ``null``) only where the field's type allows it."""
    t = _field_types()[name]
    if value is None:
        if field_optional(name):
            return None
        raise RankingError(f"config field {name} expects {t}, got null (only fields typed '| None' may be null)")
    base = field_kind(name)
    try:
        if base in _TYPES and not isinstance(value, bool):
            if isinstance(value, (list, tuple, dict)):
                raise TypeError
            out = _TYPES[base](value)
            if base == "int" and isinstance(value, float) and out != value:
                raise ValueError
            if base == "float" and not math.isfinite(out):
                raise ValueError
            return out
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise ValueError
        if base == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if base == "tuple":
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, (list, tuple)) or not value:
                raise TypeError
            return tuple(_coerce_int(v) for v in value)
        if base in _TYPES:  # a bool where a number is expected
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise RankingError(f"config field {name} expects {t}, got {value!r}") from None
    return value


def coerce_field(name: str, value: Any) -> Any:
    """`value` as field `name`'s type, checked alone (a partial config file's setting); one-line
    RankingError otherwise. The checks across fields run when the whole `RunConfig` is built."""
    return _coerce(name, value)


def _coerce_int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError
    return int(v)


@dataclass
class RunConfig:
    # --- data -------------------------------------------------------------------------
    data_dir: str = "data/tiny-imagenet-200"
    """Root of a dataset in the original ``tiny-imagenet-200`` layout."""
    run_dir: str = "runs/default"
    """Where triplets, checkpoints, logs, embeddings, metrics and figures go."""
    max_classes: int | None = None
    """Use only the first N classes of ``wnids.txt`` (200 for the standard set)."""
    cache_dir: str | None = None
    """Decoded-image cache; default ``<data_dir>/.ranking_cache`` (or a user cache dir)."""
    skip_corrupt: bool = False
    """Skip undecodable images (and report them) instead of stopping."""

    # --- triplets ---------------------------------------------------------------------
    num_triplets: int = 100_000
    """Training triplets sampled beforehand (query, in-class positive, out-of-class negative)."""
    val_triplets: int = 10_000
    """Triplets drawn from val images only, for val triplet accuracy."""
    seed: int = 0
    """Seeds triplet sampling, weight init of the head, data order and augmentation."""
    holdout_per_class: int = 0
    """Training images per class held out as the tuning split (0 = none): left out of the
    training triplets, ranked as queries against the other training images (``tune`` metrics).
    Choose recipes on it; evaluate val once per final recipe."""
    sampler: str = "auto"
    """``uniform`` (the course's: uniform queries and positives, out-of-class negatives),
    ``relevance`` (the paper's §4: queries and positives weighted by golden-feature relevance,
    a share of in-class negatives), or ``auto``: relevance when out_of_class_fraction < 1."""
    out_of_class_fraction: float = 1.0
    """Share of out-of-class negatives (1.0 = all, the course's; the paper's best was 0.2); the
    rest are in-class negatives less relevant to the query than its positive by relevance_tr."""
    relevance_tp: float = 0.6
    """T_p: cap on relevance in the positive weights min(T_p, r) (cosine of golden features)."""
    relevance_tr: float = 0.1
    """T_r: an in-class negative must satisfy r(q, p) - r(q, n) >= T_r."""
    triplet_source: str = "presampled"
    """``presampled`` (a seeded triplet file, the default) or ``online`` (per-class reservoir
    buffers over an image stream, triplets drawn each step; the paper's Fig. 4)."""
    buffer_size: int = 32
    """Online sampling: images per class buffer."""
    buffer_refresh_steps: int = 50
    """Online sampling: steps between buffer rebuilds from the next part of the stream."""
    instance_fraction: float = 0.0
    """Share of each step's triplets made instance triplets (0 = none, the course's): the positive
    is a view of the query's own image (seeded crop-and-rescale, colour jitter, blur, JPEG-like
    blocks: `training.views`), the negative another image of the query's class (with
    miner=batch_hard also the batch's hardest other image). Works with presampled and online
    triplets; under the stage cache it needs views_per_image >= 1."""
    views_per_image: int = 0
    """Under the stage cache: K views of every training image whose frozen-stage outputs are
    computed once beside the stage features (K x the stage cache's time and disk); each instance
    triplet reads one. 0 without the stage cache (views are then made live each step)."""

    # --- model ------------------------------------------------------------------------
    backbone: str = "efficientnet_lite0"
    """Pretrained backbone (`models.backbones`): EfficientNet-Lite0/1/2 (their weights ship in a
    package) or torchvision's ResNet-18/50/101."""
    architecture: str = "single"
    """``single`` (backbone -> head) or ``multiscale`` (the paper's §3: plus two shallow
    conv + max-pool paths on the image subsampled 4:1 and 8:1, each path L2-normalised,
    concatenated, then the head)."""
    pretrained: bool = True
    """Start the backbone from its ImageNet weights (off: random init)."""
    input_size: int = 128
    """Images (64 px) are resized to this before the backbone."""
    embedding_dim: int = 128
    """Size of the embedding the head outputs."""
    head: str = "linear"
    """Embedding head: ``linear`` (pooled features -> dim) or ``mlp`` (-> 1024 -> dim)."""
    head_init: str = "random"
    """``random``, or ``classifier``: row j of a linear head starts as the pretrained ImageNet
    classifier's row for dataset class j (Tiny ImageNet classes are ImageNet synsets)."""
    normalize_embeddings: bool = True
    """L2-normalise embeddings (distances then lie in [0, 2])."""
    freeze_stages: int = 0
    """Number of leading backbone stages kept frozen (0 = fine-tune everything)."""
    cache_stage_features: bool = False
    """Compute the frozen stages' outputs once (float16, beside the image cache) and train and
    embed from them; needs freeze_stages >= 1. Augmentation is then a feature-map flip."""
    channels_last: bool = True
    """Run convolutions in channels-last memory format (faster on CPU and GPU)."""
    frozen_runtime: str = "torch"
    """Runtime of the frozen-stage pass (`models.runtimes`): ``torch``; ``openvino`` (CPU, the
    ``fast`` extra); ``auto`` = OpenVINO where installed and the pass runs in fp32, else torch."""

    # --- ranking loss -----------------------------------------------------------------
    gap: float = 1.0
    """Hinge gap g in max(0, g + D(q,p) - D(q,n)); must be > 0."""
    squared_distance: bool = False
    """Use squared Euclidean distance in the loss (the paper's form); default plain Euclidean."""
    graded_margin: float = 0.0
    """Graded relevance in the margin (0 = none): each triplet's gap is ``gap + graded_margin *
    (1 - WuP(query's class, negative's class))``, Wu–Palmer similarity in WordNet, so a negative of
    an unlike class (a bus for a dog) must be pushed farther than one of a near class (a wolf).
    Needs WordNet class ids and WordNet (``wordnet_dir``)."""
    distill_weight: float = 0.0
    """Weight of a relational distillation term (0 = none): the distances between images of one
    class in each step's batch, each divided by their mean, are pulled towards the same
    distances under the frozen pretrained network (its pooled features, as the baseline
    embeds), so training keeps which images of a class are alike (`training.losses.
    WithinClassDistillation`). Costs a no-grad pass of the trained stages per step."""
    miner: str = "none"
    """``none`` = the pre-sampled triplets as they are; ``batch_hard`` = additionally use the
    hardest out-of-class negative for each query among all images in the batch."""

    # --- optimisation -----------------------------------------------------------------
    batch_size: int = 32
    """Triplets per step (each step runs 3 x batch_size images through one network)."""
    steps: int = 1000
    """Training steps (one triplet batch each); fixed from the time budget when one is set."""
    train_minutes: float | None = None
    """Time budget of the training loop in minutes (None = off): the trainer measures its step
    rate on a throwaway copy of the network, then fixes ``steps`` so that the schedule ends on
    time. The steps chosen are saved in config.json and the checkpoint (a resumed run keeps
    them, never re-measures); ``--steps`` given explicitly turns the budget off."""
    budget_minutes: float | None = None
    """Whole-pipeline budget in minutes (None = off): when training starts, its minutes are
    capped at budget_minutes minus the time the pipeline has run so far (decode, frozen-stage
    pass; counted from ``report/run_pipeline.py``'s start, else from the ``train`` call) minus
    the evaluation's estimated cost on this class of CPU (`core.plan`). With ``train_minutes``
    the smaller of the two wins; alone, training gets all that is left. Recorded and kept on
    resume like ``train_minutes``; ``--steps`` given explicitly turns it off."""
    lr: float = 0.01
    """Learning rate of the head (the backbone's is lr * backbone_lr_scale)."""
    backbone_lr_scale: float = 0.1
    """The backbone learns at lr * backbone_lr_scale (the new head at lr)."""
    freeze_bn: bool = True
    """Keep the pretrained BatchNorm statistics fixed (small triplet batches make poor ones)."""
    optimizer: str = "sgd"
    """Optimiser: ``sgd`` (Nesterov momentum), ``adam``, ``adamw`` or ``adamw_fused`` (torch's fused AdamW kernel)."""
    weight_decay: float = 1e-4
    """Weight decay of the optimiser."""
    momentum: float = 0.9
    """SGD momentum (< 1)."""
    lr_schedule: str = "cosine"
    """Learning-rate decay after the warm-up: ``cosine`` (to 0 at the last step) or ``constant``."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up."""
    augment: bool = True
    """Random horizontal flip + small random crop of training images."""
    device: str = "auto"
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool = True
    """bf16 autocast on CUDA."""
    bf16_cpu: bool = False
    """bf16 autocast on the CPU where it has native bf16 (AVX-512 BF16 / AMX); fp32 elsewhere."""
    num_threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a resumed run starts from the last one)."""
    log_every: int = 10
    """Steps between rows of the loss log."""

    # --- evaluation / inference -------------------------------------------------------
    ks: tuple[int, ...] = (1, 10, 30)
    """The k of precision@k and the other retrieval metrics."""
    evaluate_val: bool = True
    """Compute the val metrics; off while recipes are chosen on the tuning split."""
    train_eval_queries: int = 10_000
    """Train queries used for train precision@k (seeded subset; all when larger than the split)."""
    embed_batch_size: int = 256
    """Images per batch when embedding."""
    flip_tta: bool = False
    """Embed each image and its horizontal mirror (a flipped feature map on the stage-cache path)
    and average the two embeddings (re-normalised when embeddings are L2-normalised)."""
    search_backend: str = "auto"
    """Nearest-neighbour search: ``auto`` (FAISS exact when installed, else torch), ``torch``,
    ``faiss`` (both exact), or approximate ``faiss-ivf``, ``faiss-ivfpq``, ``faiss-hnsw`` for large
    databases (the ``index_*`` fields below; measured in RESULTS.md, "Search at scale")."""
    index_nlist: int | None = None
    """IVF lists (faiss-ivf, faiss-ivfpq); default ~4 sqrt(database size)."""
    index_nprobe: int = 32
    """IVF lists visited per query (faiss-ivf, faiss-ivfpq)."""
    index_pq_m: int | None = None
    """IVF-PQ bytes per vector; must divide the embedding size (default: its largest divisor up
    to a quarter of it)."""
    index_refine: int = 4
    """IVF-PQ: refine x k candidates are re-ranked by exact distance."""
    index_hnsw_m: int = 32
    """HNSW graph neighbours per node (faiss-hnsw)."""
    index_ef_search: int = 128
    """HNSW search breadth (faiss-hnsw)."""
    rerank: str = "none"
    """Label-free re-ranking of tune/val queries (`retrieval.rerank`): ``none``, ``aqe`` (query
    expansion), ``dba`` (database-side augmentation), ``dba+aqe``, or ``auto`` (each candidate
    tried on the tuning split, the best kept for val; needs ``holdout_per_class``)."""
    rerank_k: int = 10
    """Neighbours averaged by the re-ranking."""
    rerank_alpha: float = 0.0
    """Re-ranking weights: 0 averages the neighbours; > 0 weights them by cosine ** alpha."""
    semantic_metrics: bool = True
    """WordNet-graded metrics on tune and val (`retrieval.semantic`): mean Wu-Palmer similarity
    of the neighbours' classes (all, and the wrong ones only), semantic triplet accuracy (on
    val_triplets seeded triplets), near-duplicate recall; left out, with a note, without WordNet."""
    near_dup_queries: int = 1000
    """Tune/val images whose transformed copies (crop, jitter, blur, JPEG) are near-duplicate
    queries, embedded with the run's network (0 = no near-duplicate metrics)."""
    wordnet_dir: str = "/usr/share/wordnet"
    """WordNet 3.0 dict directory with ``data.noun`` (Debian: apt-get install wordnet-base)."""
    num_query_examples: int = 5
    """Val images (of different classes) shown as query examples."""
    query_seed: int = 0
    """Seeds the choice of the query examples."""
    top_k_show: int = 10
    """How many nearest and farthest training images a query shows."""

    # ---------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for name in self.field_names():  # every field has its declared type, or one-line error
            setattr(self, name, _coerce(name, getattr(self, name)))
        self.validate()

    # fields with a lower bound: (name, minimum); None values are allowed where the type is `| None`
    _MINIMUM = (
        ("batch_size", 1), ("steps", 1), ("num_triplets", 1), ("val_triplets", 1), ("embedding_dim", 1),
        ("input_size", 32), ("checkpoint_every", 1), ("log_every", 1), ("embed_batch_size", 1),
        ("train_eval_queries", 1), ("top_k_show", 1), ("num_query_examples", 1), ("warmup_steps", 0),
        ("freeze_stages", 0), ("holdout_per_class", 0), ("seed", 0), ("query_seed", 0), ("num_threads", 1),
        ("max_classes", 2), ("backbone_lr_scale", 0), ("weight_decay", 0), ("momentum", 0),
        ("out_of_class_fraction", 0), ("relevance_tr", 0), ("buffer_size", 2), ("buffer_refresh_steps", 1),
        ("index_nlist", 1), ("index_nprobe", 1), ("index_pq_m", 1), ("index_refine", 1), ("index_hnsw_m", 2),
        ("index_ef_search", 1), ("rerank_k", 1), ("rerank_alpha", 0), ("near_dup_queries", 0),
        ("instance_fraction", 0), ("views_per_image", 0), ("distill_weight", 0), ("graded_margin", 0),
    )

    def validate(self) -> None:
        """Check every field once, before any work starts; the first problem is one RankingError."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise RankingError(msg)

        for name, low in self._MINIMUM:
            v = getattr(self, name)
            if v is not None:
                hint = " (use --model baseline to evaluate the untrained network)" if name == "steps" else ""
                need(v >= low, f"{name} must be >= {low} (got {v}){hint}")
        need(self.gap > 0, f"gap must be > 0 (got {self.gap})")
        need(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(self.train_minutes is None or self.train_minutes > 0,
             f"train_minutes must be > 0 (got {self.train_minutes}; omit it for a fixed number of steps)")
        need(self.budget_minutes is None or self.budget_minutes > 0,
             f"budget_minutes must be > 0 (got {self.budget_minutes}; omit it for no whole-pipeline budget)")
        need(self.momentum < 1, f"momentum must be < 1 (got {self.momentum})")
        need(self.input_size <= 1024, f"input_size must be <= 1024 (got {self.input_size})")
        for name in ("data_dir", "run_dir"):
            need(bool(getattr(self, name).strip()), f"{name} must not be empty")
        need(self.cache_dir is None or bool(self.cache_dir.strip()), "cache_dir must not be empty (omit it for the default)")
        # the other choices (backbone, optimizer, ...) are checked by their registries, in the
        # modules that build them (`ranking_lib.choices` lists them); device is core's own
        need(self.device in DEVICES or self.device.startswith("cuda:"),
             f"device must be {', '.join(DEVICES)} or cuda:N (got {self.device!r})")
        need(all(k >= 1 for k in self.ks) and len(self.ks) > 0, f"ks must be >= 1 (got {self.ks})")
        need(not self.cache_stage_features or self.freeze_stages >= 1,
             "cache_stage_features needs freeze_stages >= 1")
        need(self.out_of_class_fraction <= 1, f"out_of_class_fraction must be <= 1 (got {self.out_of_class_fraction})")
        need(self.sampler != "uniform" or self.out_of_class_fraction == 1,
             "sampler=uniform draws out-of-class negatives only: in-class negatives "
             f"(out_of_class_fraction={self.out_of_class_fraction}) need sampler=relevance or auto")
        need(self.relevance_tp > 0, f"relevance_tp must be > 0 (got {self.relevance_tp})")
        need(self.instance_fraction <= 1, f"instance_fraction must be <= 1 (got {self.instance_fraction})")
        need(self.instance_fraction == 0 or not self.cache_stage_features or self.views_per_image >= 1,
             "instance triplets under the stage cache need views_per_image >= 1 (views passed through the "
             "frozen stages once), or no stage cache (views made live)")
        need(self.views_per_image == 0 or (self.cache_stage_features and self.instance_fraction > 0),
             f"views_per_image={self.views_per_image} needs the stage cache and instance_fraction > 0 "
             "(without the stage cache views are made live; without instance triplets nothing reads them)")

    @property
    def budgeted(self) -> bool:
        """Whether the steps are fixed from a time budget (``train_minutes`` or ``budget_minutes``)."""
        return self.train_minutes is not None or self.budget_minutes is not None

    @property
    def uses_relevance(self) -> bool:
        """Whether triplets are drawn with golden-feature relevance (`sampler`)."""
        return self.sampler == "relevance" or (self.sampler == "auto" and self.out_of_class_fraction < 1)

    # --- conversion -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise RankingError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**{k: _coerce(k, v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ks"] = list(self.ks)
        return d

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        from ranking_lib.core.fileio import read_json

        path = Path(path)
        data = read_json(path, "config file")
        if not isinstance(data, dict):
            raise RankingError(f"config file {path} must hold a JSON object of settings, not {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except RankingError as e:
            raise RankingError(f"config file {path}: {e}") from None
