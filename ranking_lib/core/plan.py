"""`describe_plan`: what a pipeline run will do and about how long it will take, said first.

The estimate composes the run's work (images, input size, steps or time budget) with rates
*measured* on 2-core machines of each class of CPU and kept in run cards (`RATES`, each with
the card it came from). It is an estimate and says so; a budgeted run's own plan (rate
measured, steps fixed) is printed again when training starts and saved in
``train_summary.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ranking_lib.core.devices import cpu_has_bf16, openvino_available

__all__ = ["BACKBONE_COSTS", "BackboneCost", "ClassRates", "PIPELINE_STARTED", "RATES", "Workload", "cpu_class", "count_images",
           "describe_plan", "estimate_seconds", "evaluation_seconds", "pipeline_started"]

PIPELINE_STARTED = "RANKING_PIPELINE_STARTED"
"""Environment variable: the Unix time the pipeline runner started (its notebooks' kernels
inherit it); a whole-pipeline budget (``budget_minutes``) counts from it."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What a run will do, as far as its time estimate goes: plain values (``run_settings.workload``
    builds them from a run's config; the fields are the config's of the same names)."""
    data_dir: str | Path
    max_classes: int | None
    device: str
    bf16_cpu: bool
    input_size: int
    steps: int
    train_minutes: float | None
    budget_minutes: float | None
    cache_stage_features: bool
    backbone: str
    frozen_runtime: str
    semantic_metrics: bool
    near_dup_queries: int
    budgeted: bool  # the steps are fixed from a time budget (the config's ``budgeted``)


@dataclass(frozen=True)
class ClassRates:
    """Measured on 2 cores, the `cpu` profile's recipe (192 px, 7 frozen stages, batch 64)."""
    decode_s_per_1k: float    # decode JPEGs + sample triplets, per 1,000 images
    frozen_img_s: float       # frozen-stage pass, images/s at 192 px
    steps_per_s: float        # training steps/s from the stage cache
    eval_s: float             # 03-05 notebooks + PDF on the full data (seconds)
    source: str
    eval_fixed_s: float = 60.0  # of that, what does not grow with the data: 3 kernels, the query figures, the PDF
    frozen_img_s_openvino: float | None = None  # the frozen-stage pass on OpenVINO (fp32 classes)
    near_dup_transforms: int = 4  # near-duplicate transforms `eval_s` embedded (the standard four before the held-out family)


RATES = {
    "native bf16": ClassRates(0.59, 200.0, 4.58, 620.0,
                              "docs/runs/cpu-budget40-clean (EPYC, AVX-512 BF16; 03 re-measured after b5fe6a6); the "
                              "evaluation, ~670 s with all 9 near-duplicate transforms, is the slower of the class's two "
                              "quiet CPUs (the Xeon with AMX took 592 s: docs/runs/cpu-budget85-xeon-quiet)"),
    "AVX2 only": ClassRates(0.49, 89.4, 2.0, 923.0,
                            "docs/runs/cpu-budget85-zen3 (EPYC Zen 3, AVX2 only, fp32; the torch frozen rate from "
                            "docs/figures/runtime_zen3.json)",
                            frozen_img_s_openvino=168.0),
}


@dataclass(frozen=True)
class BackboneCost:
    """A backbone's frozen-stage pass and evaluation against the Lite0 the class rates were measured with."""
    frozen: float        # x Lite0's seconds for the frozen-stage pass (same stages frozen, same input size)
    evaluation: float    # x Lite0's seconds for the evaluation's part that grows with the data
    source: str


BACKBONE_COSTS = {
    "efficientnet_lite2": BackboneCost(
        1.148, 1.21, "docs/runs/cpu-budget85-lite2-epyc (native-bf16 EPYC: the frozen-stage pass 574 s, 174 img/s "
        "against the class's 200; the evaluation 798 s against the 670 s the Lite0 rates estimate)"),
}
"""Measured backbones other than EfficientNet-Lite0; any other backbone is estimated at Lite0's rates."""


def backbone_cost(backbone: str) -> BackboneCost:
    return BACKBONE_COSTS.get(backbone, BackboneCost(1.0, 1.0, "Lite0's rates"))


def cpu_class(bf16_cpu: bool = True) -> str:
    """The rates that apply: native bf16 where the CPU has it and the run uses it, else fp32."""
    return "native bf16" if bf16_cpu and cpu_has_bf16() else "AVX2 only"


def count_images(data_dir: str | Path, max_classes: int | None) -> int | None:
    """Training images in a Tiny ImageNet layout (``train/<wnid>/images/*``), None if unreadable."""
    root = Path(data_dir, "train")
    try:
        wnids = sorted(p.name for p in os.scandir(root) if p.is_dir())
    except OSError:
        return None
    if max_classes:
        wnids = wnids[:max_classes]
    total = 0
    for w in wnids:
        try:
            total += sum(1 for _ in os.scandir(root / w / "images"))
        except OSError:
            pass
    return total


def frozen_rate(work: Workload, r: ClassRates) -> float:
    """The frozen-stage pass's img/s: OpenVINO's where the run uses it (``frozen_runtime``
    openvino, or auto with OpenVINO installed, in a class that has an OpenVINO rate), else torch's."""
    use = work.frozen_runtime == "openvino" or (work.frozen_runtime == "auto" and openvino_available())
    rate = r.frozen_img_s_openvino if use and r.frozen_img_s_openvino else r.frozen_img_s
    return rate / backbone_cost(work.backbone).frozen


NEAR_DUP_TRANSFORMS = 9
"""Near-duplicate transforms `evaluate` embeds now (`retrieval.near_duplicates.ALL_TRANSFORMS`: the four
standard ones and the held-out family; a test keeps the two equal)."""


def near_dup_extra_seconds(work: Workload, r: ClassRates) -> float:
    """What the near-duplicate transforms added since `eval_s` was measured (`r.near_dup_transforms`
    of them) cost: each extra transform embeds ``near_dup_queries`` images for the trained network
    and for the baseline, at the measured torch frozen-stage rate (the bulk of embedding a new image)."""
    if not work.semantic_metrics:
        return 0.0
    extra = max(0, NEAR_DUP_TRANSFORMS - r.near_dup_transforms) * work.near_dup_queries * 2
    return extra * (work.input_size / 192) ** 2 / r.frozen_img_s


def estimate_seconds(work: Workload, n_train: int, klass: str) -> dict[str, float]:
    """Seconds per phase for `n_train` training images on a CPU of class `klass` (an estimate)."""
    r = RATES[klass]
    n_all = n_train * 1.1  # + the val split (10 % of the training set in Tiny ImageNet)
    scale = (work.input_size / 192) ** 2
    frozen = n_train * scale / frozen_rate(work, r) if work.cache_stage_features else 0.0
    train = work.train_minutes * 60 if work.train_minutes is not None else work.steps / r.steps_per_s * scale
    size = n_train / 100_000
    decode = n_all / 1000 * r.decode_s_per_1k
    grows = (r.eval_s - r.eval_fixed_s) * size * scale + near_dup_extra_seconds(work, r)
    evaluation = r.eval_fixed_s + grows * backbone_cost(work.backbone).evaluation
    if work.budget_minutes is not None:  # training gets what the whole budget leaves
        left = work.budget_minutes * 60 - decode - frozen - evaluation
        train = max(0.0, left if work.train_minutes is None else min(train, left))
    return {"decode": decode, "frozen-stage pass": frozen, "training": train, "evaluation + report": evaluation}


def evaluation_seconds(work: Workload, n_train: int) -> float:
    """The evaluation's estimated seconds (notebooks 03-05 and the PDF) for `n_train` training
    images on this CPU's class, what a whole-pipeline budget keeps free after training; 0 on a
    GPU (no measured rate)."""
    if work.device not in ("cpu", "auto") or (work.device == "auto" and _has_cuda()):
        return 0.0
    return estimate_seconds(work, n_train, cpu_class(work.bf16_cpu))["evaluation + report"]


def pipeline_started(default: float) -> float:
    """When the pipeline began (`PIPELINE_STARTED`, set by ``report/run_pipeline.py``), else
    `default` (a command run on its own counts from its own start)."""
    from ranking_lib.core.errors import RankingError

    raw = os.environ.get(PIPELINE_STARTED)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RankingError(f"{PIPELINE_STARTED}={raw!r} is not a Unix time in seconds") from None
    if not value <= default + 60:
        raise RankingError(f"{PIPELINE_STARTED}={raw!r} lies in the future")
    return value


def est_steps(work: Workload, train_s: float, r: ClassRates) -> int:
    """About how many steps `train_s` seconds of training are at the class's rate (an estimate)."""
    return int(round(train_s * r.steps_per_s / (work.input_size / 192) ** 2, -2))


def _m(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def describe_plan(work: Workload) -> list[str]:
    """A few lines: the work, the budget or steps, the estimate per phase on this CPU class."""
    if work.device not in ("cpu", "auto") or (work.device == "auto" and _has_cuda()):
        return [f"plan: {work.steps:,} steps on {work.device} (no CPU estimate)" if not work.budgeted else
                f"plan: budget {work.budget_minutes or work.train_minutes:g} min on {work.device} "
                f"({'whole pipeline' if work.budget_minutes else 'training'}; no evaluation estimate off the CPU)"]
    n = count_images(work.data_dir, work.max_classes)
    klass = cpu_class(work.bf16_cpu)
    lines = []
    if work.budget_minutes is not None:
        lines.append(f"plan: budget {work.budget_minutes:g} min end to end -> training gets what is left after the "
                     f"decode and the frozen-stage pass (measured) and the evaluation (estimated)"
                     + (f", at most {work.train_minutes:g} min" if work.train_minutes is not None else "")
                     + "; the steps are fixed from the step rate measured when training starts (printed then, "
                       "saved in train_summary.json)")
    elif work.train_minutes is not None:
        lines.append(f"plan: training budget {work.train_minutes:g} min -> the steps are fixed from the step "
                     f"rate measured when training starts (printed then, saved in train_summary.json)")
    else:
        lines.append(f"plan: {work.steps:,} steps (no time budget)")
    if not n:
        return lines + [f"plan: no estimate ({work.data_dir}/train not readable yet)"]
    est = estimate_seconds(work, n, klass)
    r = RATES[klass]
    parts = ", ".join(f"{k} ~{_m(v)}" + (f" (~{est_steps(work, v, r):,} steps)" if k == "training" and work.budgeted else "")
                      for k, v in est.items() if v)
    cost = backbone_cost(work.backbone)
    lines.append(f"plan: {n:,} training images at {work.input_size} px, "
                 f"{'bf16 on a CPU with native bf16' if klass == 'native bf16' else 'fp32 (AVX2-only rates)'}: {parts} "
                 f"-> about {_m(sum(est.values()))} end to end (estimate from measured rates: "
                 f"{frozen_rate(work, r):.0f} img/s frozen pass, {r.steps_per_s:g} steps/s; {r.source}"
                 + (f"; {work.backbone}: {cost.source}" if work.backbone in BACKBONE_COSTS else "") + ")")
    return lines


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
