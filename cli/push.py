"""`modelops push FOLDER ORG/NAME`: validate an output folder, then publish it to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Quiet, handle_errors, setup
from modelops.cli.publishing import CommitMessage, CreatePr, Private, Revision, Token, check_push_options, push_folder


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
    push_folder(folder, repo_id, quiet=quiet, private=private, revision=revision, create_pr=create_pr,
                commit_message=commit_message, token=token)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("push", help=push.__doc__, short_help="Validate an output folder and publish it to the Hub.")(push)
