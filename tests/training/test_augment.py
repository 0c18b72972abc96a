import torch

from ranking_lib.training.augment import flip_and_shift


def _imgs(n=16):
    return torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_flip_only_gives_identity_or_mirror_and_both_occur():
    x = _imgs()
    y = flip_and_shift(x, torch.Generator().manual_seed(1), max_shift=0)
    same = [torch.equal(a, b) for a, b in zip(x, y)]
    mirrored = [torch.equal(a.flip(1), b) for a, b in zip(x, y)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(mirrored)


def test_seeded_generator_is_deterministic():
    x = _imgs()
    a = flip_and_shift(x, torch.Generator().manual_seed(5))
    b = flip_and_shift(x, torch.Generator().manual_seed(5))
    c = flip_and_shift(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == x.shape


def test_shift_translates_content():
    x = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    x[0, 8, 8] = 255
    outs = [flip_and_shift(x, torch.Generator().manual_seed(s), max_shift=3) for s in range(20)]
    positions = {tuple(torch.nonzero(o[0, :, :, 0]).tolist()[0]) for o in outs}
    assert len(positions) > 3  # the bright pixel lands in several places
    assert all(abs(r - 8) <= 3 for r, _ in positions)
