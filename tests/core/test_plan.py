"""The plan a pipeline run prints first: the work counted from the data, the estimate composed
from the measured per-class rates."""

from ranking_lib.core import plan
from ranking_lib.core.config import RunConfig
from ranking_lib.run_settings import workload


def _layout(root, classes=3, per_class=4):
    for c in range(classes):
        d = root / "train" / f"n{c:08d}" / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i}.JPEG").write_bytes(b"")
    return root


def test_count_images_follows_max_classes(tmp_path):
    root = _layout(tmp_path / "data")
    assert plan.count_images(root, None) == 12
    assert plan.count_images(root, 2) == 8
    assert plan.count_images(tmp_path / "missing", None) is None


def test_estimate_composes_the_class_rates(tmp_path):
    cfg = RunConfig(data_dir=str(tmp_path), input_size=192, steps=9000, freeze_stages=7, cache_stage_features=True)
    for klass, r in plan.RATES.items():
        est = plan.estimate_seconds(workload(cfg), 100_000, klass)
        assert abs(est["frozen-stage pass"] - 100_000 / r.frozen_img_s) < 1e-6
        assert abs(est["training"] - 9000 / r.steps_per_s) < 1e-6
    budget = cfg.replace(train_minutes=30)
    assert plan.estimate_seconds(workload(budget), 100_000, "AVX2 only")["training"] == 30 * 60
    # the AVX2 class is slower in every network phase (decoding JPEGs was measured faster there)
    fast, slow = (plan.estimate_seconds(workload(cfg), 100_000, k) for k in ("native bf16", "AVX2 only"))
    assert all(slow[k] > fast[k] for k in ("frozen-stage pass", "training", "evaluation + report"))


def test_describe_plan_says_budget_images_and_total(tmp_path):
    root = _layout(tmp_path / "data", classes=2, per_class=5)
    lines = plan.describe_plan(workload(RunConfig(data_dir=str(root), device="cpu", train_minutes=12)))
    assert lines[0].startswith("plan: training budget 12 min")
    assert "10 training images" in lines[1] and "end to end" in lines[1] and "estimate" in lines[1]
    lines = plan.describe_plan(workload(RunConfig(data_dir=str(tmp_path / "nothing"), device="cpu", steps=300)))
    assert lines[0] == "plan: 300 steps (no time budget)" and "no estimate" in lines[1]


def test_whole_budget_gives_training_what_is_left(tmp_path):
    cfg = RunConfig(data_dir=str(tmp_path), input_size=192, freeze_stages=7, cache_stage_features=True,
                    train_minutes=40, budget_minutes=85)
    for klass in plan.RATES:
        est = plan.estimate_seconds(workload(cfg), 100_000, klass)
        others = est["decode"] + est["frozen-stage pass"] + est["evaluation + report"]
        assert abs(est["training"] - min(40 * 60, 85 * 60 - others)) < 1e-6
        assert sum(est.values()) <= 85 * 60 + 1e-6
    assert plan.estimate_seconds(workload(cfg.replace(budget_minutes=1)), 100_000, "AVX2 only")["training"] == 0
    gpu = cfg.replace(device="cuda")
    assert plan.evaluation_seconds(workload(gpu), 100_000) == 0.0
    assert plan.evaluation_seconds(workload(cfg.replace(device="cpu", bf16_cpu=False)), 100_000) == \
        plan.estimate_seconds(workload(cfg), 100_000, "AVX2 only")["evaluation + report"]
    root = _layout(tmp_path / "data", classes=2, per_class=5)
    lines = plan.describe_plan(workload(RunConfig(data_dir=str(root), device="cpu", train_minutes=12, budget_minutes=30)))
    assert lines[0].startswith("plan: budget 30 min end to end") and "at most 12 min" in lines[0]
    assert "steps)" in lines[1]  # the training phase says about how many steps the budget buys


def test_the_evaluation_estimate_counts_the_near_duplicate_transforms_evaluate_embeds(tmp_path):
    from ranking_lib.retrieval import near_duplicates

    assert plan.NEAR_DUP_TRANSFORMS == len(near_duplicates.ALL_TRANSFORMS)  # the estimate follows the protocol
    cfg = RunConfig(data_dir=str(tmp_path), input_size=192, freeze_stages=7, cache_stage_features=True,
                    near_dup_queries=1000)
    for klass, r in plan.RATES.items():
        with_dups = plan.estimate_seconds(workload(cfg), 100_000, klass)["evaluation + report"]
        without = plan.estimate_seconds(workload(cfg.replace(semantic_metrics=False)), 100_000, klass)["evaluation + report"]
        extra = max(0, len(near_duplicates.ALL_TRANSFORMS) - r.near_dup_transforms) * 1000 * 2 / r.frozen_img_s
        assert abs(with_dups - without - extra) < 1e-6
    assert any(r.near_dup_transforms < plan.NEAR_DUP_TRANSFORMS for r in plan.RATES.values())  # the sum is exercised


def test_a_measured_backbone_scales_the_frozen_pass_and_the_evaluation(tmp_path):
    cfg = RunConfig(data_dir=str(tmp_path), input_size=192, freeze_stages=7, cache_stage_features=True,
                    budget_minutes=85)
    cost = plan.BACKBONE_COSTS["efficientnet_lite2"]
    for klass, r in plan.RATES.items():
        lite0 = plan.estimate_seconds(workload(cfg), 100_000, klass)
        lite2 = plan.estimate_seconds(workload(cfg.replace(backbone="efficientnet_lite2")), 100_000, klass)
        assert abs(lite2["frozen-stage pass"] - lite0["frozen-stage pass"] * cost.frozen) < 1e-6
        grows = lite0["evaluation + report"] - r.eval_fixed_s
        assert abs(lite2["evaluation + report"] - (r.eval_fixed_s + grows * cost.evaluation)) < 1e-6
        assert lite2["training"] < lite0["training"]  # the whole budget still holds: training gets less
        assert abs(sum(lite2.values()) - 85 * 60) < 1e-6
    # a backbone nobody measured is estimated at Lite0's rates
    assert plan.estimate_seconds(workload(cfg.replace(backbone="efficientnet_lite1")), 100_000, "native bf16") == \
        plan.estimate_seconds(workload(cfg), 100_000, "native bf16")


def test_the_workload_is_the_configs_fields_as_plain_values(tmp_path):
    """`core.plan` reads plain values, never a `RunConfig`: `run_settings.workload` copies the
    config's fields of the same names, and the budget flag agrees with the config's."""
    cfg = RunConfig(data_dir=str(tmp_path), input_size=160, steps=1234, backbone="efficientnet_lite2",
                    train_minutes=12, near_dup_queries=77, frozen_runtime="torch")
    work = workload(cfg)
    assert isinstance(work, plan.Workload) and not isinstance(work, RunConfig)
    fields = plan.Workload.__dataclass_fields__
    assert fields and all(getattr(work, f) == getattr(cfg, f) for f in fields)
    assert work.budgeted == cfg.budgeted is True
    assert workload(cfg.replace(train_minutes=None)).budgeted == cfg.replace(train_minutes=None).budgeted is False
