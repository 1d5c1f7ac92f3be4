"""Geometric and two-model merges (NuSLERP, Multi-SLERP, Karcher, Model Stock, NearSwap, Arcee Fusion,
passthrough), each against an independent computation: numpy float64 slerp written row by row, closed forms for
angles and means, and a float64 loop for Arcee Fusion's importance and threshold. mergekit 0.1.5's semantics;
mergekit itself is never imported."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modelops.merge.methods import get_method, stock, swap, weighted
from modelops.merge.registry import TensorJob


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def default_params(name: str) -> dict:
    return {p.name: p.default for p in get_method(name).params if not p.per_model}


def merge(name: str, tensors: list[torch.Tensor], base: torch.Tensor | None = None, **kw: object) -> np.ndarray:
    per_model = {k: v for k, v in kw.items() if isinstance(v, list)}
    params = default_params(name) | {k: v for k, v in kw.items() if not isinstance(v, list)}
    return get_method(name).fn(TensorJob("w", base, tensors, per_model, params)).double().numpy()


def np64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def slerp_ref(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Textbook slerp of two vectors in float64; linear when they are parallel."""
    cos = float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if math.sin(theta) < 1e-12:
        return (1 - t) * a + t * b
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# --- nuslerp -----------------------------------------------------------------------------------------------------


def test_nuslerp_default_is_whole_tensor_slerp_at_w2_over_w1_plus_w2() -> None:
    a, b = rand(3, 4, seed=1), rand(3, 4, seed=2)
    got = merge("nuslerp", [a, b], weight=[1.0, 3.0])
    want = slerp_ref(np64(a).reshape(-1), np64(b).reshape(-1), 0.75).reshape(3, 4)
    np.testing.assert_allclose(got, want, atol=1e-5)
    per_row = np.stack([slerp_ref(x, y, 0.75) for x, y in zip(np64(a), np64(b), strict=True)])
    assert not np.allclose(got, per_row, atol=1e-3)  # flattening matters for these inputs
    equal = merge("nuslerp", [a, b], weight=[0.0, 0.0])  # weights summing to 0: t = 0.5
    np.testing.assert_allclose(equal, slerp_ref(np64(a).reshape(-1), np64(b).reshape(-1), 0.5).reshape(3, 4), atol=1e-5)


def test_nuslerp_without_flatten_slerps_each_row_along_the_last_dim() -> None:
    a, b = rand(3, 4, seed=3), rand(3, 4, seed=4)
    got = merge("nuslerp", [a, b], weight=[2.0, 1.0], nuslerp_flatten=False)
    want = np.stack([slerp_ref(x, y, 1 / 3) for x, y in zip(np64(a), np64(b), strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_nuslerp_row_wise_slerps_along_dim_zero() -> None:
    a, b = rand(3, 4, seed=5), rand(3, 4, seed=6)
    got = merge("nuslerp", [a, b], weight=[1.0, 1.0], nuslerp_flatten=False, nuslerp_row_wise=True)
    want = np.stack([slerp_ref(np64(a)[:, c], np64(b)[:, c], 0.5) for c in range(4)], axis=1)  # column by column
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_nuslerp_with_a_base_slerps_the_task_vectors_and_adds_the_base() -> None:
    base, a, b = rand(3, 4, seed=7), rand(3, 4, seed=8), rand(3, 4, seed=9)
    got = merge("nuslerp", [a, b], base, weight=[1.0, 3.0])
    ta, tb = (np64(a) - np64(base)).reshape(-1), (np64(b) - np64(base)).reshape(-1)
    np.testing.assert_allclose(got, np64(base) + slerp_ref(ta, tb, 0.75).reshape(3, 4), atol=1e-5)


def test_nuslerp_falls_back_to_lerp_on_colinear_rows() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.5]])
    b = torch.tensor([[3.0, 0.0, 0.0], [-0.5, 1.0, 2.0]])  # row 0 parallel (angle exactly 0), row 1 not
    got = merge("nuslerp", [a, b], weight=[3.0, 1.0], nuslerp_flatten=False)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], [1.5, 0.0, 0.0], atol=1e-6)  # 0.75·1 + 0.25·3
    np.testing.assert_allclose(got[1], slerp_ref(np64(a)[1], np64(b)[1], 0.25), atol=1e-5)


# --- multislerp --------------------------------------------------------------------------------------------------


def test_multislerp_of_two_orthogonal_vectors_is_the_45_degree_point_at_the_mean_norm() -> None:
    e1, e2 = torch.zeros(2, 3), torch.zeros(2, 3)
    e1[0, 1], e2[1, 2] = 2.0, 4.0  # orthogonal, norms 2 and 4
    got = merge("multislerp", [e1, e2], weight=[1.0, 1.0])
    want = np.zeros((2, 3))
    want[0, 1] = want[1, 2] = 3.0 / math.sqrt(2)  # direction (ê1 + ê2)/√2, length (2 + 4)/2
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_multislerp_is_the_normalized_weighted_mean_direction_times_the_weighted_mean_norm() -> None:
    xs = [rand(4, 5, seed=s) for s in (11, 12, 13)]
    base = rand(4, 5, seed=14)
    w = [0.2, 0.5, 0.3]
    for with_base in (False, True):
        vs = [np64(x).reshape(-1) - (np64(base).reshape(-1) if with_base else 0) for x in xs]
        direction = unit(sum(wi * unit(v) for wi, v in zip(w, vs, strict=True)))
        want = direction * sum(wi * np.linalg.norm(v) for wi, v in zip(w, vs, strict=True))
        want = want.reshape(4, 5) + (np64(base) if with_base else 0)
        got = merge("multislerp", xs, base if with_base else None, weight=[2.0, 5.0, 3.0])  # normalized to w
        np.testing.assert_allclose(got, want, atol=1e-5)
    raw = merge("multislerp", xs, weight=[2.0, 5.0, 3.0], normalize_weights=False)
    vs = [np64(x).reshape(-1) for x in xs]
    scale = sum(wi * np.linalg.norm(v) for wi, v in zip([2.0, 5.0, 3.0], vs, strict=True))  # not divided by 10
    direction = unit(sum(wi * unit(v) for wi, v in zip(w, vs, strict=True)))
    np.testing.assert_allclose(raw, (direction * scale).reshape(4, 5), rtol=1e-5, atol=1e-5)


def test_multislerp_of_one_model_is_that_model_and_antipodal_pairs_fall_back_to_linear() -> None:
    x, base = rand(3, 3, seed=15), rand(3, 3, seed=16)
    np.testing.assert_array_equal(merge("multislerp", [x], base, weight=[1.0]), np64(x))
    base, x = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.25, 0.5, -0.75])  # exact sums: task vectors x, −2x
    got = merge("multislerp", [base + x, base - 2 * x], base, weight=[1.0, 1.0])  # the directions cancel exactly
    np.testing.assert_allclose(got, np64(base) + 0.5 * np64(x) - 0.5 * 2 * np64(x), atol=1e-6)


# --- karcher -----------------------------------------------------------------------------------------------------


def plane(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal directions in R^6 (float64 Gram-Schmidt)."""
    g = np.random.default_rng(seed)
    u = unit(g.standard_normal(6))
    v = g.standard_normal(6)
    return u, unit(v - (v @ u) * u)


def t32(v: np.ndarray) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32).view(2, 3)


def test_karcher_of_two_vectors_is_the_geodesic_midpoint_at_the_mean_norm() -> None:
    u, v = plane(1)
    d = math.cos(1.0) * u + math.sin(1.0) * v  # 1 rad from u
    got = merge("karcher", [t32(2.0 * u), t32(5.0 * d)]).reshape(-1)
    np.testing.assert_allclose(got, 3.5 * (math.cos(0.5) * u + math.sin(0.5) * v), atol=1e-5)


def test_karcher_iterates_to_the_mean_angle_not_the_normalized_euclidean_mean() -> None:
    u, v = plane(2)  # directions at 0°, 0°, 90°: Karcher mean at 30° (the Euclidean mean points at atan(1/2) ≈ 26.6°)
    got = merge("karcher", [t32(1.0 * u), t32(3.0 * u), t32(2.0 * v)]).reshape(-1)
    np.testing.assert_allclose(got, 2.0 * (math.cos(math.pi / 6) * u + math.sin(math.pi / 6) * v), atol=1e-5)


def test_karcher_counts_the_base_as_one_more_input_and_equal_inputs_give_the_input() -> None:
    u, v = plane(3)
    got = merge("karcher", [t32(3.0 * u), t32(2.0 * v)], t32(1.0 * u)).reshape(-1)  # same three inputs as above
    np.testing.assert_allclose(got, 2.0 * (math.cos(math.pi / 6) * u + math.sin(math.pi / 6) * v), atol=1e-5)
    x = rand(4, 4, seed=17)
    np.testing.assert_allclose(merge("karcher", [x, x.clone(), x.clone()]), np64(x), atol=1e-6)


# --- model stock -------------------------------------------------------------------------------------------------


def test_model_stock_two_task_vectors_at_60_degrees_move_two_thirds_of_the_way() -> None:
    base = torch.tensor([0.5, -1.0, 2.0, 0.25])
    d1 = torch.tensor([2.0, 0.0, 0.0, 0.0])
    d2 = 3.0 * torch.tensor([0.5, math.sqrt(3) / 2, 0.0, 0.0])  # cos 0.5
    got = merge("model_stock", [base + d1, base + d2], base)
    t = 2 * 0.5 / (1 + 0.5)  # N·cos / (1 + (N−1)·cos)
    np.testing.assert_allclose(got, np64(base) + t * (np64(d1) + np64(d2)) / 2, atol=1e-6)


def test_model_stock_three_task_vectors_use_the_mean_pairwise_cosine() -> None:
    base = torch.tensor([1.0, 2.0, 3.0, 4.0])
    d = [2.0 * torch.tensor([1.0, 1.0, 0, 0]), torch.tensor([0, 1.0, 1.0, 0]), 0.5 * torch.tensor([1.0, 0, 1.0, 0])]
    got = merge("model_stock", [base + x for x in d], base)  # every pair at cos 0.5: t = 1.5 / 2
    np.testing.assert_allclose(got, np64(base) + 0.75 * sum(np64(x) for x in d) / 3, atol=1e-6)
    d = [torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 2.0, 0, 0]), torch.tensor([3.0, 3.0, 0, 0])]
    cos = (0 + 2 / math.sqrt(2)) / 3  # pairs: 90°, 45°, 45°
    got = merge("model_stock", [base + x for x in d], base)
    t = 3 * cos / (1 + 2 * cos)
    np.testing.assert_allclose(got, np64(base) + t * sum(np64(x) for x in d) / 3, atol=1e-6)


def test_model_stock_filter_wise_takes_a_ratio_per_row_and_needs_two_models() -> None:
    base = rand(3, 4, seed=18)
    d1 = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 2.0, 0, 0]])
    d2 = torch.tensor([[1.0, math.sqrt(3), 0, 0], [0, 0, 2.0, 0], [3.0, 6.0, 0, 0]])  # cos 0.5, 0, 1 by row
    got = merge("model_stock", [base + d1, base + d2], base, filter_wise=True)
    mean = (np64(d1) + np64(d2)) / 2
    for row, t in zip(range(3), (2 / 3, 0.0, 1.0), strict=True):
        np.testing.assert_allclose(got[row], np64(base)[row] + t * mean[row], atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        stock.model_stock(base, [base + d1])


# --- nearswap and arcee_fusion -----------------------------------------------------------------------------------


def test_nearswap_weight_is_t_over_the_distance_clamped_to_one() -> None:
    a = torch.tensor([0.0, 1.0, 2.0, 5.0, 3.0])
    b = torch.tensor([4.0, -1.0, 2.3, 5.0, 10.0])  # |a − b| = 4, 2, 0.3, 0, 7
    got = merge("nearswap", [b], a, t=1.0)
    np.testing.assert_allclose(got, [1.0, 0.0, 2.3, 5.0, 4.0], atol=1e-6)  # w = 1/4, 1/2, 1, 1, 1/7
    assert torch.equal(swap.nearswap(a, b, 1.0)[2], b[2])  # closer than t: exactly the other value
    assert torch.equal(swap.nearswap(a, b, 0.0), a)


def test_arcee_fusion_moves_entries_whose_kl_weighted_importance_reaches_median_plus_1_5_iqr() -> None:
    base = [
        [0.5, 0.7, 0.6, 1.0, 0.1],
        [1.0, 0.9, -0.2, -0.2, -0.1],
        [1.0, -0.9, -1.0, -0.8, -0.4],
        [0.3, 1.0, -0.3, -0.7, -0.6],
    ]
    delta = [
        [-0.2, 1.75, 0.1, -0.5, 0.1],
        [0.1, 0.0, -0.15, 0.8, -0.4],
        [-0.1, -0.05, -0.2, 0.0, -0.35],
        [0.75, 0.15, 1.45, -0.35, 0.3],
    ]
    other = [[b + d for b, d in zip(rb, rd, strict=True)] for rb, rd in zip(base, delta, strict=True)]

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(x - max(row)) for x in row]
        return [x / sum(e) + 1e-8 for x in e]

    importance = []
    for rb, ro in zip(base, other, strict=True):
        p, q = softmax(ro), softmax(rb)
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))  # KL(other ‖ base) of this row
        importance.append([abs(o - b) * kl for o, b in zip(ro, rb, strict=True)])
    flat = sorted(x for row in importance for x in row)
    median, q1, q3 = flat[9], flat[4], flat[14]  # lower index: int(q · 19) for q = 0.5, 0.25, 0.75

    def moved_at(threshold: float) -> list[list[bool]]:
        assert min(abs(x - threshold) for x in flat) > 0.05 * threshold  # no entry near the line
        return [[x >= threshold for x in row] for row in importance]

    moved = moved_at(median + 1.5 * (q3 - q1))
    assert sum(map(sum, moved)) == 4
    want = [[o if m else b for b, o, m in zip(*rows, strict=True)] for rows in zip(base, other, moved, strict=True)]
    got = merge("arcee_fusion", [torch.tensor(other)], torch.tensor(base))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the fixture tells the rule apart: 1 or 2 IQRs, or interpolated quantiles, would move other entries
    interpolated = np.quantile(np.array(flat), [0.5, 0.25, 0.75])
    for threshold in (
        median + 1.0 * (q3 - q1),
        median + 2.0 * (q3 - q1),
        interpolated[0] + 1.5 * (interpolated[2] - interpolated[1]),
    ):
        assert moved_at(threshold) != moved


# --- passthrough -------------------------------------------------------------------------------------------------


def test_passthrough_returns_the_tensor_in_float32_times_its_scale() -> None:
    x = rand(3, 5, seed=19).bfloat16()
    scaled = merge("passthrough", [x], scale=[0.5])
    np.testing.assert_array_equal(scaled, np64(x.float()) * 0.5)
    plain = get_method("passthrough").fn(TensorJob("w", None, [x], {"scale": [None]}, {}))
    assert plain.dtype == torch.float32 and torch.equal(plain, x.float())
    assert torch.equal(weighted.scaled(x, 2.0), x.float() * 2.0)


def test_geometric_defaults_match_mergekit() -> None:
    assert default_params("nuslerp") == {"nuslerp_row_wise": False, "nuslerp_flatten": True}
    assert default_params("multislerp") == {"normalize_weights": True, "eps": 1e-8}
    assert default_params("karcher") == {"max_iter": 10, "tol": 1e-5}
    assert default_params("model_stock") == {"filter_wise": False}
    assert default_params("ramplus_tl") == {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}
    assert default_params("sce") == {"select_topk": 1.0, "int8_mask": False}
