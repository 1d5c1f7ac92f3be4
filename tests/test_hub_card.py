"""Model cards: metadata parsed back with `ModelCard.load`, the recipe embedded verbatim, written with no network."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from hub_fixtures import one_line, tiny_llama
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from modelops.api import write_card as write_model_card
from modelops.cli.main import app


def _recipe(operation: str, inputs: list[dict], **top) -> dict:
    block = {"version": "0.1.0", "operation": operation, "inputs": inputs, "metrics": top.pop("metrics", {})}
    return {**top, "modelops": block}


def _input(role: str, repo_id: str | None, source: str | None = None) -> dict:
    commit = "a" * 40 if repo_id else None
    return {"role": role, "source": source or repo_id, "repo_id": repo_id, "revision": "main" if repo_id else None,
            "commit": commit, "fingerprint_sha256": "f" * 64}  # fmt: skip


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network call while writing a card: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _folder(tmp_path: Path, recipe: dict, *, adapter: bool = False) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    if adapter:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    else:
        (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "modelops_recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


def test_expo_card_fields_and_embedded_recipe(tmp_path, no_network) -> None:
    recipe = _recipe(
        "extrapolate",
        [_input("sft", "org/sft"), _input("dpo", "org/dpo")],
        merge_method="expo", base_model="org/sft@main", models=[{"model": "org/dpo"}], parameters={"alpha": 0.3},
        dtype="float32", metrics={"update_survival": 0.6712, "alpha_curve": [{"alpha": 0.1, "reward": 1.5}]},
    )  # fmt: skip
    folder = _folder(tmp_path, recipe)
    path = write_model_card(folder)

    card = ModelCard.load(path)
    assert card.data.base_model == ["org/sft", "org/dpo"]
    assert card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"modelops", "merge", "expo"} <= set(card.data.tags)
    recipe_text = (folder / "modelops_recipe.yaml").read_text()
    assert f"```yaml\n{recipe_text}```" in card.text  # the exact file, verbatim
    assert "https://arxiv.org/abs/2404.16792" in card.text
    assert "| update_survival | 0.6712 |" in card.text
    assert "reward: 1.5" in card.text  # nested metrics as YAML
    assert "a" * 40 in card.text and "0.1.0" in card.text  # input commits and modelops version
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    homepage = re.search(r'^Homepage = "([^"]+)"', pyproject, re.M).group(1)
    assert f"made with [modelops]({homepage})" in card.text  # the project's own URL, from its metadata


def test_adapter_card_is_peft_with_adapter_relation(tmp_path, no_network) -> None:
    recipe = _recipe("extract-lora", [_input("base", "org/base"), _input("tuned", "org/tuned")])
    card = ModelCard.load(write_model_card(_folder(tmp_path, recipe, adapter=True)))
    assert card.data.library_name == "peft"
    assert card.data.base_model_relation == "adapter"
    assert card.data.base_model == ["org/base", "org/tuned"]
    assert {"modelops", "extract-lora", "lora", "peft"} <= set(card.data.tags) and "merge" not in card.data.tags
    assert "https://arxiv.org/abs/2106.09685" in card.text


def test_applied_lora_is_a_finetune_of_its_base(tmp_path, no_network) -> None:
    recipe = _recipe("apply-lora", [_input("base", "org/base"), _input("adapter", "org/lora")])
    card = ModelCard.load(write_model_card(_folder(tmp_path, recipe)))
    assert card.data.base_model == ["org/base"]
    assert card.data.base_model_relation == "finetune"


def test_local_inputs_are_listed_but_not_claimed_as_base_models(tmp_path, no_network) -> None:
    recipe = _recipe("merge", [_input("base", None, "base"), _input("model", "org/ft")], merge_method="ties")
    card = ModelCard.load(write_model_card(_folder(tmp_path, recipe)))
    assert card.data.base_model == ["org/ft"]
    assert "| base | base |" in card.text
    assert "https://arxiv.org/abs/2306.01708" in card.text  # TIES paper, from the merge registry


def test_template_and_extra_text(tmp_path, no_network) -> None:
    recipe = _recipe("extrapolate", [_input("sft", "org/sft"), _input("dpo", "org/dpo")], merge_method="expo")
    folder = _folder(tmp_path, recipe)
    template = tmp_path / "card.md.j2"
    template.write_text("# My model ({{ method_title }})\n\nHouse intro.\n\n{{ default_body }}\n")
    extra = tmp_path / "extra.md"
    extra.write_text("## License\n\nApache-2.0 like its inputs.\n")
    result = CliRunner().invoke(app, ["card", str(folder), "--template", str(template), "--extra-text", str(extra)])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == ["org/sft", "org/dpo"]  # front matter added to a template without one
    assert card.text.lstrip().startswith("# My model (ExPO (model extrapolation))")
    assert "House intro." in card.text and "Apache-2.0 like its inputs." in card.text
    assert "```yaml\n" in card.text


def test_card_cli_works_offline_on_a_real_extrapolate_output(tmp_path) -> None:
    sft, dpo = tiny_llama(tmp_path / "sft", 1), tiny_llama(tmp_path / "dpo", 2)
    out = tmp_path / "expo"
    r = CliRunner().invoke(
        app, ["extrapolate", "--sft", str(sft), "--dpo", str(dpo), "--alpha", "0.5", "--out", str(out), "-q"]
    )
    assert r.exit_code == 0, r.output
    card = ModelCard.load(out / "README.md")  # written by the command itself
    assert card.data.tags[:3] == ["modelops", "merge", "expo"]
    assert card.text.lstrip().startswith("# expo\n")  # named after the output, not its temp folder
    assert str(tmp_path) not in (out / "README.md").read_text()
    (out / "README.md").unlink()
    r = CliRunner().invoke(app, ["card", str(out)])
    assert r.exit_code == 0 and (out / "README.md").is_file()


def test_missing_recipe_is_one_line_exit_1(tmp_path) -> None:
    folder = tmp_path / "plain"
    tiny_llama(folder, 0)
    result = CliRunner().invoke(app, ["card", str(folder)])
    assert result.exit_code == 1
    assert "modelops_recipe.yaml: missing" in one_line(result.output)
