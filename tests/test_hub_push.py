"""`modelops push` against a real HTTP Hub server (tests/hub_server.py) with the real huggingface_hub client.

The flow is the user's: inputs pulled from the Hub, `modelops extrapolate`, then `modelops push`; everything is
downloaded back with `snapshot_download` and compared byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hub_fixtures import BAD_TOKEN, READ_TOKEN, TOKEN, files_of, hub, one_line, tiny_llama  # noqa: F401
from typer.testing import CliRunner

from modelops.cli.main import app


@pytest.fixture(scope="module")
def expo_out(hub, tmp_path_factory) -> Path:  # noqa: F811
    """org/sft and org/dpo published, then extrapolated from the Hub into a sharded folder (with card)."""
    root = tmp_path_factory.mktemp("expo")
    for name, seed in (("sft", 1), ("dpo", 2)):
        r = hub.modelops("push", str(tiny_llama(root / name, seed)), f"org/{name}", "-q")
        assert r.returncode == 0, r.stderr
    out = root / "expo-out"
    r = hub.modelops(
        "extrapolate", "--sft", "org/sft", "--dpo", "org/dpo@main", "--alpha", "0.3", "--out", str(out),
        "--shard-size", "4KB", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def test_push_then_download_gives_identical_files_and_a_valid_card(hub, expo_out, tmp_path) -> None:  # noqa: F811
    assert len(list(expo_out.glob("model-*.safetensors"))) > 1  # sharded, with an index
    r = hub.modelops("push", str(expo_out), "org/expo-tiny", "--private")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Pushed ") and "org/expo-tiny@main" in r.stdout
    assert TOKEN not in r.stdout + r.stderr
    assert len(hub.commits("org/expo-tiny")) == 2  # the repo's initial commit + ours
    assert hub.server.state.repos["org/expo-tiny"].private

    got = files_of(hub.download("org/expo-tiny", tmp_path / "dl"))
    got.pop(".gitattributes")
    assert got == files_of(expo_out)  # every file, byte for byte

    # the client had the server check the card's metadata before uploading it
    meta = hub.server.state.card_checks[-1]
    assert meta["base_model"] == ["org/sft", "org/dpo"]
    assert meta["base_model_relation"] == "merge"
    assert {"modelops", "merge", "expo"} <= set(meta["tags"])
    recipe = yaml.safe_load((expo_out / "modelops_recipe.yaml").read_text())
    commits = {i["repo_id"]: i["commit"] for i in recipe["modelops"]["inputs"]}
    assert commits == {"org/sft": hub.commits("org/sft")[0], "org/dpo": hub.commits("org/dpo")[0]}


def test_second_push_of_the_same_folder_makes_no_commit(hub, expo_out) -> None:  # noqa: F811
    r = hub.modelops("push", str(expo_out), "org/expo-same", "-q")
    assert r.returncode == 0, r.stderr
    before = hub.commits("org/expo-same")
    r = hub.modelops("push", str(expo_out), "org/expo-same", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Nothing changed")
    assert hub.commits("org/expo-same") == before


def test_push_to_a_new_branch_leaves_main_alone(hub, expo_out, tmp_path) -> None:  # noqa: F811
    r = hub.modelops("push", str(expo_out), "org/expo-branch", "-q")
    assert r.returncode == 0, r.stderr
    main_before = hub.commits("org/expo-branch")
    edited = tmp_path / "edited"
    shutil.copytree(expo_out, edited)
    (tmp_path / "extra.md").write_text("## Intended use\n\nTests only.\n")
    r = hub.modelops("card", str(edited), "--extra-text", str(tmp_path / "extra.md"), "-q")
    assert r.returncode == 0, r.stderr

    r = hub.modelops("push", str(edited), "org/expo-branch", "--revision", "dev", "-q")
    assert r.returncode == 0, r.stderr
    assert "org/expo-branch@dev" in r.stdout
    assert hub.commits("org/expo-branch") == main_before
    assert hub.commits("org/expo-branch", "dev")[1:] == main_before  # dev = main + one commit
    got = files_of(hub.download("org/expo-branch", tmp_path / "dl", revision="dev"))
    got.pop(".gitattributes")
    assert got == files_of(edited)
    assert "Tests only." in got["README.md"].decode()


def test_create_pr_opens_a_pull_request_and_leaves_main_alone(hub, expo_out, tmp_path) -> None:  # noqa: F811
    r = hub.modelops("push", str(expo_out), "org/expo-pr", "-q")
    assert r.returncode == 0, r.stderr
    main_before = hub.commits("org/expo-pr")
    edited = tmp_path / "edited"
    shutil.copytree(expo_out, edited)
    (edited / "notes.txt").write_text("changed\n")
    r = hub.modelops("push", str(edited), "org/expo-pr", "--create-pr", "--commit-message", "Add notes", "-q")
    assert r.returncode == 0, r.stderr
    assert "pull request" in r.stdout and "/discussions/1" in r.stdout
    assert hub.commits("org/expo-pr") == main_before
    pr = hub.server.state.commits_on("org/expo-pr", "refs/pr/1")[0]
    assert pr.message == "Add notes" and "notes.txt" in pr.files


def test_resharded_push_removes_old_shards(hub, expo_out, tmp_path) -> None:  # noqa: F811
    r = hub.modelops("push", str(expo_out), "org/expo-reshard", "-q")
    assert r.returncode == 0, r.stderr
    single = tmp_path / "single"
    r = hub.modelops(
        "extrapolate", "--sft", "org/sft", "--dpo", "org/dpo", "--alpha", "0.3", "--out", str(single), "-q"
    )
    assert r.returncode == 0, r.stderr
    r = hub.modelops("push", str(single), "org/expo-reshard", "-q")
    assert r.returncode == 0, r.stderr
    remote = set(hub.server.state.commits_on("org/expo-reshard")[0].files) - {".gitattributes"}
    assert remote == set(files_of(single))


@pytest.mark.parametrize(
    ("token", "repo", "expected"),
    [
        (BAD_TOKEN, "org/denied", "rejected the token"),
        (READ_TOKEN, "org/denied", "no write access to org/denied"),
        (TOKEN, "bob/denied", "no write access to bob/denied"),
    ],
)
def test_refused_token_is_one_line_exit_1(hub, expo_out, token, repo, expected) -> None:  # noqa: F811
    r = hub.modelops("push", str(expo_out), repo, "--token", token, HF_TOKEN="")
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert expected in line
    assert token not in r.stdout + r.stderr
    assert repo not in hub.server.state.repos


def _break(kind: str, folder: Path) -> None:
    index = folder / "model.safetensors.index.json"
    if kind == "missing shard":
        next(folder.glob("model-0000[2-9]-*.safetensors")).unlink()
    elif kind == "leftover shard":
        shutil.copy(next(folder.glob("model-*.safetensors")), folder / "model-00001-of-00099.safetensors")
    elif kind == "wrong index":
        data = json.loads(index.read_text())
        name = next(iter(data["weight_map"]))
        others = sorted(set(data["weight_map"].values()) - {data["weight_map"][name]})
        data["weight_map"][name] = others[0]
        index.write_text(json.dumps(data))
    elif kind == "truncated shard":
        shard = next(folder.glob("model-*.safetensors"))
        shard.write_bytes(shard.read_bytes()[:100])
    elif kind == "no config":
        (folder / "config.json").unlink()
    elif kind == "temp file":
        (folder / "model-00001-of-00002.safetensors.modelops-tmp-123").write_bytes(b"x")
    elif kind == "tmp suffix":
        (folder / "notes.tmp").write_text("x")
    elif kind == "pycache":
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "x.pyc").write_bytes(b"x")
    elif kind == "own path":
        (folder / "notes.md").write_text(f"made in {folder.resolve()}\n")
    elif kind == "home path":
        (folder / "notes.md").write_text(f"see {Path.home()}/models/sft\n")
    elif kind == "tmp path":
        (folder / "train_args.json").write_text(json.dumps({"output_dir": "/tmp/run1/out"}))
    elif kind == "user path":
        (folder / "notes.md").write_text("copied from /Users/alice/ckpt\n")
    elif kind == "the token":
        (folder / "notes.md").write_text(f"token={TOKEN}\n")
    elif kind == "a token":
        (folder / "config.json").write_text(json.dumps({"hub_token": "hf_" + "x1" * 17}))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing shard", "missing"),
        ("leftover shard", "not listed in the weights index"),
        ("wrong index", "the index is stale"),
        ("truncated shard", "not a readable safetensors file"),
        ("no config", "no config.json"),
        ("temp file", "stray temporary file"),
        ("tmp suffix", "stray temporary file"),
        ("pycache", "stray temporary folder"),
        ("own path", "contains the local path"),
        ("home path", "local path"),
        ("tmp path", "absolute local path (/tmp/run1/out)"),
        ("user path", "absolute local path (/Users/alice/ckpt)"),
        ("the token", "contains your Hugging Face token"),
        ("a token", "shaped like a Hugging Face token"),
    ],
)
def test_invalid_folder_is_refused_before_any_upload(hub, expo_out, tmp_path, kind, expected) -> None:  # noqa: F811
    folder = tmp_path / "bad"
    shutil.copytree(expo_out, folder)
    _break(kind, folder)
    writes = hub.writes()
    # validation is local: run in-process (no server needed) with an explicit token
    result = CliRunner().invoke(app, ["push", str(folder), "org/never", "--token", TOKEN])
    assert result.exit_code == 1, result.output
    line = one_line(result.output)
    assert expected in line, line
    assert TOKEN not in result.output
    assert hub.writes() == writes and "org/never" not in hub.server.state.repos


def test_usage_errors_exit_2(expo_out) -> None:
    r = CliRunner().invoke(app, ["push", str(expo_out), "org/x", "--create-pr", "--revision", "dev"])
    assert r.exit_code == 2
    r = CliRunner().invoke(app, ["push", str(expo_out), "not-a-repo-id"])
    assert r.exit_code == 2


def test_extrapolate_push_to_publishes_what_it_wrote(hub, expo_out, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "pushed"
    r = hub.modelops(
        "extrapolate", "--sft", "org/sft", "--dpo", "org/dpo", "--alpha", "0.5", "--out", str(out),
        "--push-to", "org/expo-direct", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "org/expo-direct@main" in r.stdout and TOKEN not in r.stdout + r.stderr
    got, written = files_of(hub.download("org/expo-direct", tmp_path / "dl")), files_of(out)
    assert {name: got.get(name) for name in written} == written
    r = hub.modelops("merge", "--method", "linear", "--model", "org/sft", "--model", "org/dpo", "--param", "weight=1",
                     "--out", str(tmp_path / "m"), "--push-to", "org/m", "--create-pr", "--revision", "dev")  # fmt: skip
    assert r.returncode == 2


def test_extract_lora_push_to_publishes_a_peft_adapter(hub, expo_out, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "adapter"
    r = hub.modelops(
        "extract-lora", "--base", "org/sft", "--tuned", "org/dpo", "--rank", "4", "--out", str(out),
        "--push-to", "org/adapter", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got, written = files_of(hub.download("org/adapter", tmp_path / "dl")), files_of(out)
    assert "adapter_config.json" in written and {name: got.get(name) for name in written} == written
    assert b"library_name: peft" in written["README.md"]
