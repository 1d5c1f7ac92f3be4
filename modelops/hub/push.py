"""Publish an output folder to the Hugging Face Hub: validate locally, then `create_repo` + `upload_folder`.

The token comes from the caller or the standard huggingface_hub login/env (`HF_TOKEN`, `hf auth login`). It is
passed to `HfApi` only: never logged, and scrubbed from any error text. Unchanged files are skipped by
`upload_folder` itself (the Hub's preupload answer carries each remote file's id), so pushing the same folder
twice makes no new commit; weight files on the remote that the folder no longer has (old shards) are deleted
in the same commit so the repo never mixes two shardings.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from modelops.errors import ModelopsError
from modelops.hub.validate import FolderReport, validate_folder
from modelops.version import __version__

logger = logging.getLogger(__name__)

# Remote weight files not in the folder are removed so an old sharding cannot shadow the new one.
STALE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth"]
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class PushError(ModelopsError):
    """The Hub refused or could not be reached."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    commit_oid: str
    changed: bool  # False: nothing differed from the remote, no commit was made
    pr_url: str | None
    report: FolderReport


def push_folder(
    folder: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> PushResult:
    """Validate `folder` (loads, complete, no temp files, no token or local path inside), create `repo_id` if needed
    (and the branch `revision`), and upload what changed; an unchanged folder makes no new commit."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder).expanduser()
    if create_pr and revision not in (None, "main"):
        raise PushError("--create-pr opens a pull request against main; do not combine it with --revision")
    token_source = "--token" if token else ("HF_TOKEN" if os.environ.get("HF_TOKEN") else "your saved login")
    token = token or get_token()
    report = validate_folder(folder, token=token)
    if not (folder / "README.md").is_file():
        logger.warning("warning: %s has no README.md model card; run `modelops card %s` to write one", folder, folder)
    if not token:
        raise PushError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`")

    api = HfApi(library_name="modelops", library_version=__version__, token=token)
    branch = revision or "main"
    with _hub_errors(repo_id, token, token_source):
        api.whoami()
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main" and not create_pr and not _COMMIT.match(branch) and not branch.startswith("refs/"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        before = api.repo_info(repo_id, revision=branch).sha
        message = commit_message or f"Upload {folder.resolve().name} with modelops {__version__}"
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=None if create_pr else branch,
            create_pr=create_pr,
            commit_message=message,
            delete_patterns=STALE_PATTERNS,
        )
    changed = info.oid != before
    logger.debug("%s %s@%s", "pushed to" if changed else "unchanged:", repo_id, branch)
    return PushResult(
        repo_id=repo_id,
        revision=branch,
        commit_url=info.commit_url,
        commit_oid=info.oid,
        changed=changed,
        pr_url=info.pr_url,
        report=report,
    )


class _hub_errors:
    """Turn huggingface_hub / network exceptions into one PushError line, with the token scrubbed."""

    def __init__(self, repo_id: str, token: str, token_source: str) -> None:
        self.repo_id, self.token, self.token_source = repo_id, token, token_source

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, ModelopsError) or not isinstance(exc, Exception):
            return False
        from huggingface_hub import constants
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            detail = _server_message(exc)
            if status == 401:
                line = f"the Hub rejected the token from {self.token_source} (401: {detail}); check it or log in again"
            elif status == 403:
                line = f"no write access to {self.repo_id} with the token from {self.token_source} (403: {detail})"
            elif status == 404:
                line = f"{self.repo_id}: not found or not accessible (404: {detail})"
            else:
                line = f"{self.repo_id}: the Hub answered {status} ({detail})"
        elif isinstance(exc, (OSError, ConnectionError)) or type(exc).__module__.startswith(("httpx", "httpcore")):
            line = f"cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__}: {exc}); check the network"
        elif isinstance(exc, ValueError):
            line = f"{self.repo_id}: {exc}"
        else:
            return False
        raise PushError(_scrub(line, self.token)) from None


def _server_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    message = None
    if response is not None:
        message = response.headers.get("X-Error-Message")
        if not message:
            try:
                message = response.json().get("error")
            except Exception:
                message = None
    return str(message or str(exc).splitlines()[0]).strip()


def _scrub(text: str, token: str | None) -> str:
    text = " ".join(text.split())
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{30,}", "hf_***", text)
