"""A Hub checkpoint known from its safetensors headers alone: for dry runs that check shapes before a download.

`huggingface_hub.get_safetensors_metadata` reads each shard's header with an HTTP range request, and the config is
one small JSON file, so architecture, shape and vocabulary mismatches show up before any weight is fetched.
"""

from __future__ import annotations

from pathlib import Path

import torch

from modelops.checkpoint.reader import _ST_DTYPES, Checkpoint, TensorInfo
from modelops.checkpoint.source import ResolvedSource, looks_like_repo_id, split_revision
from modelops.errors import CheckpointError, SourceError


class HeaderCheckpoint(Checkpoint):
    """Tensor names, shapes and dtypes of a Hub repo (and its config), without its weights."""

    def __init__(self, source: ResolvedSource, tensors: dict[str, TensorInfo]) -> None:
        self.source = source
        self.allow_pickle = False
        self.folder = source.path
        self.weight_files = sorted({t.file for t in tensors.values()})
        self.kind = "remote-headers"
        self.tensors = tensors
        self._pickles = {}

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        raise CheckpointError(f"{self.name}: only its headers were read (dry run); run without --dry-run to merge")


def open_headers(spec: str, *, allow_pickle: bool = False) -> Checkpoint:
    """A local checkpoint as usual; a Hub repo id from its headers (no weight download)."""
    from huggingface_hub import constants

    if Path(spec).expanduser().exists() or constants.HF_HUB_OFFLINE:  # offline: the local HF cache, as usual
        return Checkpoint.open(spec, allow_pickle=allow_pickle)
    repo_id, revision = split_revision(spec)
    if not looks_like_repo_id(repo_id):
        raise SourceError(f"{spec}: no such file or folder (and not a Hub repo id like org/name[@revision])")
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, NotASafetensorsRepoError

    try:
        meta = HfApi().get_safetensors_metadata(repo_id, revision=revision)
        try:
            config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
        except EntryNotFoundError:
            config = None
    except NotASafetensorsRepoError:
        if not HfApi().repo_exists(repo_id):
            raise SourceError(f"{spec}: no Hub repo {repo_id} (or no access: log in or pass a token)") from None
        raise SourceError(
            f"{spec}: the repo has no safetensors weights (a dry run reads safetensors headers)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise SourceError(f"{spec}: could not read its headers from the Hub ({str(exc).splitlines()[0]})") from None
    tensors = {
        name: TensorInfo(name, tuple(info.shape), _ST_DTYPES.get(info.dtype, info.dtype.lower()), file)
        for file, fmeta in meta.files_metadata.items()
        for name, info in fmeta.tensors.items()
    }
    folder = config.parent if config is not None else Path(".")
    commit = folder.name if config is not None and len(folder.name) == 40 else None
    return HeaderCheckpoint(ResolvedSource(spec, folder, repo_id, revision, commit), tensors)
