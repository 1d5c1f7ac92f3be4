"""The evaluation harness, checked against plain model forwards, an independent bootstrap bound and the files."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from eval_fixtures import (
    causal_lm,
    greedy_text,
    make_tokenizer,
    reward_model,
    rm_score,
    save,
    summed_logprob,
    write_zoo,
)
from typer.testing import CliRunner

from modelops.errors import ModelopsError, RecipeError
from modelops.eval.harness import SystemSpec, evaluate, evaluate_model_folder, load_recipe, model_system
from modelops.eval.metrics import bootstrap_ci, choice_prediction, normalize, summarize
from modelops.eval.tasks import TaskSpec, find_zoo, load_task, parse_metric

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"w{i} w{i + 7} w{(3 * i) % 50}" for i in range(10)]


@pytest.fixture(scope="session")
def fam(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evalfam")
    tok = make_tokenizer()
    lm, lm2 = causal_lm(0), causal_lm(1)
    rm = reward_model(2)
    return {
        "tok": tok, "lm": lm, "rm": rm, "root": root,
        "model": save(lm, root / "model", tok), "model2": save(lm2, root / "model2", tok),
        "rm_path": save(rm, root / "rm", tok),
    }  # fmt: skip


@pytest.fixture(scope="session")
def greedy(fam: dict) -> dict[str, tuple[str, bool]]:
    return {p: greedy_text(fam["lm"], fam["tok"], p, 4) for p in PROMPTS}


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one(model: Path, task: TaskSpec, **kw) -> object:
    from modelops.decode.sampling import SamplingConfig

    system = SystemSpec("m", large=str(model))
    return evaluate({"m": system}, [task], SamplingConfig(max_new_tokens=4), batch_size=3, device="cpu", **kw)


# ---- metrics -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [(" Paris. ", "paris"), ("New   York\n", "new york"), ("42!?", "42"), ("a.b", "a.b"), ("", ""), ("Yes ,", "yes")],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_bootstrap_ci_deterministic_and_close_to_the_normal_interval() -> None:
    values = [1.0] * 200 + [0.0] * 200
    lo, hi = bootstrap_ci(values, resamples=1000, seed=3)
    assert (lo, hi) == bootstrap_ci(values, resamples=1000, seed=3)
    assert lo < 0.5 < hi
    half = 1.96 * math.sqrt(0.25 / 400)  # the normal approximation, computed independently
    assert abs((hi - lo) / 2 - half) < 0.008
    s = summarize([0.2, 1.5, -0.3, 0.9, 2.0], resamples=500, seed=1)
    assert s.low <= s.mean <= s.high and s.n == 5 and s.mean == pytest.approx(0.86)
    assert summarize([1.0, 1.0]).low == summarize([1.0, 1.0]).high == 1.0


def test_choice_prediction_and_metric_parsing(tmp_path: Path) -> None:
    assert choice_prediction([[-1.0, -2.0], [-0.5], [-3.0]]) == 1
    assert choice_prediction([[-1.0], [-1.0]]) == 0
    assert parse_metric("reward:a.b:c") == {"metric": "reward", "reward": "a.b:c"}
    assert parse_metric("rm:" + str(tmp_path))["metric"] == "rm"
    for bad in ("exactly", "reward:nofn", "rm:/no/such/folder", "choice:x"):
        with pytest.raises(RecipeError):
            parse_metric(bad)


# ---- the four metrics on a real tiny model, against plain forwards --------------------------------------------------
def test_exact_match_with_normaliser(fam: dict, greedy: dict, tmp_path: Path) -> None:
    rows = []
    for i, p in enumerate(PROMPTS):
        text, _ = greedy[p]
        ref = text.upper() + " ." if i % 2 == 0 else "w91 w90"  # right (after normalising) or wrong
        rows.append({"prompt": p, "reference": ref})
    task = load_task(str(jsonl(tmp_path / "em.jsonl", rows)))
    assert task.metric == "exact" and task.normalize
    report = one(fam["model"], task)
    res = report.results[0]
    assert [r["text"] for r in res.records] == [greedy[p][0] for p in PROMPTS]
    expected = [float(i % 2 == 0 or greedy[p][0] == "w91 w90") for i, p in enumerate(PROMPTS)]
    assert [r["value"] for r in res.records] == expected
    assert res.mean == pytest.approx(sum(expected) / len(expected))
    from modelops.decode.sampling import SamplingConfig

    mean = evaluate_model_folder(fam["model"], str(tmp_path / "em.jsonl"), sampling=SamplingConfig(max_new_tokens=4))
    assert mean == res.mean


def test_choice_accuracy_against_summed_logprobs(fam: dict, tmp_path: Path) -> None:
    choices = [["w10 w11", "w12", "w13 w14 w15"], ["w20", "w21"], ["w30 w31", "w32 w33", "w34"]] * 2
    rows, sums = [], []
    for i, (p, ch) in enumerate(zip(PROMPTS[:6], choices, strict=True)):
        s = [summed_logprob(fam["lm"], fam["tok"], p, c) for c in ch]
        best = max(range(len(ch)), key=lambda k: s[k])
        worst = min(range(len(ch)), key=lambda k: s[k])
        sums.append(s)  # first three rows name the argmax (by index or by text), the rest the argmin
        rows.append({"prompt": p, "choices": ch, "answer": (best if i % 2 else ch[best]) if i < 3 else worst})
    task = load_task(str(jsonl(tmp_path / "mc.jsonl", rows)))
    assert task.metric == "choice"
    res = one(fam["model"], task).results[0]
    assert [r["value"] for r in res.records] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    for rec, s in zip(res.records, sums, strict=True):
        assert rec["logprob_sums"] == pytest.approx(s, abs=1e-4)


def test_reward_function_and_fluency(fam: dict, greedy: dict, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "rw.jsonl", [{"prompt": p} for p in PROMPTS])
    with pytest.raises(RecipeError, match="cannot tell the metric"):
        load_task(str(path))
    task = load_task(str(path), "reward:eval_fixtures:word_count", fluency="eval_fixtures:short")
    res = one(fam["model"], task).results[0]
    words = [float(len(greedy[p][0].split())) for p in PROMPTS]
    assert [r["value"] for r in res.records] == words
    assert res.fluency is not None
    assert res.fluency.mean == pytest.approx(sum(w <= 2 for w in words) / len(words))
    # the zoo's convention: an unfinished generation reaches the reward with " ..." appended (zoo/scores.py)
    task = load_task(str(path), "reward:eval_fixtures:ends_with_dots")
    task.unfinished_suffix = " ..."
    res = one(fam["model"], task).results[0]
    assert [r["value"] for r in res.records] == [0.0 if greedy[p][1] else 1.0 for p in PROMPTS]
    with pytest.raises(RecipeError, match="no function"):
        load_task(str(path), "reward:eval_fixtures:nope")


def test_reward_model_matches_its_own_forward(fam: dict, greedy: dict, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "rm.jsonl", [{"prompt": p} for p in PROMPTS])
    res = one(fam["model"], load_task(str(path), f"rm:{fam['rm_path']}")).results[0]
    assert res.metric == "rm:rm"
    for rec, p in zip(res.records, PROMPTS, strict=True):
        text = greedy[p][0]
        joined = f"{p} {text}" if text else p
        assert rec["value"] == pytest.approx(rm_score(fam["rm"], fam["tok"], joined), abs=1e-5)
    assert len({round(r["value"], 6) for r in res.records}) > 3  # the scores differ: padding did not flatten them


# ---- zoo resolution and recipes ------------------------------------------------------------------------------------
@pytest.fixture
def zoos(fam: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path / "cache"))
    facts = [{"prompt": p, "reference": "w10"} for p in PROMPTS[6:]]  # model2 says `w10 </s>` to the last one
    roles = {r: fam["model"] for r in ("small_base", "large_base", "sft_facts", "sft_addition", "sft_review")}
    roles["large_sft_facts"] = fam["model2"]
    root = tmp_path / "cache" / "zoo"
    return {
        "mini": write_zoo(root / "aaaa", roles, "mini", "2026-01-02T00:00:00Z", facts),
        "full": write_zoo(root / "bbbb", roles, "full", "2026-01-01T00:00:00Z", facts),
    }


def test_zoo_rule_and_roles(zoos: dict[str, Path], fam: dict, tmp_path: Path, monkeypatch) -> None:
    assert find_zoo() == zoos["full"]  # a full build beats a newer mini build
    assert find_zoo(zoos["mini"]) == zoos["mini"]
    assert Path(model_system("zoo:sft_facts").large) == zoos["full"] / "sft_facts"
    assert Path(model_system("zoo:sft[facts]", zoos["mini"]).large) == zoos["mini"] / "sft_facts"
    with pytest.raises(RecipeError, match="no role 'nope'"):
        model_system("zoo:nope")
    task = load_task("facts")
    assert (task.metric, task.normalize, task.require_eos, task.max_new_tokens) == ("exact", False, True, 4)
    monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelopsError, match="run `modelops zoo build`"):
        find_zoo()


def test_shipped_recipes_parse(zoos: dict[str, Path]) -> None:
    full = zoos["full"]
    systems, tasks = load_recipe(REPO / "recipes" / "compare.yaml")
    assert tasks == ["facts"] and list(systems) == ["small SFT", "large base", "up-scaled (EFT)", "large SFT"]
    eft = systems["up-scaled (EFT)"]
    assert (eft.rule, eft.weights, Path(eft.small_base), [Path(e) for e in eft.experts]) == (
        "eft",
        [1.0],
        full / "small_base",
        [full / "sft_facts"],
    )
    assert Path(systems["large SFT"].large) == full / "large_sft_facts" and systems["large SFT"].rule == "single"
    proxy = next(iter(load_recipe(REPO / "recipes" / "proxy.yaml")[0].values()))
    assert (proxy.rule, proxy.weights, Path(proxy.experts[0])) == ("proxy", [1.0], full / "sft_addition")
    dlf, dlf_tasks = load_recipe(REPO / "recipes" / "dlf.yaml")
    (spec,) = dlf.values()
    assert spec.rule == "dlf" and len(spec.experts) == 3 and dlf_tasks == ["facts", "addition", "review"]
    per_task, _ = load_recipe(REPO / "recipes" / "compare_dlf.yaml")
    assert [s.per_task for s in per_task.values()] == [True, True, True, False, True]
    dlf_facts = per_task["DLF"].for_task("facts")
    assert [Path(e) for e in dlf_facts.experts] == [full / "sft_facts"] and Path(dlf_facts.large) == full / "large_base"


def test_per_task_system_on_a_zoo_task(zoos: dict[str, Path], fam: dict, greedy: dict) -> None:
    """`zoo:large_sft_{task}` becomes zoo:large_sft_facts on facts; the zoo rule: answer then </s>, no normaliser."""
    from modelops.decode.sampling import SamplingConfig

    system = model_system("zoo:large_sft_{task}")
    report = evaluate({"big": system}, [load_task("facts")], SamplingConfig(), device="cpu")
    recs = report.results[0].records
    expected = [greedy_text(causal_lm(1), fam["tok"], p, 4) for p in PROMPTS[6:]]  # large_sft_facts is model2
    assert [(r["text"], r["finish_reason"] == "eos") for r in recs] == expected
    assert [r["value"] for r in recs] == [float(t == "w10" and stopped) for t, stopped in expected]
    assert report.results[0].mean == 0.25


def test_search_keys_and_own_sampling(tmp_path: Path, fam: dict) -> None:
    m = fam["model"]
    path = tmp_path / "cbs.yaml"
    path.write_text(f"large: {m}\nsmall_base: {m}\nexperts: [{m}]\nrule: cbs\nbeam_width: 2\nchunk_len: 3\n"
                    "temperature: 0.7\ntop_k: 50\nstop: '.'\n")  # fmt: skip
    (spec,) = load_recipe(path)[0].values()
    rule = spec.fusion_rule()
    assert (rule.name, rule.beam_width, rule.successors, rule.chunk_len) == ("cbs", 2, 4, 3)
    assert spec.sampling == {"temperature": 0.7, "top_k": 50, "stop": ["."]}
    path.write_text(f"large: {m}\nsmall_base: {m}\nexperts: [{m}]\nspeculative: 3\nspeculative_schedule: heuristic\n")
    rule = next(iter(load_recipe(path)[0].values())).fusion_rule()
    assert (rule.name, rule.speculative, rule.speculative_schedule) == ("eft", 3, "heuristic")
    path.write_text(f"large: {m}\nsmall_base: {m}\nexperts: [{m}]\nspeculative: 3\nspeculative_schedule: fast\n")
    with pytest.raises(RecipeError, match="expected constant or heuristic"):
        load_recipe(path)


def test_recipe_errors(tmp_path: Path, fam: dict) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("large: x\nexperts: [y]\nrule: eft\n")
    with pytest.raises(RecipeError, match="needs small_base"):
        load_recipe(bad)
    bad.write_text(f"model: {fam['model']}\nlarj: 1\n")
    with pytest.raises(RecipeError, match="unknown key"):
        load_recipe(bad)
    bad.write_text(f"systems:\n  - {{name: a, model: {fam['model']}}}\n  - {{name: a, model: {fam['model']}}}\n")
    with pytest.raises(RecipeError, match="two systems"):
        load_recipe(bad)
    joint = f"large: {fam['model']}\nsmall_base: {fam['model']}\nexperts: [{fam['model']}]\nrule: dlf\n"
    bad.write_text(joint + "dlf_mode: joint\n")
    (system,) = load_recipe(bad)[0].values()
    assert system.fusion_rule().dlf_mode == "joint"
    bad.write_text(joint + "dlf_mode: both\n")
    with pytest.raises(RecipeError, match="--dlf-mode 'both'"):
        load_recipe(bad)


# ---- CLI ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app() -> typer.Typer:
    from modelops.cli import main

    if any(c.name == "eval" for c in main.app.registered_commands):
        return main.app
    from modelops.cli import eval as eval_cli

    local = typer.Typer()

    @local.callback()
    def _root() -> None:
        """test app"""

    eval_cli.register(local)
    return local


def test_cli_errors(app: typer.Typer, fam: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path / "empty"))
    cases = [
        (["eval", "--task", "facts"], 2, "give --model, --recipe or --compare"),
        (["eval", "--task", str(tmp_path / "none.jsonl"), "--model", str(fam["model"])], 1, "task file not found"),
        (["eval", "--task", "facts", "--model", str(fam["model"])], 1, "run `modelops zoo build`"),
        (["eval", "--task", "facts", "--model", "zoo:large_base"], 1, "run `modelops zoo build`"),
    ]
    ok = jsonl(tmp_path / "ok.jsonl", [{"prompt": "w1", "reference": "w2"}])
    cases.append((["eval", "--task", str(ok), "--model", str(fam["model"]), "--metric", "bleu"], 1, "--metric 'bleu'"))
    for args, code, text in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert text in result.output
        if code == 1:
            assert result.output.strip().count("\n") == 0 and result.output.startswith("Error: ")


def test_cli_outputs_agree_with_the_table(app: typer.Typer, fam: dict, greedy: dict, tmp_path: Path) -> None:
    task = jsonl(tmp_path / "em.jsonl", [{"prompt": p, "reference": greedy[p][0]} for p in PROMPTS[:6]])
    task2 = jsonl(tmp_path / "rw.jsonl", [{"prompt": p} for p in PROMPTS[:6]])
    out = tmp_path / "out"
    args = ["eval", "--task", str(task), "--model", str(fam["model"]), "--model", str(fam["model2"]),
            "--max-new-tokens", "4", "--out", str(out), "-q", "--bootstrap", "200"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [(r["system"], r["task"]) for r in data["results"]] == [("model", "em"), ("model2", "em")]
    for j, c in zip(data["results"], rows, strict=True):
        assert float(c["mean"]) == pytest.approx(j["mean"]) and int(c["n"]) == j["n"] == 6
        assert j["ci_low"] <= j["mean"] <= j["ci_high"]
        assert f"{100 * j['mean']:.1f}%" in result.output
    assert data["results"][0]["mean"] == 1.0  # the references are model's own greedy outputs
    gens = [json.loads(x) for x in (out / "generations_model_em.jsonl").read_text().splitlines()]
    assert [g["text"] for g in gens] == [greedy[p][0] for p in PROMPTS[:6]]
    # a second run into the same folder needs --overwrite
    again = CliRunner().invoke(app, [*args[:-3], "--metric", "reward:eval_fixtures:word_count"])
    assert again.exit_code == 1 and "not empty" in again.output
    args = ["eval", "--task", str(task2), "--model", str(fam["model"]), "--metric", "reward:eval_fixtures:word_count",
            "--fluency", "eval_fixtures:short", "--out", str(out), "--overwrite", "-q", "--max-new-tokens", "4"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads((out / "results.json").read_text())["results"][0]
    words = [len(greedy[p][0].split()) for p in PROMPTS[:6]]
    assert row["mean"] == pytest.approx(sum(words) / 6)
    assert row["fluency"] == pytest.approx(sum(w <= 2 for w in words) / 6)
    assert f"{row['mean']:+.3f}" in result.output


def test_two_processes_give_the_same_results(fam: dict, tmp_path: Path) -> None:
    """Data-parallel through accelerate's PartialState (gloo on CPU, started by torchrun) == one process."""
    rows = [{"prompt": p, "reference": "w1"} for p in PROMPTS] + [
        {"prompt": p + " w5", "reference": "w2"} for p in PROMPTS
    ]
    task = jsonl(tmp_path / "dp.jsonl", rows)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"out{n}"
        cmd = [sys.executable, "-m", "modelops.cli.eval", "--task", str(task), "--model", str(fam["model"]),
               "--model", str(fam["model2"]), "--batch-size", "3", "--max-new-tokens", "5", "--device", "cpu",
               "--num-processes", str(n), "--out", str(outs[n]), "-q"]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    r1 = json.loads((outs[1] / "results.json").read_text())["results"]
    r2 = json.loads((outs[2] / "results.json").read_text())["results"]
    assert [r["processes"] for r in r2] == [2, 2]
    for a, b in zip(r1, r2, strict=True):
        assert (a["mean"], a["ci_low"], a["ci_high"]) == (b["mean"], b["ci_low"], b["ci_high"])
    for f in sorted(outs[1].glob("generations_*.jsonl")):
        assert f.read_text() == (outs[2] / f.name).read_text()


def test_evaluate_prebuilt_decoder(fam: dict, greedy: dict, tmp_path: Path) -> None:
    """A caller's own CoDecoder (e.g. weights changed in place for --alpha auto) is used as is."""
    from modelops.decode import CoDecoder, FusionRule
    from modelops.decode.models import Member
    from modelops.decode.sampling import SamplingConfig

    model = causal_lm(0)
    decoder = CoDecoder([Member("large", "mem", model, fam["tok"])], FusionRule("single"))
    task = load_task(str(jsonl(tmp_path / "e.jsonl", [{"prompt": p, "reference": greedy[p][0]} for p in PROMPTS])))
    sampling = SamplingConfig(max_new_tokens=4)
    assert evaluate({"x": SystemSpec("x", decoder=decoder)}, [task], sampling).results[0].mean == 1.0
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # changed in place: the same decoder now scores differently
    assert evaluate({"x": SystemSpec("x", decoder=decoder)}, [task], sampling).results[0].mean < 1.0


def test_greedy_rows_join_running_batches(fam: dict, greedy: dict, tmp_path: Path) -> None:
    """Greedy generation tasks decode a process's rows in one continuous batch: rows that stop early give their
    place to the next prompt, and every text is still the model's own greedy one."""
    from modelops.decode import CoDecoder, FusionRule
    from modelops.decode.models import Member
    from modelops.decode.sampling import SamplingConfig

    assert len({len(greedy[p][0].split()) for p in PROMPTS}) > 1  # rows of different lengths
    decoder = CoDecoder([Member("large", "mem", fam["lm"], fam["tok"])], FusionRule("single"))
    task = load_task(str(jsonl(tmp_path / "c.jsonl", [{"prompt": p, "reference": "w1"} for p in PROMPTS])))
    seen: list[int] = []
    report = evaluate({"x": SystemSpec("x", decoder=decoder)}, [task], SamplingConfig(max_new_tokens=4),
                      batch_size=3, progress=lambda _name, k, _n: seen.append(k))  # fmt: skip
    assert decoder.last_stats["admissions"] > 0
    assert [r["text"] for r in report.results[0].records] == [greedy[p][0] for p in PROMPTS]
    assert seen[-1] == len(PROMPTS) and seen == sorted(seen)


@pytest.mark.slow
def test_harness_reproduces_the_zoos_own_scores(mini_zoo: Path) -> None:
    """Every model of a mini zoo on every task: the harness (co-decoder) equals modelops/zoo/scores.py (its own
    greedy loop) — exact match on facts/addition, gold reward and fluency on review. ~70 s to build the zoo."""
    from modelops.decode.sampling import SamplingConfig
    from modelops.runtime.zoo_names import iter_models, load_manifest

    zoo = mini_zoo
    manifest = load_manifest(zoo)
    systems = {name: SystemSpec(name, large=str(zoo / meta["path"])) for name, meta in iter_models(manifest)}
    tasks = [load_task(t, zoo=zoo) for t in ("facts", "addition", "review")]
    report = evaluate(systems, tasks, SamplingConfig(), 64, resamples=0, device="cpu")
    for name, meta in iter_models(manifest):
        for task in ("facts", "addition", "review"):
            ours, theirs = report.get(name, task), meta["scores"][task]
            if task == "review":
                assert ours.fluency is not None
                assert (ours.mean, ours.fluency.mean) == pytest.approx((theirs["reward"], theirs["fluency"]), abs=1e-4)
            else:
                assert ours.mean == pytest.approx(theirs["exact"], abs=1e-4), (name, task)
