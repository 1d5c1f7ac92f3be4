"""DLF's weight search against the objective computed candidate by candidate with explicit float64 softmaxes."""

from __future__ import annotations

import pytest
import torch

from modelops.decode import native
from modelops.decode.dlf import DlfSearch, dlf_candidates, dlf_weights, first_near_minimum

UNIFORM = [round(0.1 * i, 1) for i in range(21)]
RAGGED = [-1.0, -0.6, -0.3, 0.0, 0.2, 0.5, 0.9, 1.4, 2.0, 3.0]


@pytest.fixture(params=["native", "eager"])
def use_native(request) -> bool:
    """Every search test runs on both implementations: the C kernel and the eager torch passes."""
    if request.param == "native":
        assert native.library() is not None, "the DLF kernel did not build: is a C compiler (cc) installed?"
    return request.param == "native"


def randn(seed: int, rows: int, vocab: int, scale: float) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def naive_objectives(zl: torch.Tensor, zb: torch.Tensor, experts: list[torch.Tensor], cands: torch.Tensor):
    """(C,) objective of every candidate for one row: softmaxes and KLs written out, in float64."""
    lp, lq = torch.log_softmax(zl.double(), -1), torch.log_softmax(zb.double(), -1)

    def kl(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
        return (la.exp() * (la - lb)).sum()

    targets = []
    for z in experts:
        lt = torch.log_softmax(z.double(), -1)
        targets.append((kl(lt, lq), kl(lq, lt)))
    out = []
    for cand in cands.double():
        fused = zl.double() + sum(c * (z.double() - zb.double()) for c, z in zip(cand, experts, strict=True))
        lpt = torch.log_softmax(fused, -1)
        k1, k2 = kl(lpt, lp), kl(lp, lpt)
        out.append(sum((k1 - a) ** 2 + (k2 - b) ** 2 for a, b in targets))
    return torch.stack(out)


def assert_matches_naive(zl, zb, experts, cands, weights, objective) -> int:
    """Every row's choice is a naive argmin (first on ties), and every evaluated objective is the naive one.

    Returns the largest number of candidates evaluated for one row."""
    most = 0
    for r in range(zl.shape[0]):
        naive = naive_objectives(zl[r], zb[r], [e[r] for e in experts], cands)
        chosen = int(torch.nonzero((cands == weights[r]).all(-1))[0])
        best = float(naive.min())
        assert float(naive[chosen]) <= best * (1 + 1e-5) + 1e-10, (r, chosen, int(naive.argmin()))
        seen = torch.isfinite(objective[r])
        most = max(most, int(seen.sum()))
        torch.testing.assert_close(objective[r][seen].double(), naive[seen], rtol=1e-3, atol=1e-6)
        # a candidate never evaluated was ruled out by a certificate: it is never strictly better
        unseen = naive[~seen]
        assert not unseen.numel() or float(unseen.min()) >= best * (1 - 1e-5) - 1e-10
    return most


@pytest.mark.parametrize("n_experts", [1, 2, 3])
@pytest.mark.parametrize("grid", [UNIFORM, RAGGED], ids=["uniform", "ragged"])
def test_search_equals_the_candidate_by_candidate_objective(n_experts, grid, use_native):
    rows, vocab = 24, 60
    for seed in range(3):
        zl, zb = randn(seed, rows, vocab, 2.0), randn(seed + 100, rows, vocab, 2.0)
        experts = [zb + randn(seed + 200 + t, rows, vocab, 0.3 + 0.4 * t) for t in range(n_experts)]
        cands = dlf_candidates(grid, n_experts)
        weights, objective = dlf_weights(zl, zb, experts, cands, use_native=use_native)
        assert weights.shape == (rows, n_experts) and objective.shape == (rows, len(cands))
        assert ((weights != 0).sum(-1) <= 1).all()  # one expert active per step
        assert_matches_naive(zl, zb, experts, cands, weights, objective)


def test_rows_whose_first_bracket_is_not_certified_are_widened(use_native):
    # the large model far from the small base: the second-order guess misses for many rows
    rows, vocab = 64, 40
    zl, zb = randn(1, rows, vocab, 4.0), randn(2, rows, vocab, 1.0)
    experts = [zb + randn(3, rows, vocab, 1.5)]
    cands = dlf_candidates(UNIFORM, 1)
    weights, objective = dlf_weights(zl, zb, experts, cands, use_native=use_native)
    most = assert_matches_naive(zl, zb, experts, cands, weights, objective)
    assert most > 3  # α = 0 and the two first points: some row needed more


def test_picks_alpha_one_when_large_equals_small_base(use_native):
    # P = Q, so α = 1 makes P̃ = Q+ exactly and both squared terms vanish
    zb = randn(0, 4, 50, 2.0)
    ze = zb + randn(1, 4, 50, 1.0)
    weights, objective = dlf_weights(zb.clone(), zb, [ze], dlf_candidates(UNIFORM, 1), use_native=use_native)
    assert torch.allclose(weights[:, 0], torch.ones(4))
    assert objective.min(-1).values.max().item() < 1e-6


@pytest.mark.parametrize("vocab, scale", [(50, 3.0), (50, 10.0), (4000, 10.0)])
def test_picks_zero_when_the_experts_are_the_small_base_and_ties_go_to_the_smallest_alpha(vocab, scale, use_native):
    # every candidate ties exactly; the computed objectives differ only by rounding (α = 0.1 won on an AMD EPYC)
    zl, zb = randn(0, 16, vocab, scale), randn(1, 16, vocab, scale)
    weights, objective = dlf_weights(
        zl, zb, [zb.clone(), zb.clone()], dlf_candidates(UNIFORM, 2), use_native=use_native
    )
    assert torch.equal(weights, torch.zeros(16, 2))
    assert objective[:, 0].abs().max().item() < 1e-9


def test_first_near_minimum_treats_rounding_as_a_tie():
    inf, nan = float("inf"), float("nan")
    objective = torch.tensor(
        [
            [3e-14, 1e-14, inf, 2e-14],  # all within 1e-10 of the minimum: the first
            [1.0, 1.0 - 2e-6, 1.0 - 5e-7, inf],  # 1e-6 relative: the second is a real minimum, the third ties it
            [inf, 0.5, 0.2, 0.2],  # the first of equal minima
            [0.3, nan, 0.1, nan],  # a NaN counts as the minimum, as in argmin
            [inf, inf, inf, inf],
        ],
        dtype=torch.float64,
    )
    assert first_near_minimum(objective).tolist() == [0, 1, 2, 1, 0]
    lib = native.library()  # the kernel's own copy of the rule
    assert lib is not None
    assert [lib.dlf_first_near_min(row.contiguous().data_ptr(), 4) for row in objective] == [0, 1, 2, 1, 0]


def test_bounds_restrict_each_expert(use_native):
    cands = dlf_candidates(UNIFORM, 2, bounds=[(0.0, 0.5), (1.0, 2.0)])
    first, second = cands[:, 0], cands[:, 1]
    assert first.max().item() == pytest.approx(0.5) and second[second > 0].min().item() == pytest.approx(1.0)
    assert ((first > 0) & (second > 0)).sum() == 0  # one expert active per candidate
    assert cands[0].abs().sum() == 0  # α = 0 first
    zl, zb = randn(5, 16, 50, 2.0), randn(6, 16, 50, 2.0)
    experts = [zb + randn(7, 16, 50, 0.5), zb + randn(8, 16, 50, 0.9)]
    weights, objective = dlf_weights(zl, zb, experts, cands, use_native=use_native)
    assert weights[:, 0].max() <= 0.5 and ((weights[:, 1] == 0) | (weights[:, 1] >= 1.0)).all()
    assert_matches_naive(zl, zb, experts, cands, weights, objective)


@pytest.mark.parametrize("offset", [0.0, 300.0, -300.0])
def test_peaked_rows_and_huge_logits_keep_the_exact_answer(offset, use_native):
    # scale 40: most tokens are e^-100 below the best one (tilted sums underflow or overflow without care);
    # an offset of ±300 on the raw logits would overflow or underflow e^{z} itself
    zl, zb = randn(0, 6, 50, 40.0) + offset, randn(1, 6, 50, 40.0)
    experts = [zb + randn(2, 6, 50, 1.0)]
    cands = dlf_candidates(RAGGED, 1)
    weights, objective = dlf_weights(zl, zb, experts, cands, use_native=use_native)
    assert torch.isfinite(weights).all()
    assert_matches_naive(zl - offset, zb, experts, cands, weights, objective)


def test_padding_columns_of_the_large_model_and_infinite_small_logits(use_native):
    zl, zb = randn(0, 4, 50, 2.0), randn(1, 4, 50, 2.0)
    ze = zb + randn(2, 4, 50, 0.5)
    zl[:, -3:] = float("-inf")  # not tokens of the large model (aligned_components pads with −inf)
    search = DlfSearch(dlf_candidates(UNIFORM, 1), use_native=use_native)
    weights, _, fused = search(zl, zb, [ze], fuse=True)
    ref_w, ref_obj = dlf_weights(
        zl[:, :-3], zb[:, :-3] + 0.0, [ze[:, :-3]], dlf_candidates(UNIFORM, 1), use_native=use_native
    )
    # the large model puts no mass on the padding, so those columns change nothing but the small normalisers
    assert torch.isfinite(fused[:, :-3]).all() and torch.isneginf(fused[:, -3:]).all()
    broken_base, broken_expert = zb.clone(), ze.clone()
    broken_base[:, 0] = float("-inf")
    broken_expert[:, 0] = float("-inf")  # −inf − (−inf) = NaN: the delta there counts as 0
    weights, objective, fused = search(zl, broken_base, [broken_expert], fuse=True)
    assert torch.isfinite(weights).all() and not torch.isnan(fused).any()
    assert ref_w.shape == weights.shape and ref_obj.shape == objective.shape


def test_fused_logits_are_the_rule_with_each_rows_weight(use_native):
    zl, zb = randn(0, 5, 50, 2.0), randn(1, 5, 50, 2.0)
    experts = [zb + randn(2, 5, 50, 0.5), zb + randn(3, 5, 50, 0.8)]
    weights, _, fused = DlfSearch(dlf_candidates(UNIFORM, 2), use_native=use_native)(zl, zb, experts, fuse=True)
    expected = zl + sum(weights[:, t : t + 1] * (experts[t] - zb) for t in range(2))
    torch.testing.assert_close(torch.log_softmax(fused, -1), torch.log_softmax(expected, -1))


def test_eager_blocks_and_reused_buffers_give_the_same_answer():
    zl, zb = randn(0, 7, 300, 2.0), randn(1, 7, 300, 2.0)
    experts = [zb + randn(2, 7, 300, 0.5)]
    cands = dlf_candidates(RAGGED, 1)
    one_block, obj_one, _ = DlfSearch(cands, block_rows=7, use_native=False)(zl, zb, experts)
    reused = DlfSearch(cands, block_rows=3, use_native=False)  # blocks of 3, 3 and 1; the same buffers for every call
    for rows in (slice(0, 7), slice(2, 4), slice(0, 7)):
        weights, objective, _ = reused(zl[rows], zb[rows], [e[rows] for e in experts])
        assert torch.equal(weights, one_block[rows])
        torch.testing.assert_close(objective, obj_one[rows])


def test_a_tilt_whose_every_term_underflows_is_recomputed_with_its_own_shift(use_native):
    # P sits on token 0, which the expert pushes down by 60 nats: e^{z_L + α d} is below float32's range for
    # every token at α = 2, so that point must be re-evaluated with the row's own maximum as the shift
    vocab = 30
    zl = torch.full((1, vocab), -110.0)
    zl[0, 0] = 0.0
    zb = torch.zeros(1, vocab)
    ze = zb.clone()
    ze[0, 0] = -60.0
    ze[0, 1:] = -torch.linspace(0.0, 5.0, vocab - 1)
    cands = dlf_candidates([0.0, 1.0, 2.0], 1)
    weights, objective = dlf_weights(zl, zb, [ze], cands, use_native=use_native)
    assert torch.isfinite(objective).any()
    assert_matches_naive(zl, zb, [ze], cands, weights, objective)


def test_eager_search_takes_many_rows_in_chunks_with_the_same_answer(monkeypatch):
    import modelops.decode.dlf as dlf

    zl, zb = randn(0, 9, 40, 2.0), randn(1, 9, 40, 2.0)
    experts = [zb + randn(2, 9, 40, 0.5)]
    cands = dlf_candidates(UNIFORM, 1)
    whole = DlfSearch(cands, use_native=False)(zl, zb, experts, fuse=True)
    monkeypatch.setattr(dlf, "CHUNK_ELEMS", 4 * 3 * 40)  # 4 rows per turn: 4, 4, 1
    chunked = DlfSearch(cands, use_native=False)(zl, zb, experts, fuse=True)
    assert torch.equal(whole[0], chunked[0])
    torch.testing.assert_close(whole[1], chunked[1])
    torch.testing.assert_close(whole[2], chunked[2])


def portable_build(tmp_path, monkeypatch) -> None:
    """Load the kernel built without -march=native (what a compiler or CPU without it gets)."""
    monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "TUNED", [])
    native.library.cache_clear()
    assert native.library() is not None


@pytest.mark.parametrize("build", ["tuned", "portable"])
@pytest.mark.parametrize("n_experts", [1, 3])
def test_kernel_and_eager_passes_make_the_same_choices(n_experts, build, tmp_path, monkeypatch):
    if build == "portable":
        portable_build(tmp_path, monkeypatch)
    try:
        check_kernel_against_eager(n_experts)
    finally:
        native.library.cache_clear()  # the next test loads the tuned build again (the patches end with this test)


def check_kernel_against_eager(n_experts: int) -> None:
    # decode-sized rows (V = 4000), a mix of nearly flat and peaked rows
    rows, vocab = 12, 4000
    scale = torch.linspace(0.5, 6.0, rows)[:, None]
    zl, zb = randn(0, rows, vocab, 1.0) * scale, randn(1, rows, vocab, 1.0) * scale
    experts = [zb + randn(2 + t, rows, vocab, 0.4 + 0.3 * t) for t in range(n_experts)]
    cands = dlf_candidates(RAGGED, n_experts)
    w_native, obj_native, fused_native = DlfSearch(cands, use_native=True)(zl, zb, experts, fuse=True)
    w_eager, obj_eager, fused_eager = DlfSearch(cands, use_native=False)(zl, zb, experts, fuse=True)
    assert torch.equal(w_native, w_eager)
    assert torch.equal(torch.isfinite(obj_native), torch.isfinite(obj_eager))  # the same points evaluated
    seen = torch.isfinite(obj_eager)
    torch.testing.assert_close(obj_native[seen], obj_eager[seen], rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(fused_native, fused_eager, rtol=1e-6, atol=1e-6)  # FMA or not: last-bit rounding


def test_logits_the_kernel_refuses_go_to_the_eager_passes():
    zl, zb = randn(0, 3, 50, 2.0), randn(1, 3, 50, 2.0)
    ze = zb + randn(2, 3, 50, 0.5)
    zl[1, 7] = float("nan")
    search = DlfSearch(dlf_candidates(UNIFORM, 1), use_native=True)
    assert search.native and native.search([zl, zb, ze], search.plan) is None  # a NaN: refused
    got = search(zl, zb, [ze])
    eager = DlfSearch(dlf_candidates(UNIFORM, 1), use_native=False)(zl, zb, [ze])
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1].isnan(), eager[1].isnan())


def test_kernel_is_built_once_into_the_cache_and_a_failed_build_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.library() is not None
        built = list((tmp_path / "native").glob("dlf_kernel_*.so"))
        assert len(built) == 1 and not list((tmp_path / "native").glob("tmp*"))  # no partial file left
        mtime = built[0].stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library() is not None and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt
        monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path / "other"))
        monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
        native.library.cache_clear()
        assert native.library() is None and "eager torch passes" in caplog.text
        zl, zb = randn(0, 2, 30, 2.0), randn(1, 2, 30, 2.0)
        assert not native.usable([zl, zb, zb])
        monkeypatch.delenv("MODELOPS_NATIVE", raising=False)
        assert not DlfSearch(dlf_candidates(UNIFORM, 1)).native  # opt-in
        monkeypatch.setenv("MODELOPS_NATIVE", "1")
        assert DlfSearch(dlf_candidates(UNIFORM, 1)).native
        monkeypatch.setenv("MODELOPS_NATIVE", "0")
        assert not DlfSearch(dlf_candidates(UNIFORM, 1)).native
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


# -- every expert's weight searched together (--dlf-mode joint) -------------------------------------------------


@pytest.mark.parametrize("n_experts", [2, 3])
def test_joint_search_equals_the_candidate_by_candidate_objective(n_experts):
    from modelops.decode.dlf_joint import JointDlfSearch, joint_candidates

    rows, vocab, grid = 12, 60, [0.0, 0.5, 1.0, 1.5]
    zl, zb = randn(7, rows, vocab, 2.0), randn(107, rows, vocab, 2.0)
    experts = [zb + randn(207 + t, rows, vocab, 0.3 + 0.4 * t) for t in range(n_experts)]
    cands = joint_candidates(grid, n_experts)
    assert len(cands) == len(grid) ** n_experts and not cands[0].any()  # the product; α = 0 first
    weights, objective, fused = JointDlfSearch(cands)(zl, zb, experts, fuse=True)
    assert torch.isfinite(objective).all()  # every candidate evaluated
    assert_matches_naive(zl, zb, experts, cands, weights, objective)
    assert int((weights != 0).sum(-1).max()) > 1  # some rows use several experts at once
    expected = zl + sum(weights[:, t : t + 1] * (experts[t] - zb) for t in range(n_experts))
    torch.testing.assert_close(fused, expected)


def test_joint_search_with_one_expert_is_the_default_search(use_native):
    from modelops.decode.dlf_joint import JointDlfSearch, joint_candidates

    zl, zb = randn(3, 16, 50, 2.0), randn(103, 16, 50, 2.0)
    experts = [zb + randn(203, 16, 50, 0.5)]
    one = DlfSearch(dlf_candidates(UNIFORM, 1), use_native=use_native)(zl, zb, experts)[0]
    joint = JointDlfSearch(joint_candidates(UNIFORM, 1))(zl, zb, experts)[0]
    assert torch.equal(one, joint)


def test_joint_candidates_keep_each_experts_bounds_and_prefer_the_smallest_total_weight():
    from modelops.decode.dlf_joint import joint_candidates

    cands = joint_candidates([0.0, 0.5, 1.0], 2, bounds=[(0.0, 0.5), (0.0, 1.0)]).tolist()
    assert cands == [[0, 0], [0, 0.5], [0.5, 0], [0, 1], [0.5, 0.5], [0.5, 1]]
