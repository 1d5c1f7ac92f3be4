"""The merge math against independent computations on hand-made tensors (float64 loops, closed forms)."""

from __future__ import annotations

import math

import pytest
import torch

from modelops.merge import methods
from modelops.merge.methods import get_method, sparsify
from modelops.merge.registry import TensorJob


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_linear_is_the_weighted_average() -> None:
    a, b, c = rand(5, 4, seed=1), rand(5, 4, seed=2), rand(5, 4, seed=3)
    got = methods.linear([a, b, c], [0.5, 0.3, 0.2])
    assert torch.allclose(got, 0.5 * a + 0.3 * b + 0.2 * c, atol=1e-6)
    unnormalised = methods.linear([a, b], [2.0, 2.0], normalize=False)
    assert torch.allclose(unnormalised, 2 * a + 2 * b, atol=1e-6)
    assert torch.allclose(methods.linear([a, b], [2.0, 2.0]), (a + b) / 2, atol=1e-6)


def test_task_arithmetic_adds_scaled_task_vectors() -> None:
    base, a, b = rand(6, 3, seed=1), rand(6, 3, seed=2), rand(6, 3, seed=3)
    got = methods.task_arithmetic(base, [a, b], [0.7, 0.3], lambda_=0.5)
    want = base.double() + 0.5 * (0.7 * (a.double() - base.double()) + 0.3 * (b.double() - base.double()))
    assert torch.allclose(got.double(), want, atol=1e-6)


@pytest.mark.parametrize("alpha", [-0.5, 0.3, 2.5])
def test_expo_equals_task_arithmetic_with_weight_one_plus_alpha(alpha: float) -> None:
    sft, dpo = rand(8, 8, seed=1), rand(8, 8, seed=2)
    via_expo = methods.expo(sft, dpo, alpha)
    via_ta = methods.task_arithmetic(sft, [dpo], [1.0 + alpha])
    assert torch.allclose(via_expo, via_ta, atol=1e-6)
    assert torch.allclose(via_expo.double(), dpo.double() + alpha * (dpo.double() - sft.double()), atol=1e-6)


def test_methods_accept_bf16_and_compute_in_float32() -> None:
    sft, dpo = rand(64, 64, seed=1).bfloat16(), rand(64, 64, seed=2).bfloat16()
    got = methods.expo(sft, dpo, 0.3)
    assert got.dtype == torch.float32
    assert torch.equal(got, methods.expo(sft.float(), dpo.float(), 0.3))
    assert sft.dtype == torch.bfloat16  # inputs untouched


def test_inputs_are_never_modified() -> None:
    base, a, b = rand(10, 10, seed=1), rand(10, 10, seed=2), rand(10, 10, seed=3)
    copies = [t.clone() for t in (base, a, b)]
    methods.ties(base, [a, b], [1.0, 1.0], [0.5, 0.5])
    job = TensorJob("x", base, [a, b], {"weight": [1.0, 1.0], "density": [0.5, 0.5]}, {})
    for name in ("dare_ties", "della", "sce", "model_stock", "karcher", "ram"):
        method = get_method(name)
        params = {p.name: p.default for p in method.params if not p.per_model}
        method.fn(TensorJob("x", base, [a, b], job.per_model | {"epsilon": [0.1, 0.1]}, params))
    methods.slerp(a, b, 0.3)
    for t, c in zip((base, a, b), copies, strict=True):
        assert torch.equal(t, c)


def test_magnitude_prune_keeps_exactly_the_largest() -> None:
    delta = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 0.0, 4.0, -1.0])
    got = methods.magnitude(delta, 0.375)  # keep 3 of 8
    assert torch.equal(got, torch.tensor([0.0, -5.0, 0.0, 2.0, 0.0, 0.0, 4.0, 0.0]))
    assert torch.equal(methods.magnitude(delta, 0.49), got)  # int(0.49 · 8) = 3 kept, as mergekit counts
    assert torch.equal(methods.magnitude(delta, 1.0), delta)
    assert torch.count_nonzero(methods.magnitude(delta, 0.0)) == 0


def _ties_reference(base, tensors, weights, densities, lam):
    """TIES written entry by entry in float64, straight from the paper's three steps."""
    flat_base = base.double().reshape(-1).tolist()
    deltas = []
    for t, d in zip(tensors, densities, strict=True):
        delta = [x - y for x, y in zip(t.double().reshape(-1).tolist(), flat_base, strict=True)]
        k = int(d * len(delta))  # mergekit's count: int(density · n)
        keep = set(sorted(range(len(delta)), key=lambda i: -abs(delta[i]))[:k])
        deltas.append([v if i in keep else 0.0 for i, v in enumerate(delta)])
    out = []
    for j in range(len(flat_base)):
        vals = [w * dl[j] for w, dl in zip(weights, deltas, strict=True)]
        total = sum(vals)
        sign = 1 if total >= 0 else -1  # mergekit elects + on an exact tie
        agree = [(v, w) for v, w in zip(vals, weights, strict=True) if v != 0 and ((v > 0) - (v < 0)) == sign]
        merged = sum(v for v, _ in agree) / sum(w for _, w in agree) if agree else 0.0
        out.append(flat_base[j] + lam * merged)
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def test_ties_matches_an_entrywise_reference() -> None:
    base = rand(7, 9, seed=1)
    tensors = [base + rand(7, 9, seed=s) for s in (2, 3, 4)]
    weights, densities = [1.0, 0.5, 0.8], [0.5, 0.7, 0.3]
    got = methods.ties(base, tensors, weights, densities, lambda_=0.9)
    want = _ties_reference(base, tensors, weights, densities, 0.9)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_dare_drop_rate_l1_rescale_and_seed() -> None:
    delta = rand(200_000, seed=5)
    kept = methods.bernoulli(delta, 0.3, torch.Generator().manual_seed(0))
    survivors = kept != 0
    frac = survivors.float().mean().item()
    assert abs(frac - 0.3) < 0.01  # ~6 standard errors
    # mergekit's rescale: the survivors are scaled by one factor so the L1 norm of the task vector is unchanged
    scale = delta.abs().sum() / delta[survivors].abs().sum()
    assert torch.allclose(kept[survivors], delta[survivors] * scale, rtol=1e-5)
    assert math.isclose(kept.abs().sum().item(), delta.abs().sum().item(), rel_tol=1e-4)
    again = methods.bernoulli(delta, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)
    assert torch.equal(
        sparsify.bernoulli(delta, 0.3, torch.Generator().manual_seed(0), rescale=False), delta * survivors
    )


def test_dare_seed_depends_on_tensor_name_not_order() -> None:
    base = torch.zeros(50)
    job = lambda name: TensorJob(  # noqa: E731
        name, base, [torch.ones(50), torch.ones(50)], {"weight": [1.0, 1.0], "density": [0.5, 0.5]},
        {"lambda": 1.0, "rescale": True, "normalize": False}, seed=7,
    )  # fmt: skip
    method = get_method("dare_linear")
    assert torch.equal(method.fn(job("a.weight")), method.fn(job("a.weight")))
    assert not torch.equal(method.fn(job("a.weight")), method.fn(job("b.weight")))


def test_slerp_closed_forms() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = methods.slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    third = methods.slerp(a, b, 1 / 3)  # 30 degrees along the quarter circle
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)
    assert torch.allclose(methods.slerp(a, b, 0.0), a) and torch.allclose(methods.slerp(a, b, 1.0), b)
    # nearly parallel: plain linear interpolation
    c = torch.tensor([1.0, 1e-5])
    assert torch.allclose(methods.slerp(a, c, 0.25), 0.75 * a + 0.25 * c)


def test_bad_arguments_raise_value_errors_naming_the_value() -> None:
    with pytest.raises(ValueError, match="3 values for 2 models"):
        methods.task_arithmetic(torch.zeros(2), [torch.zeros(2)] * 2, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="density"):
        methods.magnitude(torch.zeros(2), 1.5)
    with pytest.raises(ValueError, match="t must be"):
        methods.slerp(torch.ones(2), torch.ones(2), 1.5)
