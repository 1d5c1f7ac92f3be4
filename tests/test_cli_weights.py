"""`modelops extrapolate` / `modelops merge` end to end: results, dry runs, and one clear line for bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from modelops.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_help_is_fast_and_imports_no_torch() -> None:
    code = "import sys; from modelops.cli.main import app; assert 'torch' not in sys.modules; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "modelops", "--help"], capture_output=True, text=True, check=True)
    assert "extrapolate" in out.stdout and "merge" in out.stdout


def test_extrapolate_cli(llama_family, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = run(
        "extrapolate", "--sft", llama_family["sft"], "--dpo", llama_family["dpo"], "--alpha", "0.3", "--out", out, "-q"
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Wrote ") and "peak RSS" in res.stdout
    sft, dpo, got = (load_file(p / "model.safetensors") for p in (llama_family["sft"], llama_family["dpo"], out))
    k = "model.layers.1.mlp.down_proj.weight"
    assert torch.allclose(got[k], dpo[k] + 0.3 * (dpo[k] - sft[k]), atol=1e-6)


def test_dry_run_writes_nothing(llama_family, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    res = run(
        "extrapolate",
        "--sft",
        llama_family["sft"],
        "--dpo",
        llama_family["dpo"],
        "--alpha",
        "0.3",
        "--out",
        out,
        "--dry-run",
    )
    assert res.exit_code == 0, res.output
    assert "lm_head.weight" in res.stdout and "shard" in res.stdout and "[96, 32]" in res.stdout
    assert not out.exists() and not any(p.name.startswith(".dry") for p in tmp_path.iterdir())


def test_merge_runs_an_unchanged_mergekit_config(llama_family, tmp_path: Path) -> None:
    recipe = tmp_path / "ties.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        models:
          - model: {llama_family["base"]}
            # no parameters necessary for base model
          - model: {llama_family["ft1"]}
            parameters:
              density: 0.5
              weight: 0.5
          - model: {llama_family["ft2"]}
            parameters:
              density: 0.5
              weight: 0.3
        merge_method: ties
        base_model: {llama_family["base"]}
        parameters:
          normalize: true
          int8_mask: true
        dtype: bfloat16
        """)
    )
    out = tmp_path / "ties"
    res = run("merge", "--recipe", recipe, "--out", out, "-q", "--shard-size", "30KB")
    assert res.exit_code == 0, res.output
    got = {}
    for f in out.glob("*.safetensors"):
        got.update(load_file(f))
    assert all(v.dtype == torch.bfloat16 for v in got.values())
    saved = (out / "modelops_recipe.yaml").read_text()
    assert "merge_method: ties" in saved and str(llama_family["base"]) not in saved


def test_merge_from_flags(llama_family, tmp_path: Path) -> None:
    out = tmp_path / "ta"
    res = run(
        "merge", "--method", "task_arithmetic", "--base", llama_family["base"], "--model", llama_family["ft1"],
        "--weight", "0.7", "--model", llama_family["ft2"], "--weight", "0.3", "--out", out, "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    base, a, b = ({} for _ in range(3))
    for d, p in ((base, "base"), (a, "ft1"), (b, "ft2")):
        for f in llama_family[p].glob("*.safetensors"):
            d.update(load_file(f))
    got = {}
    for f in out.glob("*.safetensors"):
        got.update(load_file(f))
    for k in got:
        assert torch.allclose(got[k], base[k] + 0.7 * (a[k] - base[k]) + 0.3 * (b[k] - base[k]), atol=1e-5)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, llama_family, gpt2_pair) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    nan = root / "nan"
    shutil.copytree(llama_family["dpo"], nan)
    sd = load_file(nan / "model.safetensors")
    sd["model.norm.weight"][3] = float("nan")
    save_file(sd, nan / "model.safetensors", metadata={"format": "pt"})
    pkl = root / "pkl"
    pkl.mkdir()
    torch.save({"w": torch.ones(2)}, pkl / "pytorch_model.bin")
    corrupt = root / "corrupt"
    shutil.copytree(llama_family["dpo"], corrupt)
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[8:20] = b"garbage!!!!!"
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    onlyone = root / "onlyone"
    shutil.copytree(llama_family["dpo"], onlyone)
    sd = load_file(onlyone / "model.safetensors")
    sd["extra.bias"] = torch.zeros(3)
    save_file(sd, onlyone / "model.safetensors", metadata={"format": "pt"})
    shape = root / "shape"
    shutil.copytree(llama_family["dpo"], shape)
    sd = load_file(shape / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(33)
    save_file(sd, shape / "model.safetensors", metadata={"format": "pt"})
    return {"nan": nan, "pkl": pkl, "corrupt": corrupt, "onlyone": onlyone, "shape": shape, "gpt2": gpt2_pair["a"]}


@pytest.mark.parametrize(
    ("dpo_key", "expected"),
    [
        ("missing", "no such file"),
        ("pkl", "--allow-pickle"),
        ("corrupt", "corrupt or truncated"),
        ("gpt2", "architectures differ"),
        ("onlyone", "'extra.bias'"),
        ("shape", "shape mismatch for 'model.norm.weight': [33] in "),
        ("nan", "NaN/inf in output tensor 'model.norm.weight' (already non-finite in"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(dpo_key, expected, bad_inputs, llama_family, tmp_path) -> None:
    dpo = bad_inputs.get(dpo_key, tmp_path / "missing")
    out = tmp_path / "out"
    res = run("extrapolate", "--sft", llama_family["sft"], "--dpo", dpo, "--alpha", "0.3", "--out", out)
    assert res.exit_code == 1, res.output
    assert expected in one_error_line(res)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("merge_method: frankenmerge\nmodels: [a]", "unknown merge method 'frankenmerge'; known methods: arcee_fusion"),
        ("merge_method: tie\nmodels: [a]", "unknown merge method 'tie' (did you mean 'ties'?)"),
        (
            "merge_method: ties\nbase_model: B\nmodels:\n  - model: M\n    parameters: {weight: 1, densty: 0.5}",
            "models[0].parameters.densty: not a per-model parameter of ties (did you mean 'density'?)",
        ),
        (
            "merge_method: della\nbase_model: B\nmodels: [M]\nparameters: {weight: 1, lamda: 0.5}",
            "parameters.lamda: not a parameter of della (did you mean 'lambda'?)",
        ),
        ("merge_method: ties\nbase_model: B\nmodel: [M]", "unknown key 'model' (did you mean 'models'?)"),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - {model: M, layer_range: [0, 2]}\n"
            "      - {model: N, layer_range: [0, 3]}",
            "slices[0].sources: every source must span the same number of layers, got [2, 3]",
        ),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - {model: M, layer_range: [4, 2]}",
            "slices[0].sources[0].layer_range: expected [first, end) with 0 <= first < end, got [4, 2]",
        ),
        (
            "merge_method: linear\nmodels: [M]\ntokenizer: {source: union, tokens: {x: {source: M}}}",
            "tokenizer.tokens (per-token embedding sources) is not supported yet",
        ),
        (
            "merge_method: linear\nmodels: [M]\ntokenizer: {source: union, pad_to: 64}",
            "tokenizer: unknown key 'pad_to' (did you mean 'pad_to_multiple_of'?)",
        ),
        (
            "merge_method: ties\nbase_model: B\nmodels:\n  - model: M\n    parameters: {weight: heavy}",
            "models[0].parameters.weight: expected a number, got 'heavy'",
        ),
        (
            "merge_method: ties\nbase_model: B\nmodels:\n  - model: M\n    parameters: {weight: 1, density: 2}",
            "models[0].parameters.density: 2.0 is outside [0.0, 1.0]",
        ),
        ("merge_method: slerp\nbase_model: B\nmodels: [M]", "parameters.t is required by slerp"),
        ("merge_method: ties\nmodels: [M]\nweights: 3", "unknown key 'weights'"),
        (
            "merge_method: linear\nmodels: [M]\nparameters:\n  weight: 1\n  normalize: 3",
            "parameters.normalize: expected true/false",
        ),
        ("merge_method: [", "not valid YAML"),
    ],
)
def test_bad_recipe_fields_are_named(yaml_text, expected, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml_text)
    res = run("merge", "--recipe", recipe, "--out", tmp_path / "o")
    assert res.exit_code == 1, res.output
    line = one_error_line(res)
    assert expected in line and str(recipe) in line


def test_output_rules(llama_family, tmp_path: Path) -> None:
    args = ["extrapolate", "--sft", llama_family["sft"], "--dpo", llama_family["dpo"], "--alpha", "0.3", "-q"]
    res = run(*args, "--out", llama_family["dpo"] / "sub")
    assert res.exit_code == 1 and "inside input" in one_error_line(res)
    out = tmp_path / "o"
    out.mkdir()
    (out / "model-00002-of-00002.safetensors").write_text("stale")
    res = run(*args, "--out", out)
    assert res.exit_code == 1 and "--overwrite" in one_error_line(res)
    res = run(*args, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "model-00002-of-00002.safetensors").exists() and (out / "model.safetensors").exists()


def test_usage_errors_exit_2(llama_family, tmp_path: Path) -> None:
    res = run("extrapolate", "--sft", llama_family["sft"], "--alpha", "0.3", "--out", tmp_path / "o")
    assert res.exit_code == 2
    res = run("merge", "--method", "linear", "--model", "a", "--weight", "1", "--weight", "2", "--out", tmp_path / "o")
    assert res.exit_code == 2


def test_killed_mid_write_leaves_no_complete_looking_output(llama_family, tmp_path: Path) -> None:
    """SIGKILL the process after its third tensor: the target never appears; the next run succeeds."""
    out = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import os, signal
        from modelops.checkpoint import writer
        real = writer.CheckpointWriter.write
        count = [0]
        def write(self, name, tensor, **kw):
            real(self, name, tensor, **kw)
            count[0] += 1
            if count[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        writer.CheckpointWriter.write = write
        from modelops.cli.main import app
        app(["merge", "--method", "task_arithmetic", "--base", {str(llama_family["base"])!r},
             "--model", {str(llama_family["ft1"])!r}, "--weight", "1", "--out", {str(out)!r},
             "--shard-size", "20KB", "-q"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if ".modelops-partial" in p.name]
    assert leftovers  # the partial work is in a hidden folder, clearly not a checkpoint
    res = run(
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        llama_family["base"],
        "--model",
        llama_family["ft1"],
        "--weight",
        "1",
        "--out",
        out,
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert [p for p in tmp_path.iterdir() if ".modelops-" in p.name] == []  # started over: nothing left behind


def test_bad_push_options_are_refused_before_any_work(llama_family, tmp_path: Path) -> None:
    args = ["extrapolate", "--sft", llama_family["sft"], "--dpo", llama_family["dpo"], "--alpha", "0.3", "-q"]
    res = run(*args, "--out", tmp_path / "a", "--push-to", "not-a-repo-id")
    assert res.exit_code == 2 and "org/name" in res.output
    res = run(*args, "--out", tmp_path / "b", "--push-to", "org/x", "--create-pr", "--revision", "dev")
    assert res.exit_code == 2 and "--create-pr" in res.output
    assert list(tmp_path.iterdir()) == []


def test_a_missing_demo_model_names_the_command_that_makes_it(tmp_path: Path, monkeypatch) -> None:
    """recipes/*.yaml point at the tiny demo's models: without them the error says how to make them."""
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "ties.yaml"
    res = run("merge", "--recipe", recipe, "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert "modelops-demo/models/base: no such file or folder" in res.output
    assert "`modelops demo --preset tiny` creates the demo models" in res.output


def test_alpha_below_minus_one_is_refused_by_the_registry(llama_family, tmp_path: Path) -> None:
    res = run("extrapolate", "--sft", llama_family["sft"], "--dpo", llama_family["dpo"], "--alpha", "-2", "--out",
              tmp_path / "o")  # fmt: skip
    assert res.exit_code == 1
    assert (
        res.output.strip().splitlines()[-1]
        == "Error: extrapolate: parameters.alpha: -2.0 is below -1.0; it must be ≥ -1.0"
    )
    assert not (tmp_path / "o").exists()
