"""`modelops push OUT_DIR ORG/NAME`: validate an output folder, then publish it to the Hugging Face Hub.

The option aliases below (`PushTo`, `Private`, `Revision`, `CreatePr`, `CommitMessage`, `Token`) are shared by
every command that writes a folder and takes `--push-to`; `push_after_write` is the one call those commands make.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Quiet, handle_errors, human_bytes, setup

PushTo = Annotated[
    str | None, typer.Option("--push-to", help="After writing, publish the folder to this Hub repo (org/name).")
]
Private = Annotated[bool, typer.Option("--private", help="Create the repo as private (an existing repo is unchanged).")]
Revision = Annotated[
    str | None, typer.Option("--revision", help="Branch to push to (created from main if missing); default main.")
]
CreatePr = Annotated[bool, typer.Option("--create-pr", help="Open a pull request against main instead of committing.")]
CommitMessage = Annotated[str | None, typer.Option("--commit-message", help="Commit title (default: Upload NAME).")]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Hub token (default: HF_TOKEN or your `hf auth login`). Never printed or saved.",
        show_default=False,
    ),
]


def check_push_options(repo_id: str | None, *, create_pr: bool, revision: str | None, repo_hint: str) -> None:
    """Usage errors (exit 2) for the push options, raised before any work is done."""
    if create_pr and revision not in (None, "main"):
        raise typer.BadParameter("--create-pr always targets main; drop --revision", param_hint="--create-pr")
    if repo_id is not None and (repo_id.count("/") != 1 or repo_id.startswith(("/", "."))):
        raise typer.BadParameter(f"{repo_id!r} is not a Hub repo id like org/name", param_hint=repo_hint)


def push_after_write(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    quiet: bool = False,
) -> None:
    """Push `folder` and print one result line (stdout). Raises ModelopsError on refusal (caller's @handle_errors)."""
    if not quiet:
        typer.echo(f"Validating {folder} and pushing to {repo_id} ...", err=True)
    else:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # we report the outcome ourselves, in one line
    for noisy in ("httpx2", "httpx", "httpcore"):  # request logs would drown the result line
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from modelops.hub.push import push_folder

    result = push_folder(
        folder,
        repo_id,
        private=private,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
        token=token,
    )
    size = f"{len(result.report.files)} files, {human_bytes(result.report.total_bytes)}"
    if result.pr_url:
        typer.echo(f"Opened pull request {result.pr_url} on {result.repo_id} ({size})")
    elif result.changed:
        typer.echo(f"Pushed {folder} to {result.repo_id}@{result.revision} ({size}): {result.commit_url}")
    else:
        typer.echo(
            f"Nothing changed: {result.repo_id}@{result.revision} already matches {folder} ({result.commit_url})"
        )


@handle_errors
def push(
    folder: Annotated[Path, typer.Argument(help="Output folder written by modelops (weights, config, card, recipe).")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo to publish to, org/name (created if missing).")],
    private: Private = False,
    revision: Revision = None,
    create_pr: CreatePr = False,
    commit_message: CommitMessage = None,
    token: Token = None,
    quiet: Quiet = False,
) -> None:
    """Validate FOLDER (loads, complete, no temp files, no token or local path inside) and upload it to REPO_ID.

    Uploading the same folder again makes no new commit. Weight files on the remote that FOLDER no longer has
    (an older sharding) are deleted in the same commit.
    """
    setup(quiet)
    check_push_options(repo_id, create_pr=create_pr, revision=revision, repo_hint="REPO_ID")
    push_after_write(
        folder,
        repo_id,
        private=private,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
        token=token,
        quiet=quiet,
    )


def register(app: typer.Typer) -> None:
    app.command("push", help=push.__doc__)(push)
