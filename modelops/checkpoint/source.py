"""Turn what the user typed (a folder, a file, `org/name@rev`) into a local folder of files.

Hub sources go through `huggingface_hub.snapshot_download`, so a model already in the local HF cache resolves
offline (HF_HUB_OFFLINE=1) and a private or gated repo uses the user's normal login.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from modelops.errors import SourceError

logger = logging.getLogger(__name__)

# Files a weight operation needs from a repo: weights, configs, tokenizer. Never README/images/pickles.
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedSource:
    """A source the user named, and where its files are on disk."""

    spec: str  # what the user wrote, e.g. "org/name@v1" or "./ckpt"
    path: Path  # local folder (or single .safetensors file)
    repo_id: str | None = None  # set for Hub sources
    revision: str | None = None  # requested revision (branch, tag or commit)
    commit: str | None = None  # resolved commit hash for Hub sources, when known

    @property
    def display(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "") if self.repo_id else str(self.path)


def split_revision(spec: str) -> tuple[str, str | None]:
    """`org/name@rev` -> ("org/name", "rev"); a local path keeps any '@' it has if it exists."""
    if "@" in spec and not Path(spec).exists():
        name, _, rev = spec.rpartition("@")
        return name, rev or None
    return spec, None


DEMO_MODELS = "modelops-demo/models/"  # where `modelops demo --preset tiny` writes the models the recipes use


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "/", "~"))


def resolve_source(spec: str, *, allow_patterns: list[str] | None = None) -> ResolvedSource:
    """Resolve a local path or a Hub repo id (optionally `@revision`) to files on disk."""
    spec = str(spec)
    local = Path(spec).expanduser()
    if local.exists():
        return ResolvedSource(spec=spec, path=local.resolve())
    name, revision = split_revision(spec)
    if not looks_like_repo_id(name):
        hint = ""
        if DEMO_MODELS in Path(spec).as_posix():  # what recipes/*.yaml point at
            hint = "; `modelops demo --preset tiny` creates the demo models there (run it from this folder)"
        raise SourceError(f"{spec}: no such file or folder (and not a Hub repo id like org/name[@revision]){hint}")
    return _resolve_hub(spec, name, revision, allow_patterns or HUB_ALLOW_PATTERNS)


def _resolve_hub(spec: str, repo_id: str, revision: str | None, allow_patterns: list[str]) -> ResolvedSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns)
    except RevisionNotFoundError:
        raise SourceError(f"{spec}: revision {revision!r} not found in {repo_id}") from None
    except GatedRepoError:
        raise SourceError(f"{spec}: repo is gated; accept its terms on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"{spec}: not a local folder, and no Hub repo {repo_id} (or no access: log in or pass a token)"
        ) from None
    except LocalEntryNotFoundError:
        raise SourceError(
            f"{spec}: not a local folder, not in the local HF cache, and the Hub is unreachable "
            "(download it once online, or give a local path)"
        ) from None
    except OSError as exc:  # network errors surface as OSError subclasses (requests/httpx)
        raise SourceError(f"{spec}: could not download from the Hub: {exc}") from None
    path = Path(folder)
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else None
    return ResolvedSource(spec=spec, path=path, repo_id=repo_id, revision=revision, commit=commit)
