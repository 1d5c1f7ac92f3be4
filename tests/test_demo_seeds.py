"""Seeds by code: runs over zoo seeds × sampling seeds pooled into one table (hand-made runs), README's copy of it,
and `modelops demo --seeds … --sample-seeds …` end to end on the mini zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelops.cli.main import app
from modelops.demo.report import DemoLine
from modelops.demo.seeds import TABLE_END, TABLE_START, SeedRun, parse_seeds, replace_table, seed_rows, seed_table
from modelops.errors import ModelopsError
from modelops.eval.verdicts import Claim


def test_seed_lists_and_ranges() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    with pytest.raises(ModelopsError, match="--sample-seeds 'a-b': expected seeds such as 0,1,2 or 0-4"):
        parse_seeds("a-b", "--sample-seeds")


def _line(claim: str, gain: float, rng: np.random.Generator, *, sampled: bool = False) -> DemoLine:
    a = rng.normal(0.0, 1.0, 16)
    b = a + gain + rng.normal(0, 0.1, 16) if gain else a  # no gain: the same values (a tie)
    test = Claim("better", [list(a), list(b)])
    return DemoLine("decode", claim, "t", "", test.verdict().text(), 0.0, [test], sampled)


@pytest.fixture
def runs() -> list[SeedRun]:
    """Two zoo seeds × two sampling seeds: the greedy claim is measured once per zoo seed, the sampled one per run;
    the sampled claim gains 1 on zoo seed 0 and nothing on zoo seed 1."""
    rng = np.random.default_rng(0)
    out = []
    for z in (0, 1):
        out.append(SeedRun(z, 0, [_line("greedy", 0.5, rng), _line("search", 1.0 - z, rng, sampled=True)]))
        out.append(SeedRun(z, 1, [_line("search", 1.0 - z, rng, sampled=True)]))
    return out


def test_rows_pool_every_run_of_a_claim_and_count_the_runs_that_held(runs) -> None:
    greedy, search = seed_rows(runs)
    assert (greedy.claim, greedy.runs, greedy.held) == ("greedy", 2, 2)
    assert (search.claim, search.runs, search.held) == ("search", 4, 2)  # zoo seed 1's runs show no gain
    assert sorted(greedy.cells) == [(0, 0), (1, 0)] and sorted(search.cells) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    lines = [line for run in runs for line in run.lines if line.claim == "search"]
    by_hand = np.mean([np.mean(np.subtract(*line.claims[0].columns[::-1])) for line in lines])
    assert search.outcome == "holds" and search.pooled.startswith(f"n = 64: {by_hand:+.3g} [")
    assert greedy.pooled.startswith("n = 32: ")


def test_the_table_has_a_column_per_zoo_seed_and_every_sampling_seed_in_its_cell(runs) -> None:
    text = seed_table(runs, preset="mini", limit=16)
    flat = " ".join(text.split())  # the paragraph above the table is wrapped
    assert "--seeds 0,1 --sample-seeds 0,1`, on the first 16 prompts" in flat
    assert "Pooled verdicts: 2 hold, 0 fail, 0 inconclusive." in flat
    header, _, greedy, search = text.strip().splitlines()[-4:]
    assert header == "| claim | task | z0 | z1 | pooled | runs holding |"
    assert greedy.startswith("| greedy | t | holds +0.") and greedy.endswith("| 2/2 |")
    assert "s0: holds +1.0" in search and "<br>s1: holds +1.0" in search
    assert "| s0: inconclusive +0.00<br>s1: inconclusive +0.00 |" in search
    assert search.endswith("| 2/4 |")


def test_the_readme_copy_goes_between_its_markers_only(tmp_path, runs) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{TABLE_START}\nold table\n{TABLE_END}\nafter\n")
    table = seed_table(runs, preset="mini")
    replace_table(readme, table)
    replace_table(readme, table)  # again: the same file
    assert readme.read_text() == f"# title\n\nbefore\n{TABLE_START}\n{table}{TABLE_END}\nafter\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(ModelopsError, match="no '<!-- modelops demo seeds table: start -->'"):
        replace_table(bare, table)
    assert bare.read_text() == "no markers\n" and sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "bare.md"]


@pytest.mark.slow
def test_demo_over_seeds_writes_the_table_and_readme(tmp_path, mini_zoo_cache, monkeypatch) -> None:
    """One zoo seed × two sampling seeds on the mini zoo: the second run re-measures only the search."""
    monkeypatch.setenv("MODELOPS_CACHE", str(mini_zoo_cache))  # the session's mini build: a cache hit
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{TABLE_START}\n{TABLE_END}\n")
    args = ["demo", "--seeds", "0", "--sample-seeds", "0-1", "--limit", "6", "--workdir", str(tmp_path / "w"),
            "--readme", str(readme), "-q"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    runs = json.loads((tmp_path / "w" / "demo-mini-seeds.json").read_text())
    assert [(r["zoo_seed"], r["sample_seed"]) for r in runs] == [(0, 0), (0, 1)]
    assert [line["claim"].split(":")[0] for line in runs[1]["lines"]] == ["Weak-to-strong search (Zhou et al. 2024)"]
    assert all(line["claims"] for line in runs[0]["lines"])  # every line keeps what its verdict came from
    table = (tmp_path / "w" / "demo-mini-seeds.md").read_text()
    assert table in readme.read_text() and "| claim | task | z0 | pooled | runs holding |" in table
    assert "s1: " in table and "/2 |" in table
    assert Path(readme).read_text().startswith(f"x\n{TABLE_START}\n")
