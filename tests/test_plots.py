"""The pictures: what the DLF trace plot draws (hand-made rows), PNGs that read back as images, and one line
(no file, no failure) when matplotlib is missing."""

from __future__ import annotations

import logging
import sys

import pytest

from modelops import plots

CURVE = [{"alpha": a, "mean": m, "ci": [m - 0.1, m + 0.1], "fluency": f}
         for a, m, f in ((0.5, 1.2, 0.9), (-0.5, 0.8, 1.0), (0.0, 1.0, 1.0), (1.0, 0.3, 0.4))]  # fmt: skip


def test_trace_series_averages_each_experts_alpha_over_the_rows_still_decoding() -> None:
    rows = [
        {"alpha_trace": [{"expert": 0, "alpha": 0.5}, {"expert": 1, "alpha": 1.0}, {"expert": None, "alpha": 0.0}]},
        {"alpha_trace": [{"expert": 0, "alpha": 1.0}]},
        {"text": "no trace"},
    ]
    series, live = plots.alpha_trace_series(rows)
    assert live == [2, 1, 1]
    assert series == {0: [0.75, 0.0, 0.0], 1: [0.0, 1.0, 0.0]}
    joint = [{"alpha_trace": [{"expert": 1, "alpha": 1.0, "weights": [0.5, 1.0]}]}]  # --dlf-mode joint
    assert plots.alpha_trace_series(joint) == ({0: [0.5], 1: [1.0]}, [1])  # every expert's own weight
    joint[0]["alpha_trace"].append({"expert": 0, "alpha": 0.25})
    assert plots.alpha_trace_series(joint) == ({0: [0.5, 0.25], 1: [1.0, 0.0]}, [1, 1])
    assert plots.alpha_trace_series([{"text": "x"}]) == ({}, [])


def test_the_pngs_read_back_as_images(tmp_path) -> None:
    import matplotlib.image

    for path in (
        plots.alpha_curve_png(CURVE, tmp_path / "curve.png", metric="reward"),
        plots.alpha_trace_png([{"alpha_trace": [{"expert": 0, "alpha": 0.5}] * 4}], tmp_path / "trace.png"),
    ):
        assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (396, 660) and image.std() > 0  # 6 × 3.6 in at 110 dpi, not blank


def test_without_matplotlib_plots_are_skipped_with_one_line(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setattr(plots, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="modelops.plots"):
        assert plots.alpha_curve_png(CURVE, tmp_path / "curve.png") is None
        assert plots.alpha_trace_png([{"alpha_trace": [{"expert": 0, "alpha": 0.5}]}], tmp_path / "t.png") is None
    assert [r.getMessage() for r in caplog.records] == [plots.MISSING]  # one line, however many plots
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("curve", [[], None])
def test_nothing_to_draw_writes_nothing(tmp_path, curve) -> None:
    assert plots.alpha_curve_png(curve or [], tmp_path / "c.png") is None and list(tmp_path.iterdir()) == []
