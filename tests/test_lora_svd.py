"""The factorisation math on hand-made matrices with known spectra (no I/O)."""

from __future__ import annotations

import math

import pytest
import torch

from modelops.lora.svd import factorize, overall_relative_error, rank_for_energy, relative_error


def known_spectrum(m: int, n: int, s: list[float], seed: int = 0) -> torch.Tensor:
    """U diag(s) Vᵀ with random orthonormal U, V: the singular values are exactly `s`."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    return (U * torch.tensor(s, dtype=torch.float64)) @ V.T


def lowrank_plus_noise(m: int, n: int, r: int, noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -1.5, r)  # a decaying signal spectrum, like real fine-tuning deltas
    low = (torch.randn(m, r, generator=g) * decay) @ torch.randn(r, n, generator=g)
    return low + noise * torch.randn(m, n, generator=g)


@pytest.mark.parametrize("exact", [True, False])
def test_exactly_low_rank_delta_is_reproduced(exact: bool) -> None:
    delta = lowrank_plus_noise(200, 120, 5, 0.0)
    f = factorize(delta, 5, exact=exact)
    assert f.B.shape == (200, 5) and f.A.shape == (5, 120)
    torch.testing.assert_close(f.B @ f.A, delta, atol=1e-4, rtol=1e-4)
    assert relative_error(delta, f.B, f.A) < 1e-5
    assert f.energy == pytest.approx(1.0, abs=1e-5)


def test_exact_truncation_error_is_the_eckart_young_tail() -> None:
    s = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    delta = known_spectrum(40, 30, s).float()
    f = factorize(delta, 3, exact=True)
    tail = math.sqrt(sum(x * x for x in s[3:]) / sum(x * x for x in s))
    assert relative_error(delta, f.B, f.A) == pytest.approx(tail, rel=1e-4)
    assert f.energy == pytest.approx(sum(x * x for x in s[:3]) / sum(x * x for x in s), rel=1e-5)


@pytest.mark.parametrize(("rank", "noise"), [(16, 0.05), (8, 0.2), (32, 0.1)])
def test_randomized_error_within_half_a_percent_of_exact(rank: int, noise: float) -> None:
    delta = lowrank_plus_noise(512, 384, 24, noise, seed=rank)
    exact = factorize(delta, rank, exact=True)
    rand = factorize(delta, rank, exact=False)
    assert rand.method == "randomized" and exact.method == "exact"
    e_exact = relative_error(delta, exact.B, exact.A)
    e_rand = relative_error(delta, rand.B, rand.A)
    assert e_exact <= e_rand + 1e-6  # exact truncation is optimal (Eckart–Young)
    assert e_rand <= e_exact * 1.005 + 1e-6


def test_reported_energy_matches_residual_for_randomized() -> None:
    delta = lowrank_plus_noise(300, 200, 10, 0.1)
    f = factorize(delta, 12, exact=False)
    err = relative_error(delta, f.B, f.A)
    assert f.energy == pytest.approx(1 - err * err, abs=1e-4)


def test_rank_for_energy_on_hand_values() -> None:
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 14.0, 0.6, 10) == 1  # 9/14 = 0.64
    assert rank_for_energy(s, 14.0, 0.9, 10) == 2  # 13/14 = 0.93
    assert rank_for_energy(s, 14.0, 0.99, 10) == 3
    assert rank_for_energy(s, 14.0, 0.99, 2) == 2  # capped
    assert rank_for_energy(s, 20.0, 0.95, 10) == 3  # spectrum keeps < 95% of the true total: take all


@pytest.mark.parametrize("exact", [True, False])
def test_energy_mode_picks_smallest_rank(exact: bool) -> None:
    s = [10.0, 6.0, 3.0, 1.0, 0.5, 0.25, 0.1]
    total = sum(x * x for x in s)
    delta = known_spectrum(300, 250, s, seed=3).float()
    for energy in (0.5, 0.9, 0.99, 0.999):
        want = next(k for k in range(1, len(s) + 1) if sum(x * x for x in s[:k]) / total >= energy)
        f = factorize(delta, energy=energy, max_rank=64, exact=exact)
        assert f.rank == want, energy
        assert f.energy >= energy - 1e-5


def test_rank_above_min_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds min"):
        factorize(torch.randn(10, 6), 7)


def test_overall_error_is_norm_weighted() -> None:
    assert overall_relative_error([0.5, 0.0], [2.0, 0.0]) == pytest.approx(0.5)
    assert overall_relative_error([0.5, 0.1], [3.0, 4.0]) == pytest.approx(math.sqrt((1.5**2 + 0.4**2) / 25))


def test_randomized_factors_do_not_depend_on_the_global_generator() -> None:
    # extract-lora must write the same adapter whatever ran before it in the process
    delta = lowrank_plus_noise(96, 80, 12, 0.05).float()
    torch.manual_seed(1)
    first = factorize(delta, rank=8, exact=False)
    after_first = torch.rand(3)
    torch.manual_seed(2)
    second = factorize(delta, rank=8, exact=False)
    assert first.method == second.method == "randomized"
    assert torch.equal(first.B, second.B) and torch.equal(first.A, second.A)
    torch.manual_seed(1)  # the draws a caller makes after factorize are the ones it would make without it
    assert torch.equal(torch.rand(3), after_first)
