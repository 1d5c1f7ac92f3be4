"""`--dry-run` on Hub repos reads only safetensors headers (HTTP range requests), so mismatches are caught before
any weight is downloaded. Checked against the test Hub server, which records every file request."""

from __future__ import annotations

import pytest
from hub_fixtures import hub, one_line, tiny_llama  # noqa: F401


@pytest.fixture(scope="module")
def hub_models(hub, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    root = tmp_path_factory.mktemp("dry")
    repos = {"base": tiny_llama(root / "base", 1), "ft": tiny_llama(root / "ft", 2)}
    repos["wide"] = tiny_llama(root / "wide", 3, vocab=80)
    for name, folder in repos.items():
        r = hub.modelops("push", str(folder), f"org/dry-{name}", "-q")
        assert r.returncode == 0, r.stderr
    return {name: f"org/dry-{name}" for name in repos}


def _weight_gets(hub, since: int) -> list[tuple[str, str | None]]:  # noqa: F811
    """Requests for weight files after `since` that were not header reads (a full download, or a HEAD probe)."""
    return [(f, r) for f, r in hub.server.state.downloads[since:] if f.endswith(".safetensors") and r is None]


def test_merge_dry_run_reads_headers_only(hub, hub_models, tmp_path) -> None:  # noqa: F811
    recipe = tmp_path / "ties.yaml"
    recipe.write_text(
        f"merge_method: ties\nbase_model: {hub_models['base']}\nmodels:\n"
        f"  - model: {hub_models['ft']}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
    )
    since = len(hub.server.state.downloads)
    home = tmp_path / "fresh-home"
    r = hub.modelops("merge", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--dry-run", HF_HOME=str(home))
    assert r.returncode == 0, r.stderr
    assert "method     ties" in r.stdout and "model.embed_tokens.weight" in r.stdout
    served = hub.server.state.downloads[since:]
    assert any(f == "model.safetensors" and (rng or "").startswith("bytes=0-") for f, rng in served)
    assert _weight_gets(hub, since) == []
    assert not list(home.rglob("*.safetensors"))  # nothing landed in the cache either
    assert not (tmp_path / "o").exists()


def test_vocabulary_mismatch_is_found_before_any_download(hub, hub_models, tmp_path) -> None:  # noqa: F811
    since = len(hub.server.state.downloads)
    r = hub.modelops(
        "extrapolate", "--sft", hub_models["base"], "--dpo", hub_models["wide"], "--alpha", "0.3",
        "--out", str(tmp_path / "o"), "--dry-run", HF_HOME=str(tmp_path / "home"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr  # ExPO copies added-token rows: the plan says so
    assert "rows 64: copied from org/dry-wide" in r.stdout
    r = hub.modelops(
        "merge", "--method", "linear", "--model", hub_models["base"], "--model", hub_models["wide"],
        "--weight", "1", "--weight", "1", "--out", str(tmp_path / "o"), "--dry-run", HF_HOME=str(tmp_path / "home"),
    )  # fmt: skip
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "shape mismatch for" in line and "[64, 16] in org/dry-base vs [80, 16] in org/dry-wide" in line
    assert _weight_gets(hub, since) == []


def test_missing_repo_is_one_line(hub, tmp_path) -> None:  # noqa: F811
    r = hub.modelops(
        "merge", "--method", "linear", "--model", "org/nope", "--weight", "1", "--out", str(tmp_path / "o"),
        "--dry-run", HF_HOME=str(tmp_path / "home"),
    )  # fmt: skip
    assert r.returncode == 1
    assert "org/nope: no Hub repo org/nope" in one_line(r.stderr)
