"""modelops systems inside lm-evaluation-harness, offline, on local task YAMLs of the three request types.

The independent check: a fused system whose delta is zero (the expert is the small base) gives, item by item, the
numbers that lm-eval's own `hf` backend gives for the large model alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from decode_fixtures import prompts

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval extra is installed by scripts/setup.sh (CI runs it)")


import modelops.eval.lmeval  # noqa: E402  (registers --model modelops)
from modelops.api.evaluation import lm_eval_task_manager  # noqa: E402  (lm-eval's task index, built once per path)

TASKS = ("t_gen", "t_mc", "t_roll")


def write_tasks(root: Path) -> Path:
    """A generate_until, a multiple-choice (loglikelihood) and a loglikelihood_rolling task over local JSONL."""
    texts = prompts(8)
    data = {
        "gen": [{"question": p, "answer": "w5"} for p in texts],
        "mc": [{"question": p, "choices": ["w5 w6", "w7", "w8 w9 w10"], "label": i % 3} for i, p in enumerate(texts)],
        "text": [{"text": f"{p} {q}"} for p, q in zip(texts, reversed(texts), strict=True)],
    }
    for name, rows in data.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    bodies = {
        "t_gen": ("gen", 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
                  "generation_kwargs:\n  until: [\"w3\"]\n  max_gen_toks: 6\n  do_sample: false\n"
                  "metric_list:\n  - metric: exact_match\n"),
        "t_mc": ("mc", 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
                 "doc_to_target: label\nmetric_list:\n  - metric: acc\n"),
        "t_roll": ("text", 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                   "metric_list:\n  - metric: word_perplexity\n"),
    }  # fmt: skip
    folder = root / "tasks"
    folder.mkdir()
    for task, (data_name, body) in bodies.items():
        (folder / f"{task}.yaml").write_text(f"task: {task}\n" + head.format(path=root / f"{data_name}.jsonl") + body)
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return write_tasks(tmp_path_factory.mktemp("lmeval"))


def evaluate(model: str, args: str, tasks: Path, names: tuple[str, ...] = TASKS) -> dict:
    return lm_eval.simple_evaluate(
        model=model, model_args=args, tasks=list(names), task_manager=lm_eval_task_manager((str(tasks),)),
        log_samples=True, batch_size=4, device="cpu",
    )  # fmt: skip


def responses(result: dict, task: str) -> list:
    return [s["filtered_resps"] for s in sorted(result["samples"][task], key=lambda s: s["doc_id"])]


@pytest.mark.parametrize("limit", ["", ",max_length=10"], ids=["whole", "cut-to-10-tokens"])
def test_zero_delta_fusion_equals_the_hf_backend_item_by_item(decode_family, tasks, limit) -> None:
    """Also with a 10-token window: generation contexts cut to 10 − 6 tokens from the left, scored inputs to the
    last 11, rolling texts in several windows, as lm-eval's hf backend cuts them."""
    fam = {k: str(v) for k, v in decode_family.items()}
    hf = evaluate("hf", f"pretrained={fam['large']},dtype=float32{limit}", tasks)
    ours = evaluate(
        "modelops", f"large={fam['large']},small_base={fam['base']},expert={fam['base']},rule=eft{limit}", tasks
    )
    assert responses(ours, "t_gen") == responses(hf, "t_gen")  # the same generated text, row by row
    assert any(r[0] for r in responses(hf, "t_gen"))  # and not all empty
    if limit:  # the window cuts: prompts of up to 12 words (+ BOS) against 10 − 6 context tokens, 16-word texts
        assert max(len(p.split()) for p in prompts(8)) + 1 > 10 - 6
    for a, b in zip(responses(ours, "t_mc"), responses(hf, "t_mc"), strict=True):
        assert [x[1] for x in a] == [x[1] for x in b]  # is_greedy
        assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=2e-5)  # summed log-probs
    for a, b in zip(responses(ours, "t_roll"), responses(hf, "t_roll"), strict=True):
        assert a[0] == pytest.approx(b[0], abs=5e-5)
    assert ours["results"]["t_mc"]["acc,none"] == hf["results"]["t_mc"]["acc,none"]
    assert ours["results"]["t_gen"]["exact_match,none"] == hf["results"]["t_gen"]["exact_match,none"]
    assert ours["results"]["t_roll"]["word_perplexity,none"] == pytest.approx(
        hf["results"]["t_roll"]["word_perplexity,none"], rel=1e-5
    )


def test_a_real_fusion_is_not_the_large_model(decode_family, tasks) -> None:
    fam = {k: str(v) for k, v in decode_family.items()}
    hf = evaluate("hf", f"pretrained={fam['large']},dtype=float32", tasks, ("t_mc",))
    eft = evaluate(
        "modelops", f"large={fam['large']},small_base={fam['base']},expert={fam['expert2']}", tasks, ("t_mc",)
    )
    assert responses(eft, "t_mc") != responses(hf, "t_mc")


@pytest.mark.parametrize("command", [["lm_eval"], ["modelops-lm-eval", "run"]])
def test_the_lm_eval_command_line_runs_with_model_modelops(decode_family, tasks, tmp_path, command) -> None:
    """lm-eval's own command (through the start-up hook the package installs) and `modelops-lm-eval` both find
    `--model modelops`."""
    fam = {k: str(v) for k, v in decode_family.items()}
    recipe = tmp_path / "eft.yaml"
    recipe.write_text(f"large: {fam['large']}\nsmall_base: {fam['base']}\nexperts: [{fam['expert2']}]\nrule: eft\n")
    exe = Path(sys.executable).with_name(command[0])
    cmd = [str(exe), *command[1:], "--model", "modelops", "--model_args", f"recipe={recipe}", "--tasks", "t_mc",
           "--include_path", str(tasks), "--output_path", str(tmp_path / "out"), "--batch_size", "4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = list((tmp_path / "out").rglob("results_*.json"))
    assert written and "t_mc" in json.loads(written[0].read_text())["results"]


def test_the_wheel_carries_the_start_up_hook_and_the_hook_registers_lazily(tmp_path) -> None:
    """The built wheel has `modelops-lm-eval.pth` at its top level, importing the hook; in a fresh interpreter the
    hook imports neither lm-eval nor torch until lm-eval's model table is imported, then "modelops" is listed."""
    import shutil
    import zipfile

    root = Path(__file__).parents[1]
    src = tmp_path / "src"
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "modelops-lm-eval.pth"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, src / name)
    for folder in ("modelops", "cli"):
        shutil.copytree(root / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("modelops-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("modelops-lm-eval.pth").decode().strip() == "import modelops.eval.lm_eval_hook"
    probe = (
        "import sys, modelops.eval.lm_eval_hook\n"
        "assert 'lm_eval' not in sys.modules and 'torch' not in sys.modules\n"
        "from lm_eval.api.registry import get_model, model_registry\n"
        "assert 'modelops' not in model_registry\n"
        "import lm_eval.models\n"
        "print(get_model('modelops').__name__, get_model('hf').__name__)"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}\n{probe}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ModelopsLM", "HFLM"]


def test_eft_on_the_zoo_facts_task_through_lm_eval_equals_modelops_eval(mini_zoo, mini_zoo_cache, tasks, tmp_path,
                                                                        monkeypatch) -> None:  # fmt: skip
    """The same EFT system, the same facts prompts: lm-eval's generate_until texts are modelops eval's texts, and
    `modelops eval --lm-eval-tasks` puts lm-eval's rows in the same table (a task of the user's own, found through
    `--lm-eval-include`, too) and keeps lm-eval's JSON."""
    from typer.testing import CliRunner

    from modelops.cli.main import app

    monkeypatch.setenv("MODELOPS_CACHE", str(mini_zoo_cache))
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    args = ["eval", "--recipe", str(repo / "recipes" / "eft.yaml"), "--task", "facts", "--zoo", str(mini_zoo),
            "--limit", "12", "--lm-eval-tasks", "zoo_facts,zoo_facts_mc,zoo_facts_text,t_mc", "--lm-eval-include",
            str(tasks), "--out", str(out), "-q"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["task"] for r in rows] == ["facts", "zoo_facts", "zoo_facts_mc", "zoo_facts_text", "t_mc"]
    assert {r["metric"] for r in rows[1:]} == {"lm-eval exact_match", "lm-eval acc", "lm-eval word_perplexity"}
    assert [r["n"] for r in rows] == [12, 12, 12, 12, 8]  # t_mc has 8 rows
    raw = json.loads((out / "lm_eval_results.json").read_text())
    (system,) = raw
    assert set(raw[system]["results"]) >= {"zoo_facts", "zoo_facts_mc", "zoo_facts_text", "t_mc"}
    # item by item: lm-eval's generations are modelops eval's generations
    ours = [json.loads(x)["text"] for x in next(out.glob("generations_*_facts.jsonl")).read_text().splitlines()]
    from modelops import api

    systems, _ = api.eval_systems(recipes=[repo / "recipes" / "eft.yaml"], zoo=mini_zoo)
    decoder = next(iter(systems.values())).build("cpu")
    model = modelops.eval.lmeval.ModelopsLM(decoder=decoder)
    theirs = lm_eval.simple_evaluate(
        model=model, tasks=["zoo_facts"], limit=12, log_samples=True,
        task_manager=lm_eval_task_manager((str(api.zoo_lm_eval_tasks(mini_zoo)),)),
    )["samples"]["zoo_facts"]  # fmt: skip
    decoder.close()
    assert [s["resps"][0][0] for s in sorted(theirs, key=lambda s: s["doc_id"])] == ours
    assert sum(bool(t) for t in ours) > 6  # real answers, not empty strings


def test_alpha_auto_can_choose_alpha_by_an_lm_eval_task(decode_family, tasks) -> None:
    """--alpha auto with --eval lm-eval:TASK: at α = 0 the score is lm-eval's own for the aligned model."""
    from modelops import api

    sft, dpo = str(decode_family["base"]), str(decode_family["expert2"])
    best, record = api.choose_alpha(sft, dpo, "0,0.5,2", "lm-eval:t_mc", device="cpu", lm_eval_include=str(tasks))
    curve = record["alpha_search"]["curve"]
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 2.0]
    hf = evaluate("hf", f"pretrained={dpo},dtype=float32", tasks, ("t_mc",))["results"]["t_mc"]["acc,none"]
    assert curve[0]["mean"] == pytest.approx(hf)
    assert best.mean == max(p["mean"] for p in curve)
