"""`training.parts`: what the trainer is handed, built in one place (from a config: `run_settings.training_parts`)."""

import pytest
import torch

from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.training.losses import GradedMargin
from ranking_lib.run_settings import training_parts
from ranking_lib.training.parts import TrainingParts, build_parts


class _Net(torch.nn.Module):
    """A backbone and a head, as `EmbeddingNet` has them (the optimiser groups them)."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(4, 4)
        self.fc = torch.nn.Linear(4, 3)


def _cfg(**kw) -> RunConfig:
    return RunConfig(data_dir="d", run_dir="r", **kw)


def test_the_parts_a_config_names():
    net = _Net()
    plain = training_parts(_cfg(miner="none", optimizer="sgd", gap=0.3), net)
    assert isinstance(plain.optimizer, torch.optim.SGD) and plain.loss.gap == 0.3
    assert plain.miner is None and plain.teacher is None and plain.distill is None and plain.graded is None
    # the optimiser holds the network's own parameters (a trainer moving it keeps them)
    held = {id(p) for g in plain.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in net.parameters()}
    mined = training_parts(_cfg(miner="batch_hard", optimizer="adamw"), net)
    assert mined.miner is not None and isinstance(mined.optimizer, torch.optim.AdamW)


def test_the_teacher_is_the_network_as_built_and_stays_frozen():
    net = _Net()
    parts = training_parts(_cfg(distill_weight=5.0), net)
    assert parts.distill_weight == 5.0 and parts.distill is not None
    assert parts.teacher is not net and not parts.teacher.training
    assert all(not p.requires_grad for p in parts.teacher.parameters())
    with torch.no_grad():
        net.fc.weight.add_(1.0)  # training moves the network, not its teacher
    assert not torch.equal(parts.teacher.fc.weight, net.fc.weight)


def test_a_graded_margin_needs_the_class_similarity():
    with pytest.raises(RankingError, match="class_similarity"):
        training_parts(_cfg(graded_margin=0.5), _Net())
    sim = torch.tensor([[1.0, 0.25], [0.25, 1.0]])
    parts = training_parts(_cfg(graded_margin=0.5), _Net(), sim)
    assert isinstance(parts.graded, GradedMargin)
    assert parts.graded(torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(0.375)


def test_the_parts_from_plain_values_hold_the_optimiser_handed():
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    parts = build_parts(net, opt, gap=0.2, miner="batch_hard")
    assert parts.optimizer is opt and parts.loss.gap == 0.2 and parts.miner is not None and parts.teacher is None
    with pytest.raises(RankingError, match=r"^miner must be one of .*\(got 'hardest'\)$"):
        build_parts(net, opt, gap=0.2, miner="hardest")


def test_a_distillation_term_needs_a_teacher_and_a_weight():
    net = _Net()
    built = training_parts(_cfg(), net)
    with pytest.raises(RankingError, match="teacher and a weight"):
        TrainingParts(built.optimizer, built.loss, teacher=net, distill_weight=0.0)
    with pytest.raises(RankingError, match="teacher and a weight"):
        TrainingParts(built.optimizer, built.loss, distill_weight=1.0)
