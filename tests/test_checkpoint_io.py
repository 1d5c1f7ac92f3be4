"""Checkpoint I/O: headers without data, the streaming shard writer, atomic outputs, refusal of bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modelops.checkpoint import (
    AtomicOutput,
    Checkpoint,
    CheckpointWriter,
    TensorSpec,
    check_output_location,
    parse_size,
    resolve_source,
)
from modelops.errors import CheckpointError, OutputError, SourceError


def test_headers_match_safe_open_for_sharded_and_single(llama_family) -> None:
    for key in ("base", "sft"):
        ck = Checkpoint.open(llama_family[key])
        seen = {}
        for f in ck.folder.glob("*.safetensors"):
            with safe_open(str(f), framework="pt") as h:
                for name in h.keys():  # noqa: SIM118
                    t = h.get_tensor(name)
                    seen[name] = (tuple(t.shape), str(t.dtype).removeprefix("torch."))
        assert {n: (i.shape, i.dtype) for n, i in ck.tensors.items()} == seen
        assert torch.equal(ck.get("lm_head.weight"), load_file_any(ck.folder)["lm_head.weight"])
    assert len(Checkpoint.open(llama_family["base"]).weight_files) > 1


def load_file_any(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


def test_single_safetensors_file_is_a_source(llama_family) -> None:
    ck = Checkpoint.open(llama_family["sft"] / "model.safetensors")
    assert "lm_head.weight" in ck


def test_writer_streams_shards_readable_by_safetensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(64, 32, generator=g),
        "b.weight": torch.randn(100, generator=g).bfloat16(),
        "c.ids": torch.arange(10, dtype=torch.int64),
        "d.scalar": torch.tensor(3.5),
        "e.half": torch.randn(7, 3, generator=g).half(),
    }
    specs = [TensorSpec(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()]
    writer = CheckpointWriter(tmp_path, specs, max_shard_size="4KB")
    for spec in writer.order:
        writer.write(spec.name, tensors[spec.name])
    files = writer.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(s.nbytes for s in specs)
    assert set(index["weight_map"].values()) == set(files) - {"model.safetensors.index.json"}
    assert all(f.startswith("model-0000") for f in index["weight_map"].values())
    back = load_file_any(tmp_path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_writer_refuses_out_of_plan_tensors(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path, [TensorSpec("x", (2,), "float32")])
    with pytest.raises(RuntimeError, match="planned"):
        writer.write("x", torch.zeros(3))
    writer.abort()


def test_parse_size() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(17) == 17
    with pytest.raises(CheckpointError, match="not a size"):
        parse_size("lots")


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(ValueError), AtomicOutput(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise ValueError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_overwrite_replaces_the_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "model-00009-of-00009.safetensors").write_bytes(b"stale")
    with AtomicOutput(target, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]


def test_output_location_rules(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "model.safetensors").write_bytes(b"x")
    with pytest.raises(OutputError, match="inside input"):
        check_output_location(inp, [inp], overwrite=True)
    with pytest.raises(OutputError, match="inside input"):
        check_output_location(inp / "sub", [inp], overwrite=True)
    with pytest.raises(OutputError, match="is inside output"):
        check_output_location(tmp_path, [inp], overwrite=True)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        check_output_location(full, [inp], overwrite=False)
    check_output_location(full, [inp], overwrite=True)


def test_corrupt_and_truncated_files_are_refused(llama_family, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Checkpoint.open(bad)
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    data = (llama_family["sft"] / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc"):
        Checkpoint.open(trunc)


def test_missing_shard_in_index(llama_family, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(llama_family["base"], broken)
    victim = sorted(broken.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        Checkpoint.open(broken)


def test_pickles_refused_unless_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "pkl"
    folder.mkdir()
    torch.save({"w": torch.ones(2, 3)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        Checkpoint.open(folder)
    ck = Checkpoint.open(folder, allow_pickle=True)
    assert ck.tensors["w"].shape == (2, 3) and torch.equal(ck.get("w"), torch.ones(2, 3))


def test_folder_without_weights_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no \.safetensors"):
        Checkpoint.open(tmp_path / "empty")
    with pytest.raises(SourceError, match="no such file"):
        resolve_source(str(tmp_path / "nope"))


def test_hub_ids_resolve_through_the_local_cache_offline(tmp_path: Path, monkeypatch) -> None:
    """A repo in the HF cache layout resolves with HF_HUB_OFFLINE=1; an unknown one gives one clear line."""
    cache = tmp_path / "hub"
    commit = "a" * 40
    snap = cache / "models--org--tiny" / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, snap / "model.safetensors")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    src = resolve_source("org/tiny")
    assert src.repo_id == "org/tiny" and src.commit == commit
    assert Checkpoint(src).tensors["w"].shape == (2,)
    with pytest.raises(SourceError, match="org/other"):
        resolve_source("org/other@main")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_fingerprint_tells_two_fine_tunes_of_one_architecture_apart(llama_family) -> None:
    from modelops.checkpoint import Checkpoint
    from modelops.provenance import fingerprint_sha256

    a, b = Checkpoint.open(llama_family["sft"]), Checkpoint.open(llama_family["dpo"])
    assert a.tensors.keys() == b.tensors.keys()  # same layout …
    assert fingerprint_sha256(a) != fingerprint_sha256(b)  # … different weights
    assert fingerprint_sha256(a) == fingerprint_sha256(Checkpoint.open(llama_family["sft"]))


def test_the_write_thread_waits_when_its_queue_is_full_and_keeps_the_order(tmp_path) -> None:
    """Blocks past the byte limit wait for the disk (here a pipe nobody reads yet), then land in order."""
    import threading

    from modelops.checkpoint.writer import _WriteBehind

    read_end, write_end = os.pipe()
    pipe = os.fdopen(write_end, "wb", buffering=0)
    behind = _WriteBehind(limit=100_000)
    first = torch.arange(200_000, dtype=torch.uint8)  # bigger than the pipe's buffer: the thread blocks on it
    second = torch.full((10,), 7, dtype=torch.uint8)
    behind.submit(pipe, memoryview(first.numpy()), first)
    returned = threading.Event()
    threading.Thread(target=lambda: (behind.submit(pipe, memoryview(second.numpy()), second), returned.set())).start()
    assert not returned.wait(0.5)  # 200 kB queued, over the limit: the second block waits
    got = bytearray()
    while len(got) < 200_010:
        got += os.read(read_end, 1 << 16)
    assert returned.wait(5)
    behind.drain()
    behind.stop()
    pipe.close()
    os.close(read_end)
    assert bytes(got) == first.numpy().tobytes() + second.numpy().tobytes()


def test_a_failed_write_in_the_thread_is_raised_to_the_caller(tmp_path) -> None:
    from modelops.checkpoint.writer import _WriteBehind

    path = tmp_path / "f.bin"
    path.write_bytes(b"")
    data = torch.ones(8, dtype=torch.uint8)
    behind = _WriteBehind()
    with path.open("rb") as read_only:
        behind.submit(read_only, memoryview(data.numpy()), data)
        with pytest.raises(OSError, match="write"):
            behind.drain()
    behind.stop()
