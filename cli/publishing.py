"""The one write → card → optional push path of every command that writes a model folder.

`@writes_folder` adds the Hub options (`--push-to`, `--private`, `--revision`, `--create-pr`, `--commit-message`,
`--token`) to a command, checks them before any work, and pushes the folder the command returns (None: nothing
was written, e.g. `--dry-run`). The card is written by the API with the folder, so it is always there to push.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from modelops.cli.common import handle_errors, human_bytes

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
PUSH_OPTIONS: dict[str, tuple[Any, Any]] = {
    "push_to": (PushTo, None),
    "private": (Private, False),
    "revision": (Revision, None),
    "create_pr": (CreatePr, False),
    "commit_message": (CommitMessage, None),
    "token": (Token, None),
}


def check_push_options(repo_id: str | None, *, create_pr: bool, revision: str | None, repo_hint: str) -> None:
    """Usage errors (exit 2) for the push options, raised before any work is done."""
    if create_pr and revision not in (None, "main"):
        raise typer.BadParameter("--create-pr always targets main; drop --revision", param_hint="--create-pr")
    if repo_id is not None and (repo_id.count("/") != 1 or repo_id.startswith(("/", "."))):
        raise typer.BadParameter(f"{repo_id!r} is not a Hub repo id like org/name", param_hint=repo_hint)


def push_folder(folder: Path, repo_id: str, *, quiet: bool = False, **options: Any) -> None:
    """Push `folder` through the API and print one result line (stdout)."""
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    from modelops import api

    if quiet:
        disable_progress_bars()
    else:
        typer.echo(f"Validating {folder} and pushing to {repo_id} ...", err=True)
    hf_logging.set_verbosity_error()  # we report the outcome ourselves, in one line
    for noisy in ("httpx2", "httpx", "httpcore"):  # request logs would drown the result line
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = api.push(folder, repo_id, **options)
    size = f"{len(result.report.files)} files, {human_bytes(result.report.total_bytes)}"
    if result.pr_url:
        typer.echo(f"Opened pull request {result.pr_url} on {result.repo_id} ({size})")
    elif result.changed:
        typer.echo(f"Pushed {folder} to {result.repo_id}@{result.revision} ({size}): {result.commit_url}")
    else:
        typer.echo(
            f"Nothing changed: {result.repo_id}@{result.revision} already matches {folder} ({result.commit_url})"
        )


def writes_folder(command: Callable[..., Path | None]) -> Callable[..., None]:
    """Give a folder-writing command the Hub options and the push after a successful write."""
    signature = inspect.signature(command, eval_str=True)
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in PUSH_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        push = {name: kwargs.pop(name) for name in PUSH_OPTIONS}
        repo_id = push.pop("push_to")
        check_push_options(repo_id, create_pr=push["create_pr"], revision=push["revision"], repo_hint="--push-to")
        folder = command(**kwargs)
        if folder is not None and repo_id:
            push_folder(folder, repo_id, quiet=bool(kwargs.get("quiet")), **push)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra]
    )
    wrapper.__annotations__ = {**{p.name: p.annotation for p in wrapper.__signature__.parameters.values()}}  # type: ignore[attr-defined]
    return handle_errors(wrapper)
