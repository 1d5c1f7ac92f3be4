"""Sparsifying and sign-electing merges (Breadcrumbs, DELLA, DARE, SCE, RAM) and per-tensor parameter resolution,
each against an independent computation: hand-picked expected entries, float64 loops over plain Python lists,
and closed forms. mergekit 0.1.5's semantics; mergekit itself is never imported."""

from __future__ import annotations

import dataclasses
import math
import zlib

import pytest
import torch

from modelops.merge.methods import get_method, sparsify
from modelops.merge.methods.task_vectors import sign_agreement
from modelops.merge.params import evaluate_setting, resolve
from modelops.merge.registry import TensorJob

# |δ| ascending: idx 5 (0.05), 0, 4, 2, 8, 7, 3, 9, 6, 1 (5.0): all magnitudes distinct, so "which are kept" is unique.
DELTA = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 4.0, -1.0, 0.7, -3.0])


def keep(delta: torch.Tensor, indices: set[int]) -> torch.Tensor:
    return torch.tensor([v if i in indices else 0.0 for i, v in enumerate(delta.tolist())])


def default_params(name: str) -> dict:
    return {p.name: p.default for p in get_method(name).params if not p.per_model}


def seeded(seed: int, name: str, index: int) -> torch.Generator:
    """The per-model generator the project documents: crc32 of 'seed:tensor name:model index'."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{index}".encode()))


def gta_reference(
    base: list[float],
    kept: list[list[float]],
    weights: list[float],
    *,
    consensus: bool,
    normalize: bool,
    lam: float,
) -> list[float]:
    """Generalized task arithmetic entry by entry in float64 (mergekit's GTATask written as loops)."""
    out = []
    for j, b in enumerate(base):
        terms = [w * d[j] for w, d in zip(weights, kept, strict=True)]
        if consensus:
            elected = 1.0 if sum(terms) >= 0 else -1.0
            agree = [x != 0 and math.copysign(1.0, x) == elected for x in terms]
            mixed = sum(x for x, a in zip(terms, agree, strict=True) if a)
            divisor = sum(w for w, a in zip(weights, agree, strict=True) if a) or 1.0
        else:
            mixed = sum(terms)
            divisor = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
        if normalize:
            mixed /= divisor
        out.append(b + lam * mixed)
    return out


def outliers_reference(delta: list[float], density: float, gamma: float) -> list[float]:
    """Breadcrumbs by hand: rank |δ| ascending, drop the n_top largest and the smallest, keep int(density·n)."""
    n = len(delta)
    order = sorted(range(n), key=lambda i: abs(delta[i]))
    n_keep = int(density * n)
    n_top = min(int(gamma * n), n - n_keep)
    kept = set(order[n - n_top - n_keep : n - n_top])
    return [v if i in kept else 0.0 for i, v in enumerate(delta)]


# --- sparsify.magnitude_outliers (Model Breadcrumbs) -------------------------------------------------------------


def test_breadcrumbs_drops_the_gamma_largest_and_the_smallest_keeping_density() -> None:
    # density 0.5, gamma 0.2 of 10: drop the 2 largest (1, 6) and the 3 smallest (5, 0, 4)
    got = sparsify.magnitude_outliers(DELTA, 0.5, 0.2)
    assert torch.equal(got, keep(DELTA, {2, 8, 7, 3, 9}))
    # density 0.3, gamma 0.1: drop the largest (1) and the 6 smallest
    assert torch.equal(sparsify.magnitude_outliers(DELTA, 0.3, 0.1), keep(DELTA, {3, 9, 6}))


def test_breadcrumbs_with_density_plus_gamma_above_one_drops_fewer_outliers_to_keep_density() -> None:
    # density 0.8, gamma 0.3: int(0.3·10)=3 outliers would leave 7 < 8, so only the 2 largest (1, 6) go
    got = sparsify.magnitude_outliers(DELTA, 0.8, 0.3)
    assert torch.equal(got, keep(DELTA, set(range(10)) - {1, 6}))
    assert torch.count_nonzero(got) == 8
    # density 0.9, gamma 0.5: only the single largest (1) is dropped
    assert torch.equal(sparsify.magnitude_outliers(DELTA, 0.9, 0.5), keep(DELTA, set(range(10)) - {1}))


def test_breadcrumbs_on_a_tensor_too_small_for_any_outlier_keeps_the_top_density() -> None:
    # int(0.05·10) = 0 outliers: the 3 largest are kept (mergekit 0.1.5 would keep nothing here)
    got = sparsify.magnitude_outliers(DELTA, 0.3, 0.05)
    assert torch.equal(got, keep(DELTA, {1, 6, 9}))


def test_breadcrumbs_rescale_preserves_the_l1_norm_and_density_one_is_a_copy() -> None:
    got = sparsify.magnitude_outliers(DELTA, 0.5, 0.2, rescale=True)
    plain = keep(DELTA, {2, 8, 7, 3, 9}).double()
    factor = DELTA.double().abs().sum() / plain.abs().sum()  # 16.35 / 7.0
    assert torch.allclose(got.double(), plain * factor, atol=1e-6)
    full = sparsify.magnitude_outliers(DELTA, 1.0, 0.2)
    assert torch.equal(full, DELTA) and full.data_ptr() != DELTA.data_ptr()


# --- sparsify.della_magprune (DELLA's MagPrune) -------------------------------------------------------------------


def test_della_keep_probability_rises_linearly_with_rank_inside_each_row() -> None:
    rows, cols, density, eps = 4000, 11, 0.5, 0.3
    g = torch.Generator().manual_seed(7)
    rank = torch.argsort(torch.rand(rows, cols, generator=g), dim=1)  # a random permutation of 0..10 per row
    sign = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    scale = torch.arange(1, rows + 1, dtype=torch.float32).unsqueeze(1)  # rows differ in size: ranks must be per row
    delta = sign * (rank + 1).float() * scale
    kept = sparsify.della_magprune(delta, density, eps, torch.Generator().manual_seed(1), rescale=False) != 0
    for block in (slice(0, 1000), slice(3000, 4000)):  # the smallest rows and the largest rows alike
        for r in range(cols):
            want = density - eps + 2 * eps * r / (cols - 1)  # 0.2 for the smallest … 0.8 for the largest
            rate = kept[block][rank[block] == r].float().mean().item()
            assert abs(rate - want) < 0.065, (block, r, rate, want)
    assert abs(kept.float().mean().item() - density) < 0.01


def test_della_same_seed_gives_the_same_mask_and_rescale_preserves_l1() -> None:
    delta = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    first = sparsify.della_magprune(delta, 0.4, 0.1, torch.Generator().manual_seed(5))
    again = sparsify.della_magprune(delta, 0.4, 0.1, torch.Generator().manual_seed(5))
    other = sparsify.della_magprune(delta, 0.4, 0.1, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first != 0, other != 0)
    mask = (first != 0).double()
    factor = delta.double().abs().sum() / (delta.double() * mask).abs().sum()
    assert torch.allclose(first.double(), delta.double() * mask * factor, rtol=1e-5, atol=1e-6)
    assert math.isclose(first.double().abs().sum().item(), delta.double().abs().sum().item(), rel_tol=1e-5)


def test_della_edges_density_one_zero_and_epsilon_out_of_range() -> None:
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sparsify.della_magprune(DELTA, 1.0, 0.1, g), DELTA)
    assert torch.count_nonzero(sparsify.della_magprune(DELTA, 0.0, 0.1, g)) == 0
    for density, eps in ((0.9, 0.1), (0.1, 0.1), (0.5, 0.6)):
        with pytest.raises(ValueError, match="epsilon"):
            sparsify.della_magprune(DELTA, density, eps, g)


# --- sparsify.bernoulli (DARE) ------------------------------------------------------------------------------------


def test_dare_bernoulli_keeps_density_on_average_rescales_l1_and_is_seeded() -> None:
    delta = torch.randn(200, 200, generator=torch.Generator().manual_seed(2)) + 3.0  # no exact zeros
    got = sparsify.bernoulli(delta, 0.3, torch.Generator().manual_seed(9))
    mask = (got != 0).double()
    assert abs(mask.mean().item() - 0.3) < 0.015
    factor = delta.double().abs().sum() / (delta.double() * mask).abs().sum()
    assert torch.allclose(got.double(), delta.double() * mask * factor, rtol=1e-5, atol=1e-5)
    plain = sparsify.bernoulli(delta, 0.3, torch.Generator().manual_seed(9), rescale=False)
    assert torch.equal(plain != 0, got != 0)
    assert torch.equal(plain[plain != 0], delta[plain != 0])


# --- task-vector methods through the registry --------------------------------------------------------------------

BASE = [0.5, -1.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.75, 1.5, -2.0]
DELTAS = [
    [0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 4.0, -1.0, 0.7, -3.0],
    [-0.6, 0.9, 0.2, -2.5, 1.1, -0.3, -0.05, 0.4, -1.6, 3.5],
]


def job(name: str, per_model: dict, params: dict, deltas: list[list[float]] = DELTAS) -> TensorJob:
    base = torch.tensor(BASE).view(2, 5)
    tensors = [torch.tensor([b + d for b, d in zip(BASE, delta, strict=True)]).view(2, 5) for delta in deltas]
    return TensorJob("model.layers.0.mlp.up_proj.weight", base, tensors, per_model, default_params(name) | params)


def run(name: str, per_model: dict, params: dict, deltas: list[list[float]] = DELTAS) -> list[float]:
    return get_method(name).fn(job(name, per_model, params, deltas)).double().reshape(-1).tolist()


BREADCRUMBS_PM = {"weight": [0.5, 1.5], "density": [0.5, 0.6], "gamma": [0.2, 0.1]}


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_breadcrumbs_normalize_divides_by_the_weight_sum_not_the_kept_count(lam: float) -> None:
    kept = [outliers_reference(d, k, g) for d, k, g in zip(DELTAS, [0.5, 0.6], [0.2, 0.1], strict=True)]
    for normalize in (False, True):
        got = run("breadcrumbs", BREADCRUMBS_PM, {"normalize": normalize, "lambda": lam})
        want = gta_reference(BASE, kept, [0.5, 1.5], consensus=False, normalize=normalize, lam=lam)
        assert got == pytest.approx(want, abs=1e-6)
    # entry 0 is kept only by model 2: dividing by the kept weight (1.5) instead of Σw (2.0) would differ there
    assert kept[0][0] == 0 and kept[1][0] != 0
    got = run("breadcrumbs", BREADCRUMBS_PM, {"normalize": True, "lambda": lam})
    assert got[0] == pytest.approx(BASE[0] + lam * 1.5 * kept[1][0] / 2.0, abs=1e-6)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_breadcrumbs_ties_normalize_divides_by_the_weight_of_sign_agreeing_entries(lam: float) -> None:
    kept = [outliers_reference(d, k, g) for d, k, g in zip(DELTAS, [0.5, 0.6], [0.2, 0.1], strict=True)]
    for normalize in (False, True):
        got = run("breadcrumbs_ties", BREADCRUMBS_PM, {"normalize": normalize, "lambda": lam})
        want = gta_reference(BASE, kept, [0.5, 1.5], consensus=True, normalize=normalize, lam=lam)
        assert got == pytest.approx(want, abs=1e-6)
    # entry 3: both kept, signs +2.0·0.5 vs −2.5·1.5 → − elected, only model 2 counts, divided by its weight 1.5
    assert kept[0][3] == 2.0 and kept[1][3] == -2.5
    got = run("breadcrumbs_ties", BREADCRUMBS_PM, {"normalize": True, "lambda": lam})
    assert got[3] == pytest.approx(BASE[3] + lam * -2.5, abs=1e-6)


def test_sign_election_elects_plus_on_an_exact_tie_of_the_weighted_mass() -> None:
    # entry 0: weighted +0.5 vs −0.5 (raw deltas +0.25, −0.5 sum to −0.25: the weighted mass decides); entry 1: 0 vs 0
    deltas = [[0.25, 0.0, 1.0, -1.0, 0, 0, 0, 0, 0, 0], [-0.5, 0.0, -1.0, -1.0, 0, 0, 0, 0, 0, 0]]
    pm = {"weight": [2.0, 1.0], "density": [1.0, 1.0], "gamma": [0.01, 0.01], "epsilon": [0.15, 0.15]}
    for name in ("breadcrumbs_ties", "della"):  # density 1: nothing dropped, so only the election acts
        got = run(name, pm, {"normalize": True, "rescale": False}, deltas)
        assert got[0] == pytest.approx(BASE[0] + 0.5 / 2.0)  # + elected, model 1 alone: 2·0.25 / 2
        assert got[1] == BASE[1]  # zeros never agree; divisor 0 → 1
        assert got[2] == pytest.approx(BASE[2] + 2.0 / 2.0)  # 2·1 − 1 > 0: + elected, model 1 alone
        assert got[3] == pytest.approx(BASE[3] - 1.0)  # both −: (−2 − 1) / 3
    tie = sign_agreement(torch.tensor([[1.0, 0.0, -2.0], [-1.0, 0.0, 1.0]]))
    assert torch.equal(tie, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))  # sums 0, 0, −1


def della_kept(name: str, deltas: list[list[float]], density: float, eps: float, seed: int) -> list[list[float]]:
    """DELLA's mask redrawn independently: probabilities from each row's ranks, the documented per-model generator,
    then the L1 rescale, all per model."""
    out = []
    for i, delta in enumerate(deltas):
        rows = [delta[:5], delta[5:]]
        probs = []
        for row in rows:
            order = sorted(range(5), key=lambda c, row=row: abs(row[c]))
            rank = {c: r for r, c in enumerate(order)}
            probs.append([density - eps + 2 * eps * rank[c] / 4 for c in range(5)])
        mask = torch.bernoulli(torch.tensor(probs, dtype=torch.float32), generator=seeded(seed, name, i))
        kept = [d * m for d, m in zip(delta, mask.reshape(-1).tolist(), strict=True)]
        before, after = sum(abs(x) for x in delta), sum(abs(x) for x in kept)
        out.append([x * before / after for x in kept] if after >= 1e-7 else kept)
    return out


@pytest.mark.parametrize(("method", "consensus"), [("della", True), ("della_linear", False)])
def test_della_methods_match_a_redrawn_mask_with_rescale_and_their_normalize_default(
    method: str, consensus: bool
) -> None:
    pm = {"weight": [0.5, 1.5], "density": [0.5, 0.5], "epsilon": [0.3, 0.3]}
    job_ = dataclasses.replace(job(method, pm, {"lambda": 0.8}), seed=11)
    got = get_method(method).fn(job_).double().reshape(-1).tolist()
    kept = della_kept(job_.name, DELTAS, 0.5, 0.3, seed=11)
    normalize = consensus  # mergekit: della normalizes by default, della_linear does not
    want = gta_reference(BASE, kept, [0.5, 1.5], consensus=consensus, normalize=normalize, lam=0.8)
    assert got == pytest.approx(want, abs=1e-5)


def test_gta_defaults_match_mergekit() -> None:
    want = {  # mergekit 0.1.5 registry: (normalize, rescale)
        "task_arithmetic": (False, False),
        "ties": (True, False),
        "dare_ties": (False, True),
        "dare_linear": (False, True),
        "breadcrumbs": (False, False),
        "breadcrumbs_ties": (False, False),
        "della": (True, True),
        "della_linear": (False, True),
    }
    for name, (normalize, rescale) in want.items():
        params = default_params(name)
        assert (params["normalize"], params["rescale"], params["lambda"]) == (normalize, rescale, 1.0), name
    assert get_method("breadcrumbs").param("gamma").default == 0.01
    assert get_method("della").param("epsilon").default == 0.15


# --- consensus: SCE, RAM, RAM+ -----------------------------------------------------------------------------------


def sce_reference(base: list[float], deltas: list[list[float]], topk: float) -> list[float]:
    m, n = len(deltas), len(base)
    tvs = [list(d) for d in deltas]
    if topk < 1:
        var = []
        for j in range(n):
            mean = sum(d[j] for d in tvs) / m
            var.append(sum((d[j] - mean) ** 2 for d in tvs) / m)
        k = int(sum(1 for v in var if v != 0) * topk)
        chosen = set(sorted(range(n), key=lambda j: -var[j])[:k])
        tvs = [[x if j in chosen else 0.0 for j, x in enumerate(d)] for d in tvs]
    energy = [sum(x * x for x in d) / n for d in tvs]
    weights = [e / sum(energy) for e in energy]
    out = []
    for j in range(n):
        elected = 1.0 if sum(d[j] for d in tvs) >= 0 else -1.0
        agree = [d[j] != 0 and math.copysign(1.0, d[j]) == elected for d in tvs]
        num = sum(w * d[j] for w, d, a in zip(weights, tvs, agree, strict=True) if a)
        den = sum(w for w, a in zip(weights, agree, strict=True) if a)
        out.append(base[j] + num / max(den, 1e-6))
    return out


@pytest.mark.parametrize("topk", [1.0, 0.5])
def test_sce_selects_by_variance_weights_by_mean_square_and_erases_minority_signs(topk: float) -> None:
    base = [0.5, -1.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.75]
    deltas = [  # entry 7: the same exact delta in every model (zero variance, not counted in k)
        [0.3, -1.2, 0.05, 0.8, -0.4, 2.0, 0.1, 0.25],
        [-0.1, 0.5, 0.6, 1.1, -0.9, -0.3, 0.15, 0.25],
        [0.7, -0.2, -0.45, -1.5, 0.35, 0.6, -0.25, 0.25],
    ]
    tensors = [torch.tensor([b + d for b, d in zip(base, delta, strict=True)]).view(2, 4) for delta in deltas]
    params = default_params("sce") | {"select_topk": topk}
    got = get_method("sce").fn(TensorJob("w", torch.tensor(base).view(2, 4), tensors, {}, params))
    want = sce_reference(base, deltas, topk)  # topk 0.5: k = int(7 · 0.5) = 3 entries survive
    assert got.double().reshape(-1).tolist() == pytest.approx(want, abs=1e-5)


RAM_BASE = [0.1 * j for j in range(16)]
UNIQUE_C = [0.5 + 0.1 * j for j in range(10)]
RAM_DELTAS = [  # entries: 0 A only; 1 A,B; 2 A,B,C; 3 nobody above ε; 4 B (C below ε); 5-14 C only; 15 A,C
    [1.0, 2.0, -1.0, 5e-6, 0.0, *[0.0] * 10, 0.25],
    [0.0, 4.0, -2.0, -5e-6, 0.5, *[0.0] * 10, 0.0],
    [0.0, 0.0, -3.0, 0.0, 8e-6, *UNIQUE_C, 0.75],
]


def ram_run(name: str, params: dict) -> list[float]:
    tensors = [torch.tensor([b + d for b, d in zip(RAM_BASE, delta, strict=True)]) for delta in RAM_DELTAS]
    job_ = TensorJob("w", torch.tensor(RAM_BASE), tensors, {}, default_params(name) | params)
    return [g - b for g, b in zip(get_method(name).fn(job_).double().tolist(), RAM_BASE, strict=True)]


def test_ram_keeps_unique_deltas_and_averages_only_the_models_that_changed_an_entry() -> None:
    want = [1.0, 3.0, -2.0, 0.0, 0.5, *UNIQUE_C, 0.5]  # entry 1: (2+4)/2, entry 2: (−1−2−3)/3, entry 4 unique to B
    assert ram_run("ram", {}) == pytest.approx(want, abs=1e-5)


def test_ramplus_scales_each_models_unique_entries_by_one_plus_r_times_clamped_shared_over_unique() -> None:
    # A: 1 unique, 3 shared → ρ 3 → clamped to α 2.5; B: 1 unique, 2 shared → ρ 2; C: 10 unique, 2 shared → ρ 0.2
    r, alpha = 0.5, 2.5
    gain_a, gain_b, gain_c = 1 + r * min(3.0, alpha), 1 + r * 2.0, 1 + r * 0.2
    want = [1.0 * gain_a, 3.0, -2.0, 0.0, 0.5 * gain_b, *[c * gain_c for c in UNIQUE_C], 0.5]
    assert ram_run("ramplus_tl", {"r": r, "alpha": alpha}) == pytest.approx(want, abs=1e-5)
    assert ram_run("ramplus_tl", {"r": 0.0, "alpha": alpha}) == pytest.approx(ram_run("ram", {}), abs=1e-6)


# --- params: evaluate_setting and resolve ------------------------------------------------------------------------

UP = "model.layers.3.mlp.up_proj.weight"
Q = "model.layers.3.self_attn.q_proj.weight"


def test_gradient_is_interpolated_linearly_at_depth_t() -> None:
    assert evaluate_setting([1, 0.7, 0.1], UP, 3 / 7) == pytest.approx(1 / 7 * 1 + 6 / 7 * 0.7)  # index 6/7
    assert evaluate_setting([1, 0.7, 0.1], UP, 0.75) == pytest.approx(0.4)  # halfway between 0.7 and 0.1
    assert evaluate_setting([1, 0.7, 0.1], UP, 0.0) == 1
    assert evaluate_setting([1, 0.7, 0.1], UP, 1.0) == pytest.approx(0.1)
    assert evaluate_setting([0, 10], UP, 0.25) == pytest.approx(2.5)
    assert evaluate_setting(0.3, UP, 0.9) == 0.3


def test_bool_lists_interpolate_as_numbers_and_other_lists_step() -> None:
    # mergekit's config reads [true, false] as [1.0, 0.0], so a switch gradient is a number between them
    assert evaluate_setting([True, False, True], UP, 0.25) == pytest.approx(0.5)
    assert evaluate_setting([False, True], UP, 0.3) == pytest.approx(0.3)
    assert evaluate_setting([True, False, True], UP, 1.0) == 1.0
    assert evaluate_setting(["a", "b"], UP, 0.99) == "a"
    assert evaluate_setting(["a", "b"], UP, 1.0) == "b"


def test_filter_lists_take_the_first_match_with_star_and_unfiltered_entries_matching_all() -> None:
    setting = [{"filter": "mlp", "value": 0.3}, {"filter": "self_attn", "value": [0, 1]}, {"value": 0.9}]
    assert evaluate_setting(setting, UP, 0.5) == 0.3
    assert evaluate_setting(setting, Q, 0.25) == pytest.approx(0.25)  # the matched value is itself a gradient
    assert evaluate_setting(setting, "model.embed_tokens.weight", 0.0) == 0.9
    first = [{"filter": "*", "value": 1.0}, {"filter": "mlp", "value": 2.0}]
    assert evaluate_setting(first, UP, 0.0) == 1.0
    assert evaluate_setting([{"filter": "mlp", "value": 1.0}], Q, 0.0) is None


def test_resolve_looks_up_model_then_slice_then_global_and_falls_through_unmatched_filters() -> None:
    model = {"weight": 0.0, "density": [{"filter": "mlp", "value": 0.2}]}
    slice_ = {"weight": 0.5, "density": 0.6, "gamma": [0.1, 0.3]}
    glob = {"weight": 0.9, "density": 0.7, "gamma": 0.05, "lambda": 1.5}
    levels = [model, slice_, glob]
    assert resolve("weight", UP, 0.5, levels) == 0.0  # a falsy value is still set at the model level
    assert resolve("density", UP, 0.5, levels) == 0.2
    assert resolve("density", Q, 0.5, levels) == 0.6  # no filter matched at the model level: next level
    assert resolve("gamma", Q, 0.5, levels) == pytest.approx(0.2)
    assert resolve("lambda", Q, 0.5, levels) == 1.5
    assert resolve("lambda", Q, 0.5, [None, {}, {"density": 1.0}]) is None
    assert resolve("density", Q, 0.5, [model, None, {"density": [{"filter": "self_attn", "value": 0.4}]}]) == 0.4


def test_della_ranks_along_dimension_one_for_higher_rank_tensors() -> None:
    """mergekit ranks |δ| along dim 1: in a (1, 3, 4) tensor each column of three entries is ranked on its own."""
    from modelops.merge.methods.sparsify import della_magprune

    delta = torch.arange(1.0, 13.0).view(1, 3, 4)
    probs = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1).expand(1, 3, 4).contiguous()  # ranks 1, 2, 3 per column
    want = torch.bernoulli(probs, generator=torch.Generator().manual_seed(4))
    got = della_magprune(delta, 0.5, 0.3, torch.Generator().manual_seed(4), rescale=False)
    assert torch.equal(got != 0, want.bool())


@pytest.mark.parametrize("block_rows", [1, 7, 1000])
def test_streamed_top_k_equals_a_stable_sort_with_ties_kept_in_index_order(block_rows: int) -> None:
    """TIES' keep-mask from the block-streamed radix selection: exactly the first int(density·n) entries of a
    stable descending sort of |δ| (bf16-rounded values, so many equal magnitudes straddle the cut)."""
    from modelops.merge.methods.sparsify import magnitude_keep_blocks

    g = torch.Generator().manual_seed(block_rows)
    for trial in range(40):
        rows, cols = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        mags = torch.randn(rows, cols, generator=g).bfloat16().float().abs()
        if trial % 3 == 0:
            mags[: rows // 2] = 0.0
        density = float(torch.rand(1, generator=g))
        got = magnitude_keep_blocks(
            lambda m=mags, n=rows: (m[i : i + block_rows] for i in range(0, n, block_rows)), (rows, cols), density
        )
        k = int(density * mags.numel())
        want = torch.zeros(mags.numel(), dtype=torch.bool)
        want[torch.sort(mags.reshape(-1), descending=True, stable=True).indices[:k]] = True
        if density >= 1.0:
            assert got is None
        else:
            assert torch.equal(got.reshape(-1), want), (trial, k)
