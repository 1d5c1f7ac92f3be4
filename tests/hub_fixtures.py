"""Fixtures for the Hub tests: a live test Hub server, tiny Llama checkpoints, and CLI runs in subprocesses.

The real huggingface_hub client reads HF_ENDPOINT once, at import, and the test session runs with
HF_HUB_OFFLINE=1 (conftest), so every Hub call goes through a `modelops` subprocess with its own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import HubServer

TOKEN = "hf_" + "T0kenForTests" * 3  # write access to alice and org
READ_TOKEN = "hf_" + "ReadOnlyToken" * 3  # read-only
BAD_TOKEN = "hf_" + "NotAToken" * 4


@dataclass
class Hub:
    server: HubServer
    home: Path  # HF_HOME of the client subprocesses (cache, no saved token)

    @property
    def url(self) -> str:
        return self.server.url

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "MODELOPS_DEBUG"):
            env.pop(key, None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(self.home),
            HF_TOKEN=TOKEN,
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            OMP_NUM_THREADS="1",
        )
        env.update(overrides)
        return env

    def modelops(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the real CLI against this server."""
        code = "from modelops.cli.main import main; main()"
        return subprocess.run(
            [sys.executable, "-c", code, *args], env=self.env(**env), capture_output=True, text=True, timeout=120
        )

    def python(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run client code (e.g. snapshot_download) against this server."""
        return subprocess.run([sys.executable, "-c", code], env=self.env(**env), capture_output=True, text=True)

    def download(self, repo_id: str, dest: Path, revision: str = "main") -> Path:
        code = (
            "from huggingface_hub import snapshot_download;"
            f"snapshot_download({repo_id!r}, revision={revision!r}, local_dir={str(dest)!r})"
        )
        r = self.python(code)
        assert r.returncode == 0, r.stderr
        return dest

    def commits(self, repo_id: str, ref: str = "main") -> list[str]:
        return [c.oid for c in self.server.state.commits_on(repo_id, ref)]

    def writes(self) -> int:
        """POST requests seen so far (a failed validation must send none)."""
        return sum(1 for m, _ in self.server.state.requests if m == "POST")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("hub")
    tokens = {
        TOKEN: {"name": "alice", "orgs": ["org"], "role": "write"},
        READ_TOKEN: {"name": "reader", "orgs": ["org"], "role": "read"},
    }
    with HubServer(root / "server", tokens) as server:
        yield Hub(server=server, home=root / "client-home")


def tiny_llama(path: Path, seed: int, vocab: int = 64) -> Path:
    """A from-config Llama with hidden size 16 (a few KB of weights), saved with safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative posix path -> bytes), skipping the client's cache folder."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def one_line(text: str) -> str:
    """The single `Error:` line of a failed command (and assert there is exactly one)."""
    lines = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]
