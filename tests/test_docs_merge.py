"""docs/merge.md shows the method table the registry generates, so the documented methods, parameters and
defaults are the ones that run."""

from __future__ import annotations

from pathlib import Path

from modelops.merge.methods import REGISTRY, methods_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "merge.md"


def test_docs_show_the_generated_method_table() -> None:
    text = DOC.read_text()
    assert methods_table() in text, (
        "docs/merge.md's method table is stale: paste the output of "
        "python -c 'from modelops.merge.methods import methods_table; print(methods_table())'"
    )
    for name in {m.name for m in REGISTRY.values()}:
        assert f"| `{name}` |" in text
