"""`modelops fuse-decode` end to end: results file, traces, scoring, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from decode_fixtures import llama, make_tokenizer, nudged, prompts, save_with_tokenizer
from typer.testing import CliRunner

from modelops.cli.main import app
from modelops.decode import CoDecoder, FusionRule, SamplingConfig

runner = CliRunner()


def write_prompts(path: Path, texts: list[str], continuation: str | None = None) -> Path:
    rows = [
        {"id": f"p{i}", "prompt": t, **({"continuation": continuation} if continuation else {})}
        for i, t in enumerate(texts)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def invoke(*args: str):
    return runner.invoke(app, ["fuse-decode", "-q", *args])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eft_results_match_the_python_api(decode_family, tmp_path):
    texts = prompts(5)
    src = write_prompts(tmp_path / "p.jsonl", texts)
    fam = {k: str(v) for k, v in decode_family.items()}
    res = invoke(
        "--large",
        fam["large"],
        "--small-base",
        fam["base"],
        "--expert",
        fam["expert"],
        "--rule",
        "eft",
        "--prompts",
        str(src),
        "--out",
        str(tmp_path / "r.jsonl"),
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    rows = read(tmp_path / "r.jsonl")
    api = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft")).generate(
        texts, SamplingConfig(max_new_tokens=8)
    )
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(5)]
    assert [r["text"] for r in rows] == [g.text for g in api]
    assert all(r["finish_reason"] in ("eos", "length", "stop") and r["num_tokens"] >= 1 for r in rows)
    assert "5 rows" in res.output


def test_dlf_rows_carry_the_alpha_trace_and_the_recipe_is_used(decode_family, tmp_path):
    fam = {k: str(v) for k, v in decode_family.items()}
    recipe = tmp_path / "dlf.yaml"
    recipe.write_text(
        f"large: {fam['large']}\nsmall_base: {fam['base']}\nexperts: [{fam['expert']}, {fam['expert2']}]\n"
        "rule: dlf\ndlf_grid: '0:1:0.25'\nmax_new_tokens: 6\n"
    )
    res = invoke(
        "--recipe",
        str(recipe),
        "--prompts",
        str(write_prompts(tmp_path / "p.jsonl", prompts(3))),
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert res.exit_code == 0, res.output
    picture = tmp_path / "r.alpha_trace.png"  # the trace drawn beside the rows, named on the summary line
    assert picture.read_bytes()[:4] == b"\x89PNG" and f"alpha_trace {picture}" in res.output
    for row in read(tmp_path / "r.jsonl"):
        assert len(row["alpha_trace"]) == row["num_tokens"] <= 6
        for step in row["alpha_trace"]:
            assert step["alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0) and step["expert"] in (None, 0, 1)


def test_dlf_mode_joint_searches_every_experts_weight_together(decode_family, tmp_path):
    """--dlf-mode joint decodes with weight vectors from the grids' product (recorded per step), equal to the
    fused generation of the same search called directly; a bad mode is one line."""
    from modelops.decode import CoDecoder, FusionRule
    from modelops.decode.sampling import SamplingConfig

    fam = {k: str(v) for k, v in decode_family.items()}
    src = write_prompts(tmp_path / "p.jsonl", prompts(4))
    common = ["--large", fam["large"], "--small-base", fam["base"], "--expert", fam["expert2"], "--expert",
              fam["base"], "--rule", "dlf", "--dlf-grid", "0,0.5,1", "--max-new-tokens", "5", "--prompts", str(src)]  # fmt: skip
    res = invoke(*common, "--dlf-mode", "joint", "--out", str(tmp_path / "j.jsonl"))
    assert res.exit_code == 0, res.output
    rows = read(tmp_path / "j.jsonl")
    rule = FusionRule("dlf", dlf_grid=[0.0, 0.5, 1.0], dlf_mode="joint")
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert2"], fam["base"]], rule, device="cpu")
    gens = decoder.generate(prompts(4), SamplingConfig(max_new_tokens=5), ids=[r["id"] for r in rows])
    assert [r["text"] for r in rows] == [g.text for g in gens]
    for step in (s for r in rows for s in r["alpha_trace"]):
        weights = step.get("weights") or [step["alpha"] if step["expert"] == t else 0.0 for t in (0, 1)]
        assert all(w in (0.0, 0.5, 1.0) for w in weights)
    bad = invoke(*common, "--dlf-mode", "both", "--out", str(tmp_path / "b.jsonl"))
    assert bad.exit_code == 1 and "--dlf-mode 'both': expected one" in bad.output
    assert not (tmp_path / "b.jsonl").exists()


def test_score_mode_writes_summed_logprobs(decode_family, tmp_path):
    fam = {k: str(v) for k, v in decode_family.items()}
    src = write_prompts(tmp_path / "p.jsonl", ["w1 w2", "w3"], continuation="w4 w5")
    res = invoke(
        "--large",
        fam["large"],
        "--small-base",
        fam["base"],
        "--expert",
        fam["expert"],
        "--score",
        "--prompts",
        str(src),
        "--out",
        str(tmp_path / "s.jsonl"),
    )
    assert res.exit_code == 0, res.output
    rows = read(tmp_path / "s.jsonl")
    api = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft")).score(
        ["w1 w2", "w3"], ["w4 w5"] * 2
    )
    for row, lp in zip(rows, api, strict=True):
        assert row["num_tokens"] == 2 and abs(row["logprob"] - sum(lp)) < 1e-5


def test_mismatched_tokenizers_are_refused_with_one_line(decode_family, tmp_path):
    other = save_with_tokenizer(nudged(llama(1), 3), tmp_path / "other", make_tokenizer(shift=7))
    fam = {k: str(v) for k, v in decode_family.items()}
    res = invoke(
        "--large",
        fam["large"],
        "--small-base",
        fam["base"],
        "--expert",
        str(other),
        "--prompts",
        str(write_prompts(tmp_path / "p.jsonl", ["w1"])),
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--rule cbs" in lines[0]
    assert not (tmp_path / "r.jsonl").exists()


def test_bad_inputs_exit_with_one_line(decode_family, tmp_path):
    fam = {k: str(v) for k, v in decode_family.items()}
    out = str(tmp_path / "r.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    cases = [
        (
            ["--large", fam["large"], "--prompts", str(tmp_path / "missing.jsonl"), "--out", out],
            "prompts file not found",
        ),
        (["--large", fam["large"], "--prompts", str(bad), "--out", out], 'needs a string "prompt"'),
        (["--large", fam["large"], "--rule", "eft", "--prompts", str(bad), "--out", out], "--small-base"),
        (
            [
                "--large",
                fam["large"],
                "--small-base",
                fam["base"],
                "--expert",
                fam["expert"],
                "--rule",
                "dlf",
                "--dlf-grid",
                "2:0:1",
                "--prompts",
                str(bad),
                "--out",
                out,
            ],
            "alpha grid",
        ),
        (
            [
                "--large",
                str(tmp_path / "nope"),
                "--rule",
                "single",
                "--prompts",
                str(write_prompts(tmp_path / "p.jsonl", ["w1"])),
                "--out",
                out,
            ],
            "no such file or folder",
        ),
    ]
    for args, needle in cases:
        res = invoke(*args)
        assert res.exit_code == 1, (args, res.output)
        assert needle in res.output, res.output
    assert not Path(out).exists()


def test_existing_output_needs_overwrite(decode_family, tmp_path):
    fam = {k: str(v) for k, v in decode_family.items()}
    src = write_prompts(tmp_path / "p.jsonl", ["w1"])
    target = tmp_path / "r.jsonl"
    target.write_text("keep me\n")
    args = [
        "--large",
        fam["large"],
        "--rule",
        "single",
        "--prompts",
        str(src),
        "--out",
        str(target),
        "--max-new-tokens",
        "2",
    ]
    assert invoke(*args).exit_code == 1 and target.read_text() == "keep me\n"
    assert invoke(*args, "--overwrite").exit_code == 0 and read(target)[0]["id"] == "p0"


def test_static_batches_give_the_same_rows_without_admissions(decode_family, tmp_path):
    fam = {k: str(v) for k, v in decode_family.items()}
    src = write_prompts(tmp_path / "p.jsonl", prompts(7))
    common = ["--large", fam["large"], "--small-base", fam["base"], "--expert", fam["expert"], "--prompts", str(src),
              "--max-new-tokens", "12", "--batch-size", "2", "--stop", "w5"]  # fmt: skip
    outputs = []
    for extra, name in (([], "c.jsonl"), (["--static-batches"], "s.jsonl")):
        res = invoke(*common, *extra, "--out", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        outputs.append((read(tmp_path / name), res.output))
    (cont, cont_log), (static, static_log) = outputs
    assert cont == static
    assert "admissions 0" in static_log and "admissions 0" not in cont_log and "occupancy" in cont_log
