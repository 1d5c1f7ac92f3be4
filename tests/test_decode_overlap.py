"""--parallel-models: the small models on a second thread give exactly the sequential loop's output."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from decode_fixtures import prompts
from typer.testing import CliRunner

from modelops.decode import CoDecoder, FusionRule, SamplingConfig
from modelops.decode.overlap import Overlap


def both(decode_family, rule: FusionRule, experts: tuple[str, ...] = ("expert",)) -> tuple[CoDecoder, CoDecoder]:
    fam = {k: str(v) for k, v in decode_family.items()}
    seq = CoDecoder.load(fam["large"], fam["base"], [fam[e] for e in experts], rule)
    par = CoDecoder(seq.members, rule, parallel=True)  # the same loaded models
    assert seq.overlap is None and par.overlap is not None
    return seq, par


@pytest.mark.parametrize(
    ("rule", "experts", "sampling"),
    [
        (FusionRule("eft"), ("expert",), SamplingConfig(max_new_tokens=14, stop=["w5"])),
        (FusionRule("dlf"), ("expert", "expert2"), SamplingConfig(max_new_tokens=14, stop=["w5"])),
        (FusionRule("eft"), ("expert",), SamplingConfig(max_new_tokens=14, temperature=1.0, top_k=20, seed=3)),
        (FusionRule("eft", speculative=3), ("expert",), SamplingConfig(max_new_tokens=14)),
    ],
    ids=["eft-greedy", "dlf-two-experts", "eft-sampled", "speculative"],
)
def test_parallel_models_decode_the_same_tokens(decode_family, rule, experts, sampling):
    texts = prompts(7, seed=4)
    seq, par = both(decode_family, rule, experts)
    a = seq.generate(texts, sampling, batch_size=4)
    b = par.generate(texts, sampling, batch_size=4)
    if sampling.stop:  # rows ended early and prompts joined running batches, on the worker thread too
        assert seq.last_stats["admissions"] > 0 and par.last_stats["admissions"] > 0
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.weights for g in a] == [g.weights for g in b]


def test_parallel_models_score_the_same(decode_family):
    seq, par = both(decode_family, FusionRule("eft"))
    texts, conts = prompts(5, seed=8), ["w5 w6 w7", "w1", "w9 w9", "w2 w3", "w4 w8 w1 w2"]
    assert seq.score(texts, conts) == par.score(texts, conts)


class CountingOverlap(Overlap):
    """An Overlap that counts the thunks it hands to its worker thread."""

    def __init__(self) -> None:
        super().__init__()
        self.on_worker = 0

    def run(self, calls):
        self.on_worker += max(0, len(calls) - 1)
        return super().run(calls)


@pytest.mark.parametrize(
    "rule", [FusionRule("cbs", beam_width=2, successors=2, chunk_len=3), FusionRule("bon", n=3)], ids=["cbs", "bon"]
)
def test_parallel_models_search_the_same(decode_family, rule):
    texts = prompts(5, seed=9)
    seq, par = both(decode_family, rule)
    par.overlap.close()
    par.overlap = CountingOverlap()
    sampling = SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=50, seed=2)
    a = seq.generate(texts, sampling, batch_size=3)
    b = par.generate(texts, sampling, batch_size=3)
    assert [(g.token_ids, g.score) for g in a] == [(g.token_ids, g.score) for g in b]
    # the expert scored on the worker: at least one chunk in each of the two batches
    assert par.overlap.on_worker >= 2


def test_the_large_model_runs_on_the_callers_thread_and_the_rest_in_order_on_one_worker():
    seen: list[tuple[int, str]] = []

    def call(i: int):
        return lambda: seen.append((i, threading.current_thread().name)) or i

    overlap = Overlap()
    try:
        assert overlap.run([call(0), call(1), call(2)]) == [0, 1, 2]
    finally:
        overlap.close()
    names = dict(seen)
    assert names[0] == threading.current_thread().name
    assert names[1] == names[2] != names[0]
    assert [i for i, _ in seen if i] == [1, 2]


def test_a_failure_on_the_worker_reaches_the_caller():
    def boom():
        raise ValueError("small model failed")

    overlap = Overlap()
    try:
        with pytest.raises(ValueError, match="small model failed"):
            overlap.run([lambda: 1, boom])
    finally:
        overlap.close()


def test_closing_the_decoder_stops_its_worker_thread_and_it_decodes_on(decode_family):
    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("modelops-small-models")}

    seq, par = both(decode_family, FusionRule("eft"))
    texts, sampling = prompts(3, seed=5), SamplingConfig(max_new_tokens=6)
    before = workers()  # other tests' decoders may still hold theirs
    with par:
        during = par.generate(texts, sampling)
        assert workers() - before  # this decoder's worker exists while it is open
    assert par.overlap is None and not workers() - before
    after = par.generate(texts, sampling)  # sequential now, same tokens
    expected = [g.token_ids for g in seq.generate(texts, sampling)]
    assert [g.token_ids for g in during] == [g.token_ids for g in after] == expected
    par.close()  # closing twice is harmless


def test_eval_parallel_models_gives_the_sequential_generations(decode_family, tmp_path: Path):
    """`modelops eval --parallel-models`: fused systems (EFT, DLF) write the sequential run's generations, the
    small models step on a worker thread while rows decode, and each system's worker stops when it is done."""
    from modelops.cli.main import app
    from modelops.eval.harness import evaluate, load_recipe
    from modelops.eval.tasks import load_task

    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("modelops-small-models")}

    fam = {k: str(v) for k, v in decode_family.items()}
    task = tmp_path / "em.jsonl"
    task.write_text("".join(json.dumps({"prompt": p, "reference": "w1"}) + "\n" for p in prompts(5, seed=6)))
    recipes = []
    for rule in ("eft", "dlf"):
        recipes.append(tmp_path / f"{rule}.yaml")
        recipes[-1].write_text(f"name: {rule}\nlarge: {fam['large']}\nsmall_base: {fam['base']}\n"
                               f"experts: [{fam['expert']}]\nrule: {rule}\nweights: [0.7]\n")  # fmt: skip
    gens = {}
    for flag in ([], ["--parallel-models"]):
        out = tmp_path / f"out{len(flag)}"
        args = ["eval", "--task", str(task), *[a for r in recipes for a in ("--recipe", str(r))],
                "--max-new-tokens", "6", "--batch-size", "2", "--out", str(out), "-q", "--bootstrap", "50", *flag]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        gens[len(flag)] = {f.name: f.read_text() for f in sorted(out.glob("generations_*.jsonl"))}
    assert sorted(gens[0]) == ["generations_dlf_em.jsonl", "generations_eft_em.jsonl"]
    assert gens[0] == gens[1]

    before, seen = workers(), []
    systems = {n: s for r in recipes for n, s in load_recipe(r)[0].items()}
    evaluate(systems, [load_task(str(task))], batch_size=2, device="cpu", parallel_models=True,
             progress=lambda *_: seen.append(bool(workers() - before)))  # fmt: skip
    assert len(seen) >= 4 and all(seen)  # 2 systems, progress as rows finish, each time with a live worker
    assert not workers() - before  # closed by evaluate, not left to the garbage collector
