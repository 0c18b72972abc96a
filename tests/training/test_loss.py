import math

import pytest
import torch

from ranking_lib.core.errors import RankingError
from ranking_lib.training.losses import RankingLoss


def test_hand_computed_values():
    q = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]])   # D(q,p) = 5, 1
    n = torch.tensor([[0.0, 2.0], [0.0, 10.0]])  # D(q,n) = 2, 10
    # row 1: max(0, 1 + 5 - 2) = 4 ; row 2: max(0, 1 + 1 - 10) = 0 ; mean = 2
    assert RankingLoss(gap=1.0)(q, p, n).item() == pytest.approx(2.0, abs=1e-5)
    # squared: row 1: 1 + 25 - 4 = 22 ; row 2: 1 + 1 - 100 < 0 -> 0 ; mean 11
    assert RankingLoss(gap=1.0, squared=True)(q, p, n).item() == pytest.approx(11.0, abs=1e-4)
    # gap 0.5: row 1: 3.5
    assert RankingLoss(gap=0.5)(q, p, n).item() == pytest.approx(1.75, abs=1e-5)


def test_zero_when_satisfied_by_more_than_gap():
    q = torch.zeros(3, 4)
    p = torch.full((3, 4), 0.1)
    n = torch.full((3, 4), 2.0)  # D(q,n) - D(q,p) = 3.8 > gap
    assert RankingLoss(gap=1.0)(q, p, n).item() == 0.0
    # exactly at the margin boundary minus epsilon is positive
    n2 = torch.full((3, 4), 0.1 + 1.0 / 2 - 0.01)  # D(q,n) - D(q,p) = 0.98 < 1
    assert RankingLoss(gap=1.0)(q, p, n2).item() > 0


def test_gradient_flows_to_all_three_inputs():
    torch.manual_seed(0)
    q, p, n = (torch.randn(8, 16, requires_grad=True) for _ in range(3))
    loss = RankingLoss(gap=10.0)(q, p, n)  # big gap: every triplet active
    loss.backward()
    for t in (q, p, n):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_gradient_finite_when_query_equals_positive():
    q = torch.ones(2, 3, requires_grad=True)
    p = q.detach().clone().requires_grad_(True)
    n = torch.zeros(2, 3)
    RankingLoss(gap=5.0)(q, p, n).backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("gap", [0.0, -1.0, math.nan])
def test_gap_must_be_positive(gap):
    with pytest.raises(RankingError, match="gap must be > 0"):
        RankingLoss(gap=gap)


def test_within_class_distillation_keeps_the_teachers_within_class_distances():
    from ranking_lib.training.losses import WithinClassDistillation

    torch.manual_seed(0)
    distill = WithinClassDistillation()
    teacher = torch.randn(12, 16)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 5])
    # a scaled, rotated copy has the same relative distances: nothing to distil
    rot, _ = torch.linalg.qr(torch.randn(16, 16))
    assert distill(3.0 * teacher @ rot, teacher, labels).item() == pytest.approx(0.0, abs=1e-6)
    # other within-class distances cost, and the gradient moves the student towards the teacher's
    student = torch.randn(12, 16, requires_grad=True)
    before = distill(student, teacher, labels)
    assert before.item() > 0
    before.backward()
    with torch.no_grad():
        after = distill(student - 0.5 * student.grad / student.grad.norm(), teacher, labels)
    assert after.item() < before.item()
    # pairs of different classes do not count: moving a singleton class changes nothing
    moved = student.detach().clone()
    moved[9:] += 100.0
    assert distill(moved, teacher, labels).item() == pytest.approx(before.item(), rel=1e-5)
    # no two images of one class: zero, with a gradient of zeros
    z = torch.randn(3, 4, requires_grad=True)
    loss = distill(z, torch.randn(3, 4), torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0
    with pytest.raises(RankingError, match="lengths differ"):
        distill(z, torch.randn(2, 4), torch.tensor([0, 1, 2]))


def test_graded_margin_grows_with_how_unlike_the_negatives_class_is():
    from ranking_lib.training.losses import GradedMargin

    sim = [[1.0, 0.8, 0.2], [0.8, 1.0, float("nan")], [0.2, float("nan"), 1.0]]
    graded = GradedMargin(sim, weight=0.5)
    extra = graded(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 2]))
    # in-class: the plain gap; a near class (0.8): +0.1; an unlike one (0.2): +0.4; unknown: the mean of the rest
    assert extra.tolist() == pytest.approx([0.0, 0.1, 0.4, 0.5 * (1 - (3 + 1.6 + 0.4) / 7)])
    q = torch.zeros(2, 2)
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # D(q,p) = 1
    n = torch.tensor([[2.5, 0.0], [2.5, 0.0]])  # D(q,n) = 2.5: satisfied by 1.5 with g = 1
    loss = RankingLoss(gap=1.0)
    assert loss(q, p, n).item() == 0.0
    assert loss(q, p, n, torch.tensor([0.0, 1.0])).item() == pytest.approx(0.25)  # (0 + (2 + 1 - 2.5)) / 2
    with pytest.raises(RankingError, match="square"):
        GradedMargin([[1.0, 0.5]], 1.0)
    with pytest.raises(RankingError, match="no known value"):
        GradedMargin([[float("nan")]], 1.0)
