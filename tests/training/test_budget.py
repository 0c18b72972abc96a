"""The time budget (`train_minutes`): steps chosen from a step rate, recorded, kept on resume
(never re-measured), `--steps` wins, bad values are one line; the calibration leaves the run as
it was. The rate is given to the trainer (`steps_per_s`) wherever the test is not about measuring."""

import json

import numpy as np
import pytest
import torch

from data_scripts.make_demo_dataset import make_demo_dataset
from ranking_lib import cli, workflow
from ranking_lib.core import settings
from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import CheckpointError, RankingError
from ranking_lib.training import trainer as trainer_mod
from ranking_lib.training.checkpoint import read_checkpoint
from ranking_lib.run_settings import make_trainer
from ranking_lib.training.budget import TimeBudget, budget_steps, format_minutes
from ranking_lib.training.optim import LRSchedule
from ranking_lib.training.trainer import Trainer


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    data = make_demo_dataset(root / "data", num_classes=4, train_per_class=20, val_per_class=5, seed=0)
    return {"data": data, "cache": root / "cache"}


def _cfg(demo, run_dir, **kw) -> RunConfig:
    base = dict(data_dir=str(demo["data"]), cache_dir=str(demo["cache"]), run_dir=str(run_dir), input_size=32,
                embedding_dim=16, batch_size=4, steps=1000, num_triplets=64, val_triplets=20, freeze_stages=7,
                cache_stage_features=True, checkpoint_every=4, log_every=3, lr=0.01, warmup_steps=0,
                train_minutes=0.1)
    base.update(kw)
    cfg = RunConfig(**base)
    workflow.prepare(cfg, progress=False)
    workflow.sample(cfg)
    return cfg


def _no_measuring(monkeypatch):
    def refuse(self, *a, **k):
        raise AssertionError("the step rate was measured again")
    monkeypatch.setattr(Trainer, "measure_step_rate", refuse)


# ---------------------------------------------------------------------------- the arithmetic
def test_steps_from_rate_and_bad_budgets():
    assert budget_steps(10, 2.0) == 1200
    assert budget_steps(10, 2.0, warmup_steps=100, spent_s=60) == 1080  # the calibration is spent time
    with pytest.raises(RankingError) as e:
        budget_steps(1, 1.4, warmup_steps=100)  # 84 steps, not past the warm-up
    msg = str(e.value)
    assert "\n" not in msg and "warmup_steps=100" in msg and "at least 1.3 minutes" in msg
    for bad in (0, -5):
        with pytest.raises(RankingError, match="train_minutes must be > 0"):
            budget_steps(bad, 2.0)
    assert (format_minutes(45), format_minutes(40 * 60), format_minutes(143 * 60)) == ("45 s", "40 min", "2 h 23 min")
    assert (format_minutes(210), format_minutes(9.9 * 60)) == ("3.5 min", "9.9 min")  # not rounded to 4 / 10


@pytest.mark.parametrize("value", ["0", "-1"])
def test_bad_budget_is_one_line(value, capsys, tmp_path):
    with pytest.raises(RankingError, match=r"^train_minutes must be > 0"):
        RunConfig(train_minutes=float(value))
    rc = cli.main(["sample", "--run-dir", str(tmp_path), "--train-minutes", value])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "train_minutes must be > 0" in err[0], err


def test_explicit_steps_win_over_the_profile_budget():
    profile = settings.resolve("cpu").config
    assert profile.budgeted  # the cpu profile runs on a budget
    assert settings.resolve("cpu", {"train_minutes": 5}).config.train_minutes == 5
    cfg = settings.resolve("cpu", {"steps": 700}).config
    assert cfg.steps == 700 and cfg.train_minutes is None
    cfg = cli.config_from_args(cli.build_parser().parse_args(["train", "--profile", "cpu", "--steps", "7"]))
    assert cfg.steps == 7 and cfg.train_minutes is None


# ---------------------------------------------------------------------------- a budgeted run
def test_budget_chooses_records_and_resumes_exactly(demo, tmp_path, monkeypatch, capsys):
    a = _cfg(demo, tmp_path / "a")
    b = _cfg(demo, tmp_path / "b")
    ra = workflow.train(a, progress=True, steps_per_s=2.0)  # 0.1 min at 2 steps/s -> 12 steps
    assert "budget 6 s -> 12 steps at 2.00 steps/s" in capsys.readouterr().out
    assert ra.steps == 12 and ra.budget["steps"] == 12 and not ra.budget["measured"]
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["steps"] == 12 and saved["train_minutes"] == 0.1
    summary = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert summary["steps_chosen_by_budget"] == 12 and summary["budget"]["steps_per_s"] == 2.0
    assert summary["steps_history"] == [[0, 12]]
    ckpt_a = read_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert ckpt_a["config"]["steps"] == 12 and ckpt_a["budget"]["steps"] == 12

    workflow.train(b, progress=False, steps_per_s=2.0, stop_at=8)  # interrupted at step 8
    _no_measuring(monkeypatch)
    rb = workflow.train(b, progress=False)  # the profile's budget again, no rate: the plan is the checkpoint's
    assert rb.steps == 12 and rb.resumed_from == 8
    ckpt_b = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for k, v in ckpt_a["model"].items():
        assert torch.equal(v, ckpt_b["model"][k]), k
    la, lb = workflow.load_loss_log(a), workflow.load_loss_log(b)
    assert list(lb["step"]) == list(range(12))
    np.testing.assert_array_equal(la["loss"], lb["loss"])

    # a rerun with the recorded steps (no budget) is the same run
    c = _cfg(demo, tmp_path / "c", train_minutes=None, steps=12)
    workflow.train(c, progress=False)
    ckpt_c = read_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")
    for k, v in ckpt_a["model"].items():
        assert torch.equal(v, ckpt_c["model"][k]), k

    # another budget, or a budget on a fixed-steps checkpoint: one line, nothing changed
    with pytest.raises(CheckpointError, match="planned with train_minutes=0.1") as e:
        workflow.train(a.replace(train_minutes=0.5), progress=False)
    assert "\n" not in str(e.value) and "--steps" in str(e.value)
    with pytest.raises(CheckpointError, match="without a time budget"):
        workflow.train(c.replace(train_minutes=0.1), progress=False)
    # --steps extends a budgeted run as before
    assert workflow.train(a.replace(train_minutes=None, steps=14), progress=False, ).steps == 14


def test_budget_too_small_for_warmup_is_one_line(demo, tmp_path):
    cfg = _cfg(demo, tmp_path / "w", warmup_steps=20)
    with pytest.raises(RankingError) as e:
        workflow.train(cfg, progress=False, steps_per_s=2.0)  # 12 steps, warm-up 20
    assert "\n" not in str(e.value) and "warmup_steps=20" in str(e.value)
    assert not (tmp_path / "w" / "checkpoints" / "last.pt").exists()


def test_calibration_leaves_the_run_as_it_was(demo, tmp_path, monkeypatch):
    cfg = _cfg(demo, tmp_path / "m")
    caches = workflow.load_caches(cfg, progress=False)
    model = workflow.initial_model(cfg, caches["train"].wnids)
    inputs = workflow.model_inputs(model, caches["train"], workflow.feature_options(cfg), progress=False)
    t = make_trainer(cfg, model, inputs, caches["train"].labels, workflow.training_triplets(cfg, caches["train"], False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rate, n, spent = t.measure_step_rate(warmup=1, steps=3, max_s=0.0)
    assert rate > 0 and n == 4 and spent > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not t.optimizer.state and torch.equal(rng, torch.get_rng_state())
    # measured plan: the rate of the copy, the calibration subtracted
    monkeypatch.setattr(trainer_mod, "CALIBRATION_WARMUP", 1)
    monkeypatch.setattr(trainer_mod, "CALIBRATION_STEPS", 3)
    monkeypatch.setattr(Trainer, "measure_step_rate", lambda self, **k: (20.0, 4, 1.5))
    plan = t.apply_budget(progress=False)
    assert plan.measured and plan.steps == int((6 - 1.5) * 20) == t.steps == t.steps_history[0][1]


def test_a_profile_with_its_own_steps_drops_the_inherited_budget():
    # sample extends cpu (budget_minutes) and sets steps: its steps are the run's length
    cfg = settings.resolve("sample").config
    assert settings.resolve("cpu").config.budgeted
    assert cfg.train_minutes is None and cfg.budget_minutes is None and cfg.steps == 600


def test_after_training_the_profile_resolves_to_the_steps_its_budget_chose(tmp_path):
    run = tmp_path / "run"
    before = settings.resolve("cpu", {"run_dir": str(run)}).config
    run.mkdir()
    before.replace(steps=4321).save(run / "config.json")  # what `train` saves after planning
    after = settings.resolve("cpu", {"run_dir": str(run)}).config
    assert before.steps != 4321 and after.steps == 4321  # embed / evaluate / the report say 4,321
    assert settings.resolve("cpu", {"run_dir": str(run), "steps": 50}).config.steps == 50
    other = settings.resolve("cpu", {"run_dir": str(run), "train_minutes": 7}).config
    assert other.steps == before.steps  # another budget: not this run's plan


# ---------------------------------------------------------------------------- the whole pipeline's budget
def test_whole_budget_caps_the_training_minutes():
    both = TimeBudget(train_minutes=40, budget_minutes=85)
    assert both.training_minutes(spent_s=600, evaluation_s=600) == 40  # a fast CPU: the cap is loose
    assert both.training_minutes(spent_s=1900, evaluation_s=1500) == pytest.approx((5100 - 3400) / 60)
    alone = TimeBudget(budget_minutes=10)
    assert alone.training_minutes(spent_s=60, evaluation_s=120) == pytest.approx(7.0)
    with pytest.raises(RankingError, match=r"^no time budget: set train_minutes or budget_minutes"):
        TimeBudget(warmup_steps=10)
    with pytest.raises(RankingError) as e:
        alone.training_minutes(spent_s=400, evaluation_s=200)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("budget_minutes=10 leaves no time to train") and "--steps" in msg


@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_whole_budget_is_one_line(value, capsys, tmp_path, monkeypatch):
    with pytest.raises(RankingError, match=r"^budget_minutes must be > 0"):
        RunConfig(budget_minutes=float(value))
    rc = cli.main(["sample", "--run-dir", str(tmp_path), "--budget-minutes", value])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "budget_minutes must be > 0" in err[0], err
    from ranking_lib.core import plan
    monkeypatch.setenv(plan.PIPELINE_STARTED, "yesterday")
    with pytest.raises(RankingError, match="is not a Unix time"):
        plan.pipeline_started(0.0)


def test_steps_turn_the_whole_budget_off_and_the_cpu_profile_has_one():
    assert settings.resolve("cpu").config.budget_minutes is not None
    cfg = settings.resolve("cpu", {"steps": 70}).config
    assert cfg.steps == 70 and cfg.budget_minutes is None and cfg.train_minutes is None
    assert settings.resolve("sample").config.budget_minutes is None  # its own steps


def test_whole_budget_counts_from_the_pipeline_start_records_and_resumes(demo, tmp_path, monkeypatch, capsys):
    import time

    from ranking_lib.core import plan

    monkeypatch.setattr(workflow, "evaluation_seconds", lambda cfg, n: 30.0)
    monkeypatch.setenv(plan.PIPELINE_STARTED, repr(time.time() - 60))  # the pipeline began a minute ago
    # 2 min in all: ~60 s spent, 30 s of evaluation kept free -> ~30 s at 2 steps/s, ~60 steps
    a = _cfg(demo, tmp_path / "a", train_minutes=None, budget_minutes=2.0)
    r = workflow.train(a, progress=True, steps_per_s=2.0, stop_at=5)
    out = capsys.readouterr().out
    assert "budget 2 min end to end" in out and "evaluation ~30 s (estimate)" in out, out
    assert 50 <= r.budget["steps"] <= 60 and r.budget["spent_s"] >= 60 and r.budget["evaluation_s"] == 30.0
    planned = r.budget["steps"]
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["steps"] == planned and saved["budget_minutes"] == 2.0 and saved["train_minutes"] is None
    # resumed later (more time spent since): the checkpoint's plan, never re-measured or re-planned
    monkeypatch.setenv(plan.PIPELINE_STARTED, repr(time.time() - 100))
    _no_measuring(monkeypatch)
    rb = workflow.train(a.replace(steps=1000), progress=False, stop_at=7)
    assert rb.budget["steps"] == planned and rb.resumed_from == 5 and rb.steps == 7
    assert json.loads((tmp_path / "a" / "config.json").read_text())["steps"] == planned
    assert settings.planned_steps(tmp_path / "a", None, 2.0) == planned
    assert settings.planned_steps(tmp_path / "a", None, 3.0) is None  # another budget: not this run's plan
    with pytest.raises(CheckpointError, match="planned with budget_minutes=2.0") as e:
        workflow.train(a.replace(budget_minutes=3.0), progress=False)
    assert "\n" not in str(e.value)
    # too little left: one line, before any step
    monkeypatch.setenv(plan.PIPELINE_STARTED, repr(time.time() - 200))
    with pytest.raises(RankingError, match="budget_minutes=2 leaves no time to train"):
        workflow.train(_cfg(demo, tmp_path / "late", train_minutes=None, budget_minutes=2.0), progress=False,
                       steps_per_s=2.0)
    assert not (tmp_path / "late" / "checkpoints" / "last.pt").exists()


# ---------------------------------------------------------------------------- re-planning while training
from ranking_lib.training import budget as budget_mod  # noqa: E402
from ranking_lib.training.budget import Replan, replan_steps, schedule_progress  # noqa: E402


def test_schedule_progress_follows_the_moved_end():
    # no moves: the plain schedule, exactly
    for step in (10, 37, 99):
        assert schedule_progress(step, 100, 10) == (step - 10) / 90
    # moved at step 55 (half-way) from 100 to 200 steps: continuous there, then the other half over 145 steps
    moved = [Replan(55, 100, 200)]
    assert schedule_progress(55, 200, 10, moved) == pytest.approx(0.5)
    assert schedule_progress(54, 200, 10, moved) == pytest.approx(44 / 90)
    assert schedule_progress(55 + 145 // 2, 200, 10, moved) == pytest.approx(0.5 + 0.5 * (72 / 145))
    assert schedule_progress(200, 200, 10, moved) == 1.0
    # two moves, the second shortening the run: still continuous, still ending at 1
    two = [Replan(55, 100, 200), Replan(100, 200, 120)]
    at100 = schedule_progress(100, 200, 10, moved)
    assert schedule_progress(100, 120, 10, two) == pytest.approx(at100)
    assert schedule_progress(120, 120, 10, two) == 1.0
    cosine = LRSchedule(3e-4, "cosine", warmup_steps=10)
    lrs = [cosine.factor(s, 120, two) for s in range(10, 120)]  # after the warm-up
    assert max(abs(a - b) for a, b in zip(lrs, lrs[1:])) < 0.05  # no jump where the end moved


def test_replan_steps_moves_the_end_only_when_the_rate_disagrees():
    assert replan_steps(100, 1000, left_s=450, steps_per_s=2.0) is None  # 900 fit, 900 planned
    assert replan_steps(100, 1000, left_s=450, steps_per_s=2.02) is None  # within the tolerance
    assert replan_steps(100, 1000, left_s=450, steps_per_s=1.0) == 550  # slower: ends earlier
    assert replan_steps(100, 1000, left_s=450, steps_per_s=4.0) == 1900  # faster: trains longer
    assert replan_steps(100, 1000, left_s=-5, steps_per_s=2.0) == 100  # no time left: ends here
    assert replan_steps(100, 1000, left_s=450, steps_per_s=float("nan")) is None


def _slowed_step(monkeypatch, after_s: float, extra_s: float):
    """Each step sleeps `extra_s` once `after_s` seconds have passed since the first step (a
    competing load that starts half-way)."""
    import time as _time
    real = Trainer.step_loss
    state = {}

    def step(self, i):
        t = _time.perf_counter()
        state.setdefault("t0", t)
        if t - state["t0"] > after_s:
            _time.sleep(extra_s)
        return real(self, i)
    monkeypatch.setattr(Trainer, "step_loss", step)


def test_a_run_slowed_half_way_still_ends_on_time(demo, tmp_path, monkeypatch, capsys):
    minutes = 0.3  # 18 s, the calibration included
    cfg = _cfg(demo, tmp_path / "slow", train_minutes=minutes, steps=100000, checkpoint_every=5)
    import time as _time
    t0 = _time.perf_counter()
    _slowed_step(monkeypatch, after_s=minutes * 60 / 2, extra_s=0.06)
    result = workflow.train(cfg, progress=True)
    took = _time.perf_counter() - t0
    out = capsys.readouterr().out
    plan = result.budget
    assert plan["measured"] and plan["replan"]
    spent = plan["calibration_s"] + result.loop_s
    assert abs(spent - minutes * 60) <= 0.05 * minutes * 60, (spent, result.replans)
    assert took < minutes * 60 * 1.05 + 10  # model building and the caches on top of the budget
    # the slower half cut the planned steps; every move was said, recorded and saved
    assert result.replans and result.steps < plan["steps"]
    assert "re-planned at step" in out
    summary = json.loads((tmp_path / "slow" / "train_summary.json").read_text())
    assert summary["replans"] == result.replans and summary["steps"] == result.steps
    assert json.loads((tmp_path / "slow" / "config.json").read_text())["steps"] == result.steps
    ckpt = read_checkpoint(tmp_path / "slow" / "checkpoints" / "last.pt")
    assert ckpt["replans"] == result.replans and ckpt["config"]["steps"] == result.steps
    # the recorded schedule, handed to a run of the final steps without a budget, gives the same weights
    monkeypatch.undo()
    again = _cfg(demo, tmp_path / "again", train_minutes=None, steps=result.steps, checkpoint_every=5)
    workflow.train(again, progress=False, replans=result.replans)
    ckpt_again = read_checkpoint(tmp_path / "again" / "checkpoints" / "last.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, ckpt_again["model"][k]), k
    with pytest.raises(RankingError, match="end at"):
        workflow.train(again.replace(steps=result.steps + 1), progress=False, replans=result.replans, resume=False)


def test_a_resumed_run_keeps_its_moves_exactly(demo, tmp_path, monkeypatch):
    """Interrupted after a move of the schedule's end, the resumed run is bit-equal to the
    uninterrupted one (the moves are made deterministic here: by step, not by the clock)."""
    monkeypatch.setattr(Trainer, "measure_step_rate", lambda self, **k: (2.0, 0, 0.0))  # 12 steps planned
    moves = {8: 20, 16: 18}
    monkeypatch.setattr(budget_mod, "replan_steps", lambda step, steps, left_s, rate: moves.get(step))
    a = _cfg(demo, tmp_path / "a", checkpoint_every=4)
    b = _cfg(demo, tmp_path / "b", checkpoint_every=4)
    ra = workflow.train(a, progress=False)
    assert ra.steps == 18 and [(r["step"], r["steps"]) for r in ra.replans] == [(8, 20), (16, 18)]
    workflow.train(b, progress=False, stop_at=10)  # killed after the first move
    assert [r["step"] for r in read_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["replans"]] == [8]
    rb = workflow.train(b, progress=False)
    def moves_of(r):
        return [(m["step"], m["from_steps"], m["steps"]) for m in r.replans]
    assert rb.resumed_from == 10 and rb.steps == 18 and moves_of(rb) == moves_of(ra)
    assert rb.replans[0] == read_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["replans"][0]
    ckpt_a = read_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    ckpt_b = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for k, v in ckpt_a["model"].items():
        assert torch.equal(v, ckpt_b["model"][k]), k
    np.testing.assert_array_equal(workflow.load_loss_log(a)["loss"], workflow.load_loss_log(b)["loss"])
    np.testing.assert_array_equal(workflow.load_loss_log(a)["lr"], workflow.load_loss_log(b)["lr"])


def test_a_given_rate_keeps_the_plan_fixed(demo, tmp_path, monkeypatch):
    monkeypatch.setattr(budget_mod, "replan_steps", lambda *a, **k: 5)  # would cut the run if asked
    r = workflow.train(_cfg(demo, tmp_path / "fixed"), progress=False, steps_per_s=2.0)
    assert r.steps == 12 and r.replans == [] and not r.budget["replan"]
    assert budget_mod.REPLAN_TOLERANCE > 0


def test_next_replan_and_the_plan_a_checkpoint_keeps():
    """The budget's decisions as plain functions (`budget.next_replan`, `budget.resumed_plan`): the
    trainer only applies them."""
    from ranking_lib.training.budget import BudgetPlan, next_replan, resumed_plan

    plan = BudgetPlan(train_minutes=1.0, steps=600, steps_per_s=10.0, calibration_s=0.0, replan=True)
    # 100 steps in 20 s (5 steps/s, half the planned rate) with 40 s of the loop's 60 left: 200 + 40*5
    move = next_replan(plan, step=200, steps=600, loop_s=20.0, looked=(100, 0.0))
    assert (move.step, move.from_steps, move.steps) == (200, 600, 400) and move.left_s == 40.0
    assert next_replan(plan, 200, 600, 20.0, looked=(0, 0.0)) is None  # 10 steps/s: the plan holds
    assert next_replan(BudgetPlan(1.0, 600, 10.0), 200, 600, 20.0, (100, 0.0)) is None  # a given rate: fixed
    assert next_replan(None, 200, 600, 20.0, (100, 0.0)) is None
    saved = {"steps": 1234, "budget_minutes": 85, "train_minutes": None}
    kept = resumed_plan(saved, dict(saved, steps=9), {"steps_per_s": 4.5, "spent_s": 60.0, "replan": True},
                        "ckpt (step 7)", "start over")
    assert kept.steps == 1234 and kept.steps_per_s == 4.5 and kept.spent_s == 60.0 and kept.replan
    assert not kept.measured and kept.budget_minutes == 85
    with pytest.raises(CheckpointError, match=r"ckpt \(step 7\) was planned with budget_minutes=85"):
        resumed_plan(saved, dict(saved, budget_minutes=40), None, "ckpt (step 7)", "start over")
    with pytest.raises(CheckpointError, match="without a time budget; go on with --steps N, or start over"):
        resumed_plan({"steps": 50}, saved, None, "ckpt (step 7)", "start over")
